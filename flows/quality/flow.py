"""Heatmap-quality flow: how well DAug heatmaps point at the synthetic release's known lesions.

Three parts, each optional (:mod:`flows.quality.scoring` holds the scoring):

1. **score** an existing heatmap version (``heatmap_version``) on the items of ``splits`` that have
   heatmaps: per-item scores and a per-target summary (pointing game, pixel AUROC, mass
   inside, heat shares on the target / other lesions / healthy tissue, healthy energy);
2. **softmax vs sigmoid** (``compare``, needs ``checkpoints``): the ``precompute`` flow twice
   as subflows, same checkpoints, targets and translation numbers, guidance mode softmax and
   sigmoid, into versions ``quality-softmax-<hex>`` / ``quality-sigmoid-<hex>`` named by their
   settings (a rerun skips done items; other settings get other versions), both scored on
   the items both have, side by side per target: the DAug paper's Figure 2 claim in numbers
   (softmax guidance puts less heat on other classes' lesions); and both against the
   unguided baseline (scale 0: reconstruction error only, same inversion), paired per image
   with bootstrap intervals, so what the guidance itself adds is a number;
3. **sweep** (needs ``checkpoints``): in this process, on the first ``sweep.items`` lesion
   images of each of ``sweep.targets``' classes (default ``+No Finding``: any lesion), the
   targets' heatmaps for each point of guidance mode x scale x level x steps, timed and
   scored: localisation and class specificity against seconds per image.

Writes into ``STORE/_runs/heatmap-quality-<time>/`` (or ``out``), every file atomically::

    scores-<source>.csv    per item and target (kind lesion / healthy / other / failed)
    summary-<source>.csv   per target
    modes.csv              softmax vs sigmoid per target, with difference columns
    paired.csv             per target and metric (pointing game, pixel AUROC, specificity,
                           off-target share): softmax - unguided, sigmoid - unguided and
                           softmax - sigmoid on the same images, 95 % bootstrap interval, p
    sweep.csv, sweep.png   the sweep's rows; pointing game and AUROC vs seconds per image
    cases-<target>.png     image, heatmap(s), ground-truth mask for a few cases per target
    summary.json           the flow's return value
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from daug_core.compute import ComputeSettings
from daug_core.diffusion.config import DiffusionConfig
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.targets import Target
from daug_core.strict_json import strict
from flows.precompute import heatmap_provenance
from flows.precompute import precompute_flow as precompute_subflow
from flows.quality.scoring import (
    compare_summaries,
    paired_comparison,
    score_heatmap_version,
    summarise_scores,
)
from flows.quality.scoring import scorable_indices as scorable
from flows.quality.settings import SweepSettings
from flows.quality.sweep import run_sweep, select_sweep_items, sweep_grid
from flows.reports import quality as report
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer, table_artifact
from flows.reports.files import RunFolder, write_json
from flows.reports.quality import MODES, ScoredSource
from flows.runtime.pool import PoolSettings
from storage.geometry import FitMode
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.ingest_shards import store_fit_mode
from storage.store.location import Location
from storage.store.tables import DirectoryTables
from storage.synthetic.ground_truth import GroundTruthMasks

log = logging.getLogger(__name__)

UNGUIDED = "unguided"
"""The baseline heatmaps' name: scale 0, the guided ones' inversion and decoding."""


def compared_settings(settings: HeatmapSettings) -> HeatmapSettings:
    """The comparison's settings: ``settings`` with its targets, or by default ``+No Finding``
    (make the image healthy: heat on every lesion) then ``-c`` (remove class c: heat on c's
    lesions) for every other class."""
    if settings.targets:
        return settings
    first, *others = settings.config().class_names
    return dataclasses.replace(settings, targets=(f"+{first}", *(f"-{n}" for n in others)))


def mode_versions(settings: HeatmapSettings, checkpoints: Path) -> dict[str, str]:
    """Heatmap version per guidance mode and for the unguided baseline (scale 0):
    ``quality-<mode>-<8 hex>``, the hex from everything else that determines the heatmaps
    (targets, translation numbers, checkpoint sha256s), so a rerun with the same settings
    reuses its versions and other settings get their own."""
    provenance = heatmap_provenance(settings, checkpoints)
    shared = provenance.as_dict()
    shared["translation"].pop("mode")
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    return {mode: f"quality-{mode}-{digest}" for mode in (*MODES, UNGUIDED)}


class QualityRun:
    """One run's shared state: where it reads and writes, and how it reports progress."""

    def __init__(
        self,
        store: str,
        truth: str,
        splits: list[str],
        tolerance: int,
        run_dir: Path,
        class_names: tuple[str, ...],
    ) -> None:
        self.store = store
        self.truth_path = Path(truth)
        self.class_names = class_names
        self.image_store = ImageStore.open(store, read_only=True)
        self.truth = GroundTruthMasks.open(truth)
        self.fit: FitMode = store_fit_mode(self.image_store)
        self.splits = splits
        self.tolerance = tolerance
        self.run_dir = run_dir
        self.tables = DirectoryTables(run_dir)

    def reopen(self) -> None:
        """See heatmap versions written since the run started (by its subflows)."""
        self.image_store = ImageStore.open(self.store, read_only=True)

    def score(self, name: str, heat: HeatmapStore, indices: np.ndarray) -> ScoredSource:
        """Scores of ``heat`` on ``indices`` and their per-target summary, saved as CSVs."""
        scores = score_heatmap_version(
            self.image_store,
            heat,
            self.truth,
            indices,
            self.tolerance,
            self.fit,
            self.class_names,
        )
        summary = summarise_scores(scores, heat.targets)
        self.tables.write(f"scores-{name}", scores)
        self.tables.write(f"summary-{name}", summary)
        return ScoredSource(name, heat.version, heat, scores, summary)


@dataclass(frozen=True)
class ModeComparison:
    """Softmax and sigmoid heatmaps scored on the same items, their summaries side by side,
    and the paired per-image comparisons with intervals (each mode against the unguided
    baseline, softmax against sigmoid)."""

    modes: dict[str, ScoredSource]
    table: pd.DataFrame
    paired: pd.DataFrame


def compare_modes(
    run: QualityRun,
    settings: HeatmapSettings,
    checkpoints: str,
    pool: PoolSettings,
    progress: ProgressReporter,
) -> ModeComparison:
    """Softmax, sigmoid and unguided (scale 0: the same inversion and decoding, reconstruction
    error only) heatmaps (precompute subflows), scored on the items all three have. The
    unguided baseline says what the guidance itself adds: a heatmap that only marks what the
    generator fails to reconstruct is an anomaly map, not a class's."""
    versions = mode_versions(settings, Path(checkpoints))
    runs: dict[str, HeatmapSettings] = {
        mode: settings.changed(translation={"mode": mode}) for mode in MODES
    }
    runs[UNGUIDED] = settings.changed(translation={"scale": 0.0})
    for name, chosen in runs.items():
        result = precompute_subflow(
            store=run.store,
            checkpoints=checkpoints,
            heatmaps=chosen,
            pool=pool,
            splits=run.splits,
            heatmap_version=versions[name],
            examples=0,
        )
        log.info(
            "%s heatmaps: %d computed, %d already done",
            name,
            result["done"],
            result["already_done"],
        )
        progress.advance(1)
    run.reopen()
    stores = {name: HeatmapStore(run.image_store, versions[name]) for name in runs}
    done = [scorable(run.image_store, s, run.splits) for s in stores.values()]
    common = functools.reduce(np.intersect1d, done)
    scored = {name: run.score(name, heat, common) for name, heat in stores.items()}
    modes: dict[str, ScoredSource] = {mode: scored[mode] for mode in MODES}
    table = compare_summaries(modes["softmax"].summary, modes["sigmoid"].summary, MODES)
    run.tables.write("modes", table)
    pairs = [(str(mode), UNGUIDED) for mode in MODES] + [(MODES[0], MODES[1])]
    paired: pd.DataFrame = pd.concat(
        [paired_comparison(scored[a].scores, scored[b].scores, (a, b)) for a, b in pairs],
        ignore_index=True,
    )
    run.tables.write("paired", paired)
    progress.advance(1)
    return ModeComparison(modes, table, paired)


@flow(name="heatmap-quality", flow_run_name=run_namer("heatmap-quality", "store"))
def heatmap_quality_flow(
    store: str,
    truth: str,
    checkpoints: str | None = None,
    heatmap_version: str | None = None,
    splits: list[str] | None = None,
    heatmaps: HeatmapSettings = HeatmapSettings(),
    compare: bool = True,
    sweep: SweepSettings = SweepSettings(),
    pool: PoolSettings = PoolSettings(),
    tolerance: int = 2,
    examples_per_target: int = 3,
    out: str | None = None,
) -> dict[str, Any]:
    """Score DAug heatmaps against the synthetic ground-truth lesion masks.

    Args:
        store: image store (ingested from a synthetic release).
        truth: that release's ground truth folder (``OUT/ground_truth`` with masks.zarr).
        checkpoints: train-generator output; needed for the mode comparison and the sweep.
        heatmap_version: an existing heatmap version to score (targets from its provenance).
        splits: items of these splits (default: test).
        heatmaps: the comparison's settings and the sweep's centre: preset, translation
            numbers and targets (default "+No Finding", then "-c" for every other class);
            the comparison runs both guidance modes.
        compare: compute softmax and sigmoid heatmaps (precompute subflows into versions
            quality-softmax-<hex> / quality-sigmoid-<hex>, hex from the settings) and compare
            them per target.
        sweep: time and score heatmaps of ``sweep.targets`` (default "+No Finding") over
            guidance mode x scale x level x steps, in-process.
        pool: Ray actor pool of the precompute subflows.
        tolerance: pointing-game tolerance in heatmap pixels.
        examples_per_target: cases per target in the PNG grids.
        out: output folder (default STORE/_runs/heatmap-quality-<time>).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    chosen_splits = list(splits) if splits else ["test"]
    do_modes = compare and checkpoints is not None
    do_sweep = sweep.enabled and checkpoints is not None and sweep.items > 0
    if (compare or sweep.enabled) and checkpoints is None:
        logger.warning("no checkpoints: the softmax/sigmoid comparison and the sweep are skipped")
    if heatmap_version is None and not do_modes and not do_sweep:
        raise ValueError(
            "nothing to score: give an existing `heatmap_version`, or `checkpoints` for the "
            "softmax/sigmoid comparison or the sweep"
        )
    at = datetime.now(UTC)
    folder = RunFolder(
        Location.of(out)
        if out
        else Location.of(store).child("_runs", f"heatmap-quality-{at:%Y%m%d-%H%M%S}")
    )
    run_dir = folder.local
    config = heatmaps.config()
    run = QualityRun(store, truth, chosen_splits, tolerance, run_dir, config.class_names)
    if heatmap_version is not None:
        HeatmapStore(
            run.image_store, heatmap_version
        )  # a missing heatmap_version fails before any work
    points = sweep_grid(config.translation, sweep)
    key = artifact_key("heatmap-quality", Location.of(store).name)
    units = (heatmap_version is not None) + (len(MODES) + 2) * do_modes + len(points) * do_sweep
    progress = ProgressReporter(f"{key}-progress", units, "heatmap-quality steps")
    logger.info(
        "heatmap quality of %s on %s (fit %s): version %s, modes %s, sweep %s (%d points)",
        store,
        chosen_splits,
        run.fit.value,
        heatmap_version,
        do_modes,
        do_sweep,
        len(points) if do_sweep else 0,
    )

    scored: ScoredSource | None = None
    if heatmap_version is not None:
        heat = HeatmapStore(run.image_store, heatmap_version)
        indices = scorable(run.image_store, heat, chosen_splits)
        logger.info(
            "scoring heatmaps %s: %d items of %s", heatmap_version, len(indices), chosen_splits
        )
        scored = run.score(heatmap_version, heat, indices)
        progress.advance(1)

    modes: dict[str, ScoredSource] = {}
    modes_table: pd.DataFrame | None = None
    paired: pd.DataFrame | None = None
    compared = compared_settings(heatmaps)
    if do_modes:
        assert checkpoints is not None
        comparison = compare_modes(run, compared, checkpoints, pool, progress)
        modes, modes_table, paired = comparison.modes, comparison.table, comparison.paired

    sweep_table: pd.DataFrame | None = None
    sweep_plot: Path | None = None
    if do_sweep:
        assert checkpoints is not None
        sweep_targets = [Target.parse(t, config.class_names) for t in sweep.targets]
        chosen = select_sweep_items(
            run.image_store,
            run.truth,
            chosen_splits,
            sweep.items,
            config.image_size,
            run.fit,
            sweep_targets,
        )
        logger.info(
            "sweep on %d lesion images, %d points, targets %s",
            len(chosen.indices),
            len(points),
            list(sweep.targets),
        )
        device = str(ComputeSettings(device=sweep.device).resolve().device)
        sweep_table = run_sweep(
            config, Path(checkpoints), chosen, points, tolerance, sweep.torch_threads, progress,
            device, [str(t) for t in sweep_targets],
        )  # fmt: skip
        run.tables.write("sweep", sweep_table)
        sweep_plot = report.plot_sweep(sweep_table, run_dir / "sweep.png")

    result = _summary(run, config, scored, modes, modes_table, sweep_table, started)
    result["compare_targets"] = list(compared.targets) if do_modes else []
    result["paired"] = [] if paired is None else strict(paired.to_dict("records"))
    grids = report.case_grids(
        run.image_store,
        scored,
        modes,
        run.truth,
        run.fit,
        examples_per_target,
        run_dir,
        config.class_names,
    )
    failures = report.failures_table([s for s in (scored, *modes.values()) if s is not None])
    run.tables.write("failures", failures)
    result["failures"] = len(failures)
    result["paths"] = {
        "sweep_plot": folder.url_of(sweep_plot) if sweep_plot else None,
        "cases": {t: folder.url_of(p) for t, p in grids.items()},
        "tables": sorted(folder.url_of(p) for p in run_dir.glob("*.csv")),
    }
    result["run_dir"] = folder.url
    write_json(result, run_dir / "summary.json")
    report.publish(
        key, store, result, scored, modes_table, sweep_table, sweep_plot, grids, failures
    )
    if paired is not None:
        table_artifact(
            f"{key}-paired",
            paired,
            "Per target and metric, on the same lesion images: softmax and sigmoid heatmaps "
            "against the unguided ones (scale 0) and against each other; difference with its "
            "95 % bootstrap interval and paired p-value.",
        )
    folder.sync()
    logger.info("heatmap quality finished in %.1f s: %s", result["seconds"], folder.url)
    return result


def _summary(
    run: QualityRun,
    config: DiffusionConfig,
    scored: ScoredSource | None,
    modes: dict[str, ScoredSource],
    modes_table: pd.DataFrame | None,
    sweep_table: pd.DataFrame | None,
    started: float,
) -> dict[str, Any]:
    """The flow's return value (also summary.json), without the paths."""
    version = scored.version if scored is not None else None
    return {
        "store": Location.of(run.store).url,
        "truth": str(run.truth_path.resolve()),
        "splits": run.splits,
        "tolerance": run.tolerance,
        "fit": run.fit.value,
        "translation": dataclasses.asdict(config.translation),
        "scored": None if scored is None else _source_dict(scored),
        "modes": {mode: _source_dict(source) for mode, source in modes.items()} or None,
        "sweep": [] if sweep_table is None else strict(sweep_table.to_dict("records")),
        "seconds": round(time.perf_counter() - started, 2),
        "run_dir": str(run.run_dir.resolve()),
        "markdown": report.headline_markdown(
            scored.summary if scored is not None else None, version, modes_table
        ),
    }


def _source_dict(source: ScoredSource) -> dict[str, Any]:
    return {
        "version": source.version,
        "items": int(source.scores["index"].nunique()),
        "targets": report.per_target(source.summary),
    }
