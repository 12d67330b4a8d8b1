"""Reprocess flow: bring a store up to date with a new release, doing only what changed.

Phases (each timed; the report lists them):

1. **diff** (:func:`storage.release.diff.diff_release`): the release, read with the reader
   config of the store's last ingest, against the store by ``dicom_id`` and source sha256.
2. **apply** (:func:`storage.release.update.apply_release_diff`, under the store's lock):
   labels and reports updated in place, pixel-changed items' ``done`` and heatmaps cleared,
   removed items retired; the release is added to the store's history (attrs ``releases``).
3. **ingest** (the ``ingest`` flow as a subflow): registers and ingests new items and
   re-ingests the pixel-changed ones; everything else is finished and skipped.
4. **precompute** (the ``precompute`` flow as a subflow) with the current heatmap version's
   settings: only items without heatmaps are computed, i.e. new and pixel-changed ones. They
   come from the teacher's checkpoints, or from a heatmap student (``student``: a version the
   student made continues with it, in milliseconds per item). When the checkpoints, the
   student (or anything else in the provenance) differ from the current version's, the
   heatmaps go to a new version (``v2``, ...) instead of mixing, and the report says why.
5. optional **train** (``train_contrastive``) and **evaluate** (``evaluate_checkpoint``),
   with the headline metrics' deltas against the store's last evaluation.

Writes ``STORE/_runs/reprocess-<time>/report.md`` (also a markdown artifact),
``changes.csv`` (every changed item: index, dicom_id, kind, detail) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from daug_core.contrastive.config import ContrastiveConfig, contrastive_config_from_dict
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.config import PresetName
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.settings import ConfigError
from flows.evaluate import evaluate_checkpoint
from flows.ingest import ingest_flow
from flows.precompute import heatmap_provenance, student_provenance
from flows.precompute import precompute_flow as precompute_subflow
from flows.reports import reprocess as report
from flows.reports.artifacts import artifact_key, run_namer
from flows.reports.files import RunFolder, write_json, write_text
from flows.runtime.contrastive import train_contrastive
from flows.runtime.pool import PoolSettings
from storage.release.diff import ChangeKind, ReleaseDiff, diff_release
from storage.release.reader import ReleaseReader
from storage.release.update import apply_release_diff, record_release
from storage.store.checkpoint_cache import clip_header
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore
from storage.store.lease import StoreLease
from storage.store.location import Location
from storage.store.status import (
    CURRENT_HEATMAPS_ATTR,
    current_heatmap_version,
    last_evaluation,
    metric_deltas,
    remember_evaluation,
)

log = logging.getLogger(__name__)


def next_version_name(existing: list[str]) -> str:
    """``v<n+1>`` for the highest ``v<n>`` among ``existing`` (``v1`` when there is none)."""
    numbers = [int(m.group(1)) for v in existing if (m := re.fullmatch(r"v(\d+)", v))]
    name = f"v{max(numbers, default=0) + 1}"
    while name in existing:
        name = f"{name}-1"
    return name


@dataclass(frozen=True)
class HeatmapPlanChoice:
    """Where this run's heatmaps go and with which settings."""

    version: str
    new_version: bool
    reason: str  # why a new version, or ""
    settings: HeatmapSettings


def choose_heatmap_version(
    store: ImageStore,
    made_by: Callable[[HeatmapSettings], HeatmapProvenance],
    requested: str | None,
    settings: HeatmapSettings,
) -> HeatmapPlanChoice:
    """Keep the current (or ``requested``) version when this run's models with its own
    settings give its provenance again (``made_by``: the provenance of heatmaps this run makes
    with some settings); otherwise the next free version, with the differences as reason. A
    store without heatmaps gets ``requested`` or ``v1`` with ``settings``."""
    versions = HeatmapStore.versions(store)
    current = requested if requested in versions else current_heatmap_version(store)
    if current is None:
        name = requested or DEFAULT_VERSION
        return HeatmapPlanChoice(name, True, "the store had no heatmaps", settings)
    stored = HeatmapStore(store, current).provenance
    kept = HeatmapSettings(
        preset=cast(PresetName, stored.preset),
        targets=tuple(stored.targets),
        translation=stored.translation,
    )
    differences = stored.differences(made_by(kept))
    if requested is not None and requested not in versions:
        reason = f"version {requested!r} requested" + (
            f" ({'; '.join(differences)})" if differences else ""
        )
        return HeatmapPlanChoice(requested, True, reason, kept)
    if not differences:
        return HeatmapPlanChoice(current, False, "", kept)
    return HeatmapPlanChoice(
        next_version_name(versions),
        True,
        f"{current} was computed with other settings: {'; '.join(differences)}",
        kept,
    )


def heatmaps_pending(store: ImageStore, version: str) -> int:
    """Usable items without heatmaps in ``version`` that a run would compute (items that
    failed before are skipped by the precompute flow, and here)."""
    heat = HeatmapStore(store, version)
    index = store.usable()["index"].to_numpy()
    failed = np.isin(index, heat.failures()["index"].to_numpy())
    return int((~heat.done_for(index) & ~failed).sum())


def ingest_pending(store: ImageStore, diff: ReleaseDiff) -> int:
    """Items of the release the ingest would work on: unknown ones plus unfinished ones."""
    items = store.items()
    in_release = items["dicom_id"].isin(diff.release["dicom_id"]).to_numpy()
    unfinished = ~store.finished_mask()
    unknown = int((~diff.release["dicom_id"].isin(items["dicom_id"])).sum())
    return unknown + int((in_release & unfinished).sum())


def retrain_config(store: ImageStore, training: ClipTrainSettings) -> ContrastiveConfig:
    """The config of the store's last evaluated model (the same model on the new data; the
    settings' epochs override its epochs), else the settings' config."""
    previous = last_evaluation(store)
    meta = clip_header(str(previous["checkpoint"])) if previous else None
    if meta is not None:
        config = contrastive_config_from_dict(json.loads(meta.read_text())["config"])
        if training.epochs is None:
            return config
        return dataclasses.replace(
            config, training=dataclasses.replace(config.training, epochs=training.epochs)
        )
    return training.config()


@flow(name="reprocess", flow_run_name=run_namer("reprocess", "release"))
def reprocess_flow(
    release: str,
    store: str,
    checkpoints: str | None = None,
    heatmap_version: str | None = None,
    heatmaps: HeatmapSettings = HeatmapSettings(),
    pool: PoolSettings = PoolSettings(),
    retrain: bool = False,
    train_out: str | None = None,
    training: ClipTrainSettings = ClipTrainSettings(),
    evaluate: bool = False,
    hash_workers: int | None = None,
    student: str | None = None,
) -> dict[str, Any]:
    """Update STORE for a new RELEASE: only new and changed items are ingested and get
    heatmaps; label and report changes are applied in place; removed items are retired.

    Args:
        release: the new release root (MIMIC-CXR layout), read like the store's last ingest.
        store: an existing image store (from ``daug ingest``).
        checkpoints: train-generator output (generator/, classifier/) for the heatmaps;
            None skips heatmaps. Other checkpoints than the current version's write a new
            version (v2, ...).
        heatmap_version: the version to continue (default: the store's current one).
        heatmaps: heatmap settings, used only when the store has no heatmaps yet (an
            existing version is continued with its own settings).
        pool: the precompute's Ray actor pool.
        retrain: train the contrastive model again on the updated store.
        train_out: its output folder (default: the run folder's ``clip/``).
        training: the model to train when the store has no evaluated model whose config to
            reuse (its epochs also override that config).
        evaluate: evaluate the retrained model (or, without ``retrain``, the last evaluated
            one) and report the metric deltas against the store's last evaluation.
        hash_workers: threads hashing the release's files (default: a few per core).
        student: a heatmap student (``daug train-student``'s ``OUT/student``) makes the
            heatmaps instead of the teacher's checkpoints (not with ``checkpoints``): a
            version it made gets the new items from it; any other version, a new one.
    """
    if checkpoints is not None and student is not None:
        raise ConfigError("reprocess takes the teacher's checkpoints or a student, not both")
    if student is not None:
        student_provenance(student)  # a checkpoint that is no student fails before any work
    logger = get_run_logger()
    started = datetime.now(UTC)
    seconds: dict[str, float] = {}
    run_dir = RunFolder(Location.of(store).child("_runs", f"reprocess-{started:%Y%m%d-%H%M%S}"))

    ImageStore.open(store, read_only=True).ingest_config()  # ingested, or fail now
    # Diff and apply under one hold of the store's lock: the diff is applied to the store
    # it was computed from. The subflows take the lock themselves.
    with StoreLease(store, owner="reprocess"):
        tick = time.perf_counter()
        image_store = ImageStore.open(store)
        ingest = image_store.ingest_config()
        diff = diff_release(
            image_store, ReleaseReader(release, ingest.reader), workers=hash_workers
        )
        seconds["diff"] = time.perf_counter() - tick
        logger.info("release %s: %s", diff.release_id, diff.counts())
        tick = time.perf_counter()
        applied = apply_release_diff(image_store, diff)
        release_entry = record_release(image_store, diff, started)
        seconds["apply"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ingested: dict[str, Any] | None = None
    if ingest_pending(ImageStore.open(store), diff):
        ingested = ingest_flow(release=release, store=store, ingest=ingest)
    seconds["ingest"] = time.perf_counter() - tick

    tick = time.perf_counter()
    version = current_heatmap_version(ImageStore.open(store))
    heat: dict[str, Any] | None = None
    if checkpoints is not None or student is not None:
        heat = _heatmap_phase(store, checkpoints, student, heatmap_version, heatmaps, pool)
        version = heat["version"]
    seconds["precompute"] = time.perf_counter() - tick

    trained: dict[str, Any] | None = None
    if retrain:
        tick = time.perf_counter()
        out = Location.of(train_out) if train_out else run_dir.location.child("clip")
        trained = _train_phase(store, out, training, version)
        seconds["train"] = time.perf_counter() - tick

    deltas: pd.DataFrame | None = None
    evaluation: dict[str, Any] | None = None
    if evaluate:
        tick = time.perf_counter()
        evaluation, deltas = _evaluate_phase(store, trained, run_dir)
        seconds["evaluate"] = time.perf_counter() - tick

    changed = diff.changes[diff.changes["kind"] != ChangeKind.UNCHANGED.value]
    changed.to_csv(run_dir / "changes.csv", index=False)
    markdown = report.report_markdown(
        diff, store, applied, seconds, ingested, heat, deltas, run_dir.url
    )
    write_text(markdown + "\n", run_dir / "report.md")
    key = artifact_key("reprocess", Location.of(store).name)
    report.publish(key, markdown, changed, diff.release_id)
    computed = (heat or {}).get("result")
    summary = {
        "release": Location.of(release).url,
        "release_id": diff.release_id,
        "store": Location.of(store).url,
        "counts": diff.counts(),
        "applied": applied.as_dict(),
        "release_entry": release_entry,
        "ingested": ingested["ingested"] if ingested else 0,
        "heatmaps_computed": int(computed["done"]) if computed else 0,
        "heatmap_version": version,
        "new_heatmap_version": bool(heat and heat["new_version"]),
        "heatmap_reason": heat["reason"] if heat else "",
        "train": trained,
        "evaluation": evaluation,
        "metric_deltas": deltas.to_dict("records") if deltas is not None else None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "run_dir": run_dir.url,
    }
    write_json(summary, run_dir / "summary.json")
    run_dir.sync()
    logger.info("reprocess finished: %s", {k: summary[k] for k in ("counts", "seconds")})
    return summary | {"ingest": ingested, "precompute": computed}


def heatmaps_made_by(
    checkpoints: str | None, student: str | None
) -> Callable[[HeatmapSettings], HeatmapProvenance]:
    """The provenance of the heatmaps a run makes with some settings: the teacher's
    checkpoints with those settings, or a student's (which fixes them all itself)."""
    if student is not None:
        made = student_provenance(student)
        return lambda settings: made
    if checkpoints is None:
        raise ConfigError("heatmaps need the teacher's checkpoints or a student")
    return lambda settings: heatmap_provenance(settings, checkpoints)


def _heatmap_phase(
    store: str,
    checkpoints: str | None,
    student: str | None,
    requested: str | None,
    settings: HeatmapSettings,
    pool: PoolSettings,
) -> dict[str, Any]:
    """Heatmaps for what has none, in the current version or, with other checkpoints, another
    student or other settings, a new one; the version becomes the store's current one."""
    image_store = ImageStore.open(store)
    choice = choose_heatmap_version(
        image_store, heatmaps_made_by(checkpoints, student), requested, settings
    )
    source: dict[str, Any] = (
        {"student": student}
        if student is not None
        else {"checkpoints": checkpoints, "heatmaps": choice.settings}
    )
    outcome: dict[str, Any] = {
        "version": choice.version,
        "new_version": choice.new_version,
        "reason": choice.reason,
    }
    if choice.new_version:
        log.warning("heatmaps go to the new version %s: %s", choice.version, choice.reason)
    if choice.new_version or heatmaps_pending(image_store, choice.version):
        outcome["result"] = precompute_subflow(
            store=store, pool=pool, heatmap_version=choice.version, **source
        )
    with StoreLease(store, owner="reprocess"):
        ImageStore.open(store).group.attrs.update({CURRENT_HEATMAPS_ATTR: choice.version})
    return outcome


def _train_phase(
    store: str, out: Location, training: ClipTrainSettings, version: str | None
) -> dict[str, Any]:
    config = retrain_config(ImageStore.open(store), training)
    folder = RunFolder(out)
    folder.pull()
    result = train_contrastive(
        store,
        folder.local,
        config,
        heatmap_version=None if config.model.heatmap_mode == "none" else version,
        on_epoch=lambda row: folder.sync(),
    )
    folder.sync()
    return {
        "out": folder.url,
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "train_items": result.train_items,
    }


def _evaluate_phase(
    store: str, trained: dict[str, Any] | None, run_dir: RunFolder
) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """Evaluate the retrained model, else the store's last evaluated one; the store records
    the evaluation and the deltas against the previous one are returned."""
    previous = last_evaluation(ImageStore.open(store))
    if trained is not None:
        out = Location.of(trained["out"])
        checkpoint, target = out.child("best"), out
    elif previous is not None and previous.get("checkpoint"):
        checkpoint = Location.of(str(previous["checkpoint"]))
        target = run_dir.location.child("evaluation")
    else:
        log.warning("evaluate: no model to evaluate (no retrain, no earlier evaluation)")
        return None, None
    metrics = evaluate_checkpoint(checkpoint, store, target, plots=False)
    evaluation = remember_evaluation(store, target.child("metrics.json").url, metrics)
    return evaluation, metric_deltas(
        previous["headline"] if previous else None, metrics["headline"]
    )
