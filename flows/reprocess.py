"""Reprocess flow: bring a store up to date with a new release, doing only what changed.

Phases (each timed; the report lists them):

1. **diff** (:func:`storage.release_diff.diff_release`): the release, read with the reader
   config of the store's last ingest, against the store by ``dicom_id`` and source sha256.
2. **apply** (:func:`storage.release_update.apply_release_diff`, under the store's lock):
   labels and reports updated in place, pixel-changed items' ``done`` and heatmaps cleared,
   removed items retired; the release is added to the store's history (attrs ``releases``).
3. **ingest** (the ``ingest`` flow as a subflow): registers and ingests new items and
   re-ingests the pixel-changed ones; everything else is finished and skipped.
4. **precompute** (the ``precompute`` flow as a subflow) with the current heatmap version's
   settings: only items without heatmaps are computed, i.e. new and pixel-changed ones. When
   the checkpoints (or anything else in the provenance) differ from the current version's,
   the heatmaps go to a new version (``v2``, ...) instead of mixing, and the report says why.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from daug_core.clip_config import ContrastiveConfig, HeatmapMode, contrastive_config_from_dict
from daug_core.clip_training import MODEL_JSON
from flows.evaluate import evaluate_checkpoint
from flows.ingest import ingest_flow
from flows.monitoring import artifact_key, table_artifact
from flows.precompute import TranslationOverrides, heatmap_config, heatmap_provenance
from flows.precompute import precompute_flow as precompute_subflow
from flows.train import TrainOverrides, contrastive_config, train_contrastive
from storage.errors import StoreFormatError
from storage.heatmap_store import DEFAULT_VERSION, HeatmapProvenance, HeatmapStore
from storage.image_store import ImageStore, ItemStatus
from storage.labels import UncertaintyPolicy
from storage.locks import StoreLock
from storage.release import FRONTAL_VIEWS, ReaderConfig, ReleaseReader
from storage.release_diff import ChangeKind, ReleaseDiff, diff_release
from storage.release_update import AppliedChanges, apply_release_diff, record_release
from storage.status import (
    CURRENT_HEATMAPS_ATTR,
    current_heatmap_version,
    last_evaluation,
    metric_deltas,
    record_evaluation,
)

log = logging.getLogger(__name__)
EXAMPLES_PER_KIND = 5
WHAT_IS_DONE: dict[str, str] = {
    ChangeKind.NEW.value: "registered and ingested (heatmaps: below)",
    ChangeKind.PIXELS_CHANGED.value: "re-ingested under its index, labels updated; heatmaps redone",
    ChangeKind.LABELS_CHANGED.value: "labels updated in place",
    ChangeKind.REPORT_CHANGED.value: "report updated in place",
    ChangeKind.REMOVED.value: "retired (kept, no longer used)",
    ChangeKind.UNCHANGED.value: "nothing",
}


def _run_name() -> str:
    params = flow_run.parameters
    release = Path(str(params.get("release", "release"))).name
    return f"reprocess-{release}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@dataclass(frozen=True)
class IngestSettings:
    """How the store was ingested (its last ingest run), so a new release is read alike."""

    reader: ReaderConfig
    fit: str
    size: int
    shard_items: int
    sharded: bool


def ingest_settings(store: ImageStore) -> IngestSettings:
    """The reader config and geometry of the store's last ingest."""
    ingests = store.attrs.get("ingests", [])
    if not ingests:
        raise StoreFormatError(
            f"{store.location} records no ingest; ingest a release first (`daug ingest`)"
        )
    last = ingests[-1]
    reader = last.get("reader", {})
    views = reader.get("views")
    return IngestSettings(
        reader=ReaderConfig(
            labeler="negbio" if reader.get("labeler") == "negbio" else "chexpert",
            views=FRONTAL_VIEWS if views is None else tuple(views),
            uncertainty=UncertaintyPolicy(reader.get("uncertainty", "u-zeros")),
            image_format=cast(Literal["auto", "dicom", "jpg"], reader.get("image_format", "auto")),
        ),
        fit=str(last.get("fit", "pad")),
        size=store.size,
        shard_items=store.shard_items,
        sharded=bool(store.attrs.get("sharded", False)),
    )


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
    settings: dict[str, Any]  # precompute flow parameters (targets and translation)


def _settings(provenance: HeatmapProvenance) -> dict[str, Any]:
    return {
        "targets": list(provenance.targets),
        "mode": provenance.mode,
        "scale": provenance.scale,
        "level": provenance.level,
        "steps": provenance.steps,
        "inversion_refinements": provenance.inversion_refinements,
        "difference": provenance.difference,
        "smoothing_sigma": provenance.smoothing_sigma,
        "preset_name": provenance.preset,
    }


def choose_heatmap_version(
    store: ImageStore, checkpoints: Path, requested: str | None, preset_name: str
) -> HeatmapPlanChoice:
    """Keep the current (or ``requested``) version when the checkpoints and settings give
    its provenance again; otherwise the next free version, with the differences as reason.
    A store without heatmaps gets ``requested`` or ``v1`` with the preset's settings."""
    versions = HeatmapStore.versions(store)
    current = requested if requested in versions else current_heatmap_version(store)
    if current is None:
        name = requested or DEFAULT_VERSION
        return HeatmapPlanChoice(
            name, True, "the store had no heatmaps", {"preset_name": preset_name}
        )
    stored = HeatmapStore(store, current).provenance
    settings = _settings(stored)
    numbers = {f.name: settings[f.name] for f in dataclasses.fields(TranslationOverrides)}
    config = heatmap_config(stored.preset, TranslationOverrides(**numbers))
    wanted = heatmap_provenance(config, stored.targets, checkpoints)
    differences = stored.differences(wanted)
    if requested is not None and requested not in versions:
        reason = f"version {requested!r} requested" + (
            f" ({'; '.join(differences)})" if differences else ""
        )
        return HeatmapPlanChoice(requested, True, reason, settings)
    if not differences:
        return HeatmapPlanChoice(current, False, "", settings)
    return HeatmapPlanChoice(
        next_version_name(versions),
        True,
        f"{current} was computed with other settings: {'; '.join(differences)}",
        settings,
    )


def heatmaps_pending(store: ImageStore, version: str) -> int:
    """Usable items (ok, ingested) without heatmaps in ``version`` that a run would compute
    (items that failed before are skipped by the precompute flow, and here)."""
    heat = HeatmapStore(store, version)
    items = store.items()
    index = items["index"].to_numpy()
    usable = (items["status"] == ItemStatus.OK.value).to_numpy() & store.done_mask()[index]
    done = np.zeros(len(store), dtype=bool)
    stored = heat.done_mask()
    done[: len(stored)] = stored[: len(store)]
    failed = np.isin(index, heat.failures()["index"].to_numpy())
    return int((usable & ~done[index] & ~failed).sum())


def ingest_pending(store: ImageStore, diff: ReleaseDiff) -> int:
    """Items of the release the ingest would work on: unknown ones plus unfinished ones."""
    items = store.items()
    in_release = items["dicom_id"].isin(diff.release["dicom_id"]).to_numpy()
    unfinished = ~store.finished_mask()
    unknown = int((~diff.release["dicom_id"].isin(items["dicom_id"])).sum())
    return unknown + int((in_release & unfinished).sum())


def report_markdown(
    diff: ReleaseDiff,
    store: str,
    applied: AppliedChanges,
    seconds: dict[str, float],
    ingest: dict[str, Any] | None,
    heatmaps: dict[str, Any] | None,
    deltas: pd.DataFrame | None,
    run_dir: Path,
) -> str:
    """The release-change report (markdown)."""
    counts = diff.counts()
    lines = [
        f"## reprocess: {diff.release_path} → {store}",
        "",
        f"Release `{diff.release_id}`: {diff.files_hashed} image files hashed "
        f"({diff.bytes_hashed / 1e6:.1f} MB) and compared with the store in "
        f"{seconds.get('diff', 0.0):.2f} s.",
        "",
        "| change | items | what was done |",
        "|---|---:|---|",
        *[f"| {kind} | {n} | {WHAT_IS_DONE[kind]} |" for kind, n in counts.items()],
        "",
        "### Examples",
        "",
    ]
    for kind in ChangeKind:
        if kind is ChangeKind.UNCHANGED:
            continue
        rows = diff.of_kind(kind).head(EXAMPLES_PER_KIND)
        if rows.empty:
            continue
        lines.append(f"**{kind.value}**")
        lines.append("")
        lines += [
            f"- `{r.dicom_id}` (index {r.index}){': ' + str(r.detail) if r.detail else ''}"
            for r in rows.itertuples(index=False)
        ]
        lines.append("")
    lines += ["### Work done", ""]
    lines.append(
        f"- store updated in place: {applied.labels_updated} label rows, "
        f"{applied.reports_updated} reports, {applied.retired} retired, "
        f"{applied.pixels_invalidated} pixel-changed items queued for re-ingest"
        + (f", {applied.restored} retired items back" if applied.restored else "")
        + (
            f"; heatmaps invalidated {applied.heatmaps_invalidated}"
            if any(applied.heatmaps_invalidated.values())
            else ""
        )
    )
    if ingest is None:
        lines.append("- ingest: nothing to ingest (skipped)")
    else:
        lines.append(
            f"- ingest: {ingest['ingested']} items ingested, {ingest['quarantined']} "
            f"quarantined, {ingest['plan']['already_finished']} already finished"
        )
    if heatmaps is None:
        lines.append("- heatmaps: no checkpoints given (skipped)")
    else:
        version = heatmaps["version"]
        if heatmaps["new_version"]:
            lines.append(f"- heatmaps: **new version {version}** ({heatmaps['reason']})")
        else:
            lines.append(f"- heatmaps: version {version} (same checkpoints and settings)")
        if heatmaps.get("result") is None:
            lines.append("  - nothing to compute (skipped)")
        else:
            result = heatmaps["result"]
            lines.append(
                f"  - {result['done']} items computed, {result['already_done']} already done, "
                f"{result['failed']} failed"
            )
    lines += [
        "",
        "### Time per phase",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {phase} | {s:.2f} |" for phase, s in seconds.items()],
        "",
    ]
    if deltas is not None:
        lines += [
            "### Metrics against the previous evaluation",
            "",
            "| metric | before | after | delta |",
            "|---|---:|---:|---:|",
            *[
                f"| {r.metric} | {r.before:.4f} | {r.after:.4f} | {r.delta:+.4f} |"
                for r in deltas.itertuples(index=False)
            ],
            "",
        ]
    lines.append(f"Run folder: `{run_dir.resolve()}` (report.md, changes.csv, summary.json)")
    return "\n".join(lines)


def retrain_config(
    store: ImageStore, preset_name: str, mode: str, epochs: int | None
) -> ContrastiveConfig:
    """The config of the store's last evaluated model (the same model on the new data),
    else the preset's; ``epochs`` overrides either."""
    previous = last_evaluation(store)
    meta = Path(str(previous["checkpoint"])) / MODEL_JSON if previous else None
    if meta is not None and meta.is_file():
        config = contrastive_config_from_dict(json.loads(meta.read_text())["config"])
        if epochs is None:
            return config
        training = dataclasses.replace(config.training, epochs=epochs)
        return dataclasses.replace(config, training=training)
    return contrastive_config(
        preset_name, TrainOverrides(mode=cast(HeatmapMode, mode), epochs=epochs)
    )


@flow(name="reprocess", flow_run_name=_run_name)
def reprocess_flow(
    release: str,
    store: str,
    checkpoints: str | None = None,
    heatmap_version: str | None = None,
    preset_name: str = "tiny",
    batch_size: int = 8,
    actors: int = 0,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    ray_address: str | None = None,
    retrain: bool = False,
    train_out: str | None = None,
    train_preset: str = "tiny",
    train_mode: str = "channel",
    train_epochs: int | None = None,
    evaluate: bool = False,
    hash_workers: int | None = None,
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
        preset_name: diffusion preset, only when the store has no heatmaps yet.
        batch_size / actors / cpus_per_actor / gpus_per_actor / ray_address: the precompute's
            Ray actor pool (see the precompute flow).
        retrain: train the contrastive model again on the updated store.
        train_out: its output folder (default: the run folder's ``clip/``).
        train_preset / train_mode / train_epochs: the model to train when the store has no
            evaluated model whose config to reuse (epochs also override that config).
        evaluate: evaluate the retrained model (or, without ``retrain``, the last evaluated
            one) and report the metric deltas against the store's last evaluation.
        hash_workers: threads hashing the release's files (default: a few per core).
    """
    logger = get_run_logger()
    started = datetime.now(UTC)
    seconds: dict[str, float] = {}
    run_dir = Path(store) / "_runs" / f"reprocess-{started:%Y%m%d-%H%M%S}"

    ingest_settings(ImageStore.open(store, read_only=True))  # an ingested store, or fail now
    # Diff and apply under one hold of the store's lock: the diff is applied to the store
    # it was computed from. The subflows take the lock themselves.
    with StoreLock(Path(store), owner="reprocess"):
        tick = time.perf_counter()
        image_store = ImageStore.open(store)
        settings = ingest_settings(image_store)
        reader = ReleaseReader(release, settings.reader)
        diff = diff_release(image_store, reader, workers=hash_workers)
        seconds["diff"] = time.perf_counter() - tick
        logger.info("release %s: %s", diff.release_id, diff.counts())
        tick = time.perf_counter()
        applied = apply_release_diff(image_store, diff)
        release_entry = record_release(image_store, diff, started)
        seconds["apply"] = time.perf_counter() - tick

    tick = time.perf_counter()
    ingest: dict[str, Any] | None = None
    if ingest_pending(ImageStore.open(store), diff):
        ingest = ingest_flow(
            release=release,
            store=store,
            size=settings.size,
            shard_items=settings.shard_items,
            sharded=settings.sharded,
            labeler=settings.reader.labeler,
            views=list(settings.reader.views),
            uncertainty=settings.reader.uncertainty.value,
            image_format=settings.reader.image_format,
            fit=settings.fit,
        )
    seconds["ingest"] = time.perf_counter() - tick

    tick = time.perf_counter()
    heatmaps: dict[str, Any] | None = None
    version: str | None = current_heatmap_version(ImageStore.open(store))
    if checkpoints is not None:
        image_store = ImageStore.open(store)
        choice = choose_heatmap_version(
            image_store, Path(checkpoints), heatmap_version, preset_name
        )
        version = choice.version
        heatmaps = {"version": version, "new_version": choice.new_version, "reason": choice.reason}
        if choice.new_version:
            logger.warning("heatmaps go to the new version %s: %s", version, choice.reason)
        if choice.new_version or heatmaps_pending(image_store, version):
            heatmaps["result"] = precompute_subflow(
                store=store,
                checkpoints=checkpoints,
                version=version,
                batch_size=batch_size,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                ray_address=ray_address,
                **{k: v for k, v in choice.settings.items() if v is not None},
            )
        with StoreLock(Path(store), owner="reprocess"):
            ImageStore.open(store).group.attrs.update({CURRENT_HEATMAPS_ATTR: version})
    seconds["precompute"] = time.perf_counter() - tick

    trained: dict[str, Any] | None = None
    if retrain:
        tick = time.perf_counter()
        out = Path(train_out) if train_out else run_dir / "clip"
        config = retrain_config(ImageStore.open(store), train_preset, train_mode, train_epochs)
        result = train_contrastive(
            store,
            out,
            config,
            heatmap_version=None if config.model.heatmap_mode == "none" else version,
        )
        trained = {
            "out": str(out.resolve()),
            "best_epoch": result.best_epoch,
            "best_metric": result.best_metric,
            "train_items": result.train_items,
        }
        seconds["train"] = time.perf_counter() - tick

    deltas: pd.DataFrame | None = None
    evaluation: dict[str, Any] | None = None
    if evaluate:
        tick = time.perf_counter()
        previous = last_evaluation(ImageStore.open(store))
        if trained is not None:
            checkpoint: Path | None = Path(trained["out"]) / "best"
            target = Path(trained["out"])
        elif previous is not None and previous.get("checkpoint"):
            checkpoint = Path(str(previous["checkpoint"]))
            target = run_dir / "evaluation"
        else:
            checkpoint = None
            logger.warning("evaluate: no model to evaluate (no retrain, no earlier evaluation)")
        if checkpoint is not None:
            metrics = evaluate_checkpoint(checkpoint, store, target, plots=False)
            with StoreLock(Path(store), owner="reprocess"):
                evaluation = record_evaluation(
                    ImageStore.open(store), target / "metrics.json", metrics
                )
            deltas = metric_deltas(previous["headline"] if previous else None, metrics["headline"])
        seconds["evaluate"] = time.perf_counter() - tick

    run_dir.mkdir(parents=True, exist_ok=True)
    changed = diff.changes[diff.changes["kind"] != ChangeKind.UNCHANGED.value]
    changed.to_csv(run_dir / "changes.csv", index=False)
    markdown = report_markdown(diff, store, applied, seconds, ingest, heatmaps, deltas, run_dir)
    (run_dir / "report.md").write_text(markdown + "\n", encoding="utf-8")
    key = artifact_key("reprocess", Path(store).name)
    create_markdown_artifact(key=f"{key}-report", markdown=markdown)
    table_artifact(
        f"{key}-changes",
        changed[["index", "dicom_id", "kind", "detail"]].head(500),
        f"Changed items of release {diff.release_id} (first 500; all in changes.csv).",
    )
    computed = (heatmaps or {}).get("result")
    summary = {
        "release": str(Path(release).resolve()),
        "release_id": diff.release_id,
        "store": str(Path(store).resolve()),
        "counts": diff.counts(),
        "applied": applied.as_dict(),
        "release_entry": release_entry,
        "ingested": ingest["ingested"] if ingest else 0,
        "heatmaps_computed": int(computed["done"]) if computed else 0,
        "heatmap_version": version,
        "new_heatmap_version": bool(heatmaps and heatmaps["new_version"]),
        "heatmap_reason": heatmaps["reason"] if heatmaps else "",
        "train": trained,
        "evaluation": evaluation,
        "metric_deltas": deltas.to_dict("records") if deltas is not None else None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "run_dir": str(run_dir.resolve()),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    logger.info("reprocess finished: %s", {k: summary[k] for k in ("counts", "seconds")})
    return summary | {"ingest": ingest, "precompute": computed}
