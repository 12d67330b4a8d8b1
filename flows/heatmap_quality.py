"""Heatmap-quality flow: how well DAug heatmaps point at the synthetic release's known lesions.

Three parts, each optional (``flows/heatmap_scoring.py`` holds the scoring):

1. **score** an existing heatmap version (``version``) on the items of ``splits`` that have
   heatmaps: per-item scores and a per-target summary (pointing game, pixel AUROC, mass
   inside, heat shares on the target / other lesions / healthy tissue, healthy energy);
2. **softmax vs sigmoid** (needs ``checkpoints``): the ``precompute`` flow twice as
   subflows, same checkpoints, targets and translation numbers, guidance mode softmax and
   sigmoid, into versions ``quality-softmax-<hex>`` / ``quality-sigmoid-<hex>`` named by their
   settings (a rerun skips done items; other settings get other versions), both scored on
   the items both have, side by side per target: the DAug paper's Figure 2 claim in numbers
   (softmax guidance puts less heat on other classes' lesions);
3. **sweep** (needs ``checkpoints``): in this process, on the first ``sweep_items`` lesion
   images, ``+No Finding`` heatmaps for each point of scale x level x steps, timed and scored:
   localisation against seconds per image.

Writes into ``STORE/_runs/heatmap-quality-<time>/`` (or ``out``), every file atomically::

    scores-<source>.csv    per item and target (kind lesion / healthy / other / failed)
    summary-<source>.csv   per target
    modes.csv              softmax vs sigmoid per target, with difference columns
    sweep.csv, sweep.png   the sweep's rows; pointing game and AUROC vs seconds per image
    cases-<target>.png     image, heatmap(s), ground-truth mask for a few cases per target
    summary.json           the flow's return value
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from daug_core.checkpoints import load_classifier, load_unet
from daug_core.config import DEFAULT_CLASS_NAMES, DiffusionConfig, TranslationConfig
from daug_core.guidance import Target
from daug_core.heatmaps import compute_heatmaps
from flows.heatmap_scoring import (
    ItemKind,
    compare_summaries,
    failures_of,
    scorable_indices,
    score_heatmap_version,
    score_item,
    scores_table,
    summarise_scores,
    target_mask,
)
from flows.model_input import to_model_space
from flows.monitoring import ProgressReporter, artifact_key, table_artifact
from flows.precompute import (
    CLASSIFIER_DIR,
    GENERATOR_DIR,
    TranslationOverrides,
    heatmap_config,
    heatmap_provenance,
)
from flows.precompute import precompute_flow as precompute_subflow
from storage.geometry import FitMode
from storage.heatmap_store import HeatmapStore
from storage.image_store import ImageStore, ItemStatus
from storage.ingest import store_fit_mode
from storage.labels import slug
from storage.synthetic.ground_truth import GroundTruthError, GroundTruthMasks
from storage.tables import DirectoryTables, replace_atomically

log = logging.getLogger(__name__)

MODES: tuple[str, str] = ("softmax", "sigmoid")
SWEEP_TARGET = "+No Finding"
SWEEP_COLUMNS: tuple[str, ...] = (
    "label",
    "items",
    "seconds_per_image",
    "pointing_game",
    "pixel_auroc",
    "mass_inside",
    "off_target_share",
)
HEADLINE_METRICS: tuple[str, ...] = (
    "n_lesion",
    "pointing_game",
    "pixel_auroc",
    "mass_inside",
    "off_target_share",
    "healthy_share",
    "n_healthy",
    "healthy_energy",
)


def _run_name() -> str:
    store = Path(str(flow_run.parameters.get("store", "store"))).name
    return f"heatmap-quality-{store}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def mode_versions(
    config: DiffusionConfig, targets: Sequence[str], checkpoints: Path
) -> dict[str, str]:
    """Heatmap version per guidance mode: ``quality-<mode>-<8 hex>``, the hex from everything
    else that determines the heatmaps (targets, translation numbers, checkpoint sha256s), so a
    rerun with the same settings reuses its versions and other settings get their own."""
    shared = heatmap_provenance(config, tuple(targets), checkpoints).as_dict()
    shared.pop("mode")
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    return {mode: f"quality-{mode}-{digest}" for mode in MODES}


def default_compare_targets(config: DiffusionConfig) -> tuple[str, ...]:
    """``+No Finding`` (make the image healthy: heat on every lesion), then ``-c`` (remove
    class c: heat on c's lesions) for every other class of the config."""
    first, *others = config.class_names
    return (f"+{first}", *(f"-{name}" for name in others))


# ---- the sweep ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepPoint:
    scale: float
    level: int
    steps: int

    def label(self) -> str:
        return f"s={self.scale:g} L={self.level} n={self.steps}"


def sweep_grid(
    translation: TranslationConfig,
    scales: Sequence[float] | None = None,
    levels: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
) -> list[SweepPoint]:
    """scale x level x steps; by default two values each around ``translation``'s numbers
    (scale / 10 and scale, level / 2 and level, steps / 2 and steps): at most 8 points.
    Points with more steps than their level are left out (DDIM needs steps <= level)."""
    scale_values = scales or (translation.scale / 10, translation.scale)
    level_values = levels or (max(1, translation.level // 2), translation.level)
    step_values = steps or (max(1, translation.steps // 2), translation.steps)
    points = [
        SweepPoint(float(s), int(lv), int(n))
        for s, lv, n in itertools.product(
            dict.fromkeys(scale_values), dict.fromkeys(level_values), dict.fromkeys(step_values)
        )
    ]
    return [p for p in points if 1 <= p.steps <= p.level]


def with_point(config: DiffusionConfig, point: SweepPoint) -> DiffusionConfig:
    """``config`` with the point's numbers; every other translation field is kept."""
    translation = dataclasses.replace(
        config.translation, scale=point.scale, level=point.level, steps=point.steps
    )
    return dataclasses.replace(config, translation=translation)


@dataclass(frozen=True)
class SweepItems:
    """The lesion images the sweep runs on: store pixels and masks at the model's size."""

    indices: np.ndarray
    dicom_ids: tuple[str, ...]
    images: np.ndarray  # (B, S_store, S_store) store pixels in [0, 1]
    masks: np.ndarray  # (B, 14, s, s) bool at the model's size s


def select_sweep_items(
    image_store: ImageStore,
    truth: GroundTruthMasks,
    splits: Sequence[str],
    count: int,
    size: int,
    fit: FitMode,
) -> SweepItems:
    """The first ``count`` finished items of ``splits`` (index order) with a lesion; items
    without masks are skipped (they are reported by the scoring parts)."""
    items = image_store.items()
    ok = items[(items["status"] == ItemStatus.OK.value) & items["split"].isin(list(splits))]
    done = image_store.done_mask()
    chosen: list[int] = []
    ids: list[str] = []
    masks: list[np.ndarray] = []
    for index, dicom_id in zip(ok["index"], ok["dicom_id"], strict=True):
        if len(chosen) >= count:
            break
        if not done[int(index)]:
            continue
        try:
            fitted = truth.masks(str(dicom_id), size, fit)
        except GroundTruthError as exc:
            log.warning("sweep: %s skipped: %s", dicom_id, exc)
            continue
        if fitted.any():
            chosen.append(int(index))
            ids.append(str(dicom_id))
            masks.append(fitted)
    idx = np.asarray(chosen, dtype=np.int64)
    pixels = image_store.read_images(idx) if len(idx) else np.zeros((0, 1, 1), np.float32)
    stacked = np.stack(masks) if masks else np.zeros((0, 14, size, size), dtype=bool)
    return SweepItems(idx, tuple(ids), pixels, stacked)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``threads`` torch threads for the block (0: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_sweep(
    config: DiffusionConfig,
    checkpoints: Path,
    items: SweepItems,
    points: Sequence[SweepPoint],
    tolerance: int,
    progress: ProgressReporter | None = None,
) -> pd.DataFrame:
    """Heatmaps of :data:`SWEEP_TARGET` for ``items`` at every point (models loaded once, as
    flows/heatmap_actors.py does), timed per image and scored; one row per point."""
    unet = load_unet(checkpoints / GENERATOR_DIR, use_ema=True)
    classifier = load_classifier(checkpoints / CLASSIFIER_DIR)
    names = tuple(classifier.config.class_names)
    if names != config.class_names:
        raise ValueError(f"classifier predicts {names}, the config expects {config.class_names}")
    targets = (Target.parse(SWEEP_TARGET, names),)
    x0 = to_model_space(items.images, config.image_size) if len(items.indices) else None
    if x0 is not None and points:  # warm-up: the first call pays for lazy initialisation
        compute_heatmaps(unet, classifier, x0[:1], targets, with_point(config, points[0]))
    rows: list[dict[str, Any]] = []
    for point in points:
        point_config = with_point(config, point)
        scores = []
        seconds = float("nan")
        if x0 is not None:
            started = time.perf_counter()
            result = compute_heatmaps(unet, classifier, x0, targets, point_config)
            seconds = (time.perf_counter() - started) / len(items.indices)
            heat = result.heatmaps.detach().cpu().numpy()
            for dicom_id, maps, masks in zip(items.dicom_ids, heat, items.masks, strict=True):
                scores.extend(score_item(dicom_id, maps, [SWEEP_TARGET], masks, tolerance, names))
        summary = summarise_scores(scores_table(scores), [SWEEP_TARGET]).iloc[0]
        rows.append(
            dataclasses.asdict(point)
            | {"label": point.label(), "items": len(items.indices)}
            | {"seconds_per_image": seconds}
            | {m: summary[m] for m in HEADLINE_METRICS if m not in ("n_healthy", "healthy_energy")}
        )
        log.info(
            "sweep %s: %.3f s/image, pointing game %.3f, pixel AUROC %.3f",
            point.label(),
            seconds,
            rows[-1]["pointing_game"],
            rows[-1]["pixel_auroc"],
        )
        if progress is not None:
            progress.advance(1)
    return pd.DataFrame(rows)


# ---- atomic files ---------------------------------------------------------------------------
def save_figure(figure: Figure, path: Path) -> Path:
    replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    plt.close(figure)
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---- plots ----------------------------------------------------------------------------------
def plot_sweep(table: pd.DataFrame, path: Path) -> Path:
    """Pointing game and pixel AUROC against the noise level, one line per (scale, steps)
    whose legend gives its seconds per image; a third panel shows the seconds per image."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (scale, steps), group in table.groupby(["scale", "steps"], sort=True):
        group = group.sort_values("level")
        seconds = float(group["seconds_per_image"].mean())
        label = f"s={scale:g}, {steps} steps ({seconds:.2f} s/image)"
        for ax, metric in ((axes[0], "pointing_game"), (axes[1], "pixel_auroc")):
            ax.plot(group["level"], group[metric], marker="o", label=label)
    for ax, title in ((axes[0], "pointing game"), (axes[1], "pixel AUROC")):
        ax.set_ylim(-0.05, 1.05)  # both metrics live in [0, 1]; a fixed axis compares runs
        ax.set_xlabel("noise level L")
        ax.set_ylabel(title)
        ax.set_title(f"{SWEEP_TARGET}: {title}", fontsize=9)
    axes[1].legend(fontsize=7)
    timing = table.groupby("steps")["seconds_per_image"].mean()
    axes[2].bar([str(n) for n in timing.index], timing.to_numpy())
    axes[2].set_xlabel("DDIM steps (each way)")
    axes[2].set_ylabel("seconds per image")
    axes[2].set_title("cost (inversion + guided decoding)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def pick_cases(scores: pd.DataFrame, target: str, count: int) -> list[int]:
    """Up to ``count`` item indices for ``target``: lesion images first, then the rest."""
    mine = scores[(scores["target"] == target) & (scores["kind"] != ItemKind.FAILED.value)]
    ordered = pd.concat(
        [mine[mine["kind"] == ItemKind.LESION.value], mine[mine["kind"] != ItemKind.LESION.value]]
    )
    return [int(i) for i in dict.fromkeys(ordered["index"])][: max(0, count)]


def plot_cases(
    image_store: ImageStore,
    sources: dict[str, HeatmapStore],
    truth: GroundTruthMasks,
    fit: FitMode,
    target: str,
    indices: Sequence[int],
    path: Path,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> Path | None:
    """One row per case: the image, each source's ``target`` heatmap over it (colour scale
    0 to that map's maximum, so weak maps stay readable), the ground-truth masks (the
    target's lesion yellow, the image's other lesions orange)."""
    if not indices:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    pixels = image_store.read_images(idx)
    dicom_ids = image_store.items().set_index("index").loc[idx, "dicom_id"].tolist()
    maps = {
        name: store.read_heatmaps(idx)[:, list(store.targets).index(target)]
        for name, store in sources.items()
    }
    cols = 2 + len(sources)
    figure, axes = plt.subplots(len(idx), cols, figsize=(1.8 * cols, 1.8 * len(idx)), squeeze=False)
    extent = (0.0, 1.0, 1.0, 0.0)  # image and heatmap may differ in pixels, not in area
    name = Target.parse(target, class_names).class_name
    for row, (image, dicom_id) in enumerate(zip(pixels, dicom_ids, strict=True)):
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        axes[row, 0].set_ylabel(f"{idx[row]}: {str(dicom_id)[:8]}", fontsize=6)
        for col, (source, heat) in enumerate(maps.items(), start=1):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
            peak = float(np.nanmax(heat[row])) if np.isfinite(heat[row]).any() else 1.0
            ax.imshow(heat[row], cmap="jet", alpha=0.5, vmin=0, vmax=max(peak, 1e-6), extent=extent)
            if row == 0:
                ax.set_title(f"{source}", fontsize=7)
        ax = axes[row, -1]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        if str(dicom_id) in truth:
            masks = truth.masks(str(dicom_id), image.shape[0], fit)
            lesions = masks.any(axis=0).astype(float) * 0.4
            own = target_mask(masks, name)
            overlay = np.where(own, 1.0, lesions)
            ax.imshow(
                np.ma.masked_equal(overlay, 0),
                cmap="autumn",
                vmin=0,
                vmax=1,
                alpha=0.7,
                extent=extent,
            )
        else:
            ax.text(0.5, 0.5, "no masks", ha="center", va="center", fontsize=6, color="red")
        if row == 0:
            ax.set_title("lesion mask", fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(target, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


# ---- markdown and headline ------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if math.isnan(float(value)) else f"{float(value):.3f}"
    return str(value)


def markdown_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    cols = list(columns) if columns is not None else list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for _, row in table.iterrows()]
    return "\n".join(lines)


def _json_number(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def per_target(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The headline numbers of a summary table, keyed by target (NaN -> None)."""
    return {
        str(row["target"]): {m: _json_number(row[m]) for m in HEADLINE_METRICS}
        for _, row in summary.iterrows()
    }


def headline_markdown(
    scored: pd.DataFrame | None, version: str | None, modes: pd.DataFrame | None
) -> str:
    parts = []
    if scored is not None:
        parts += [
            f"Heatmaps {version}:",
            "",
            markdown_table(scored, ["target", *HEADLINE_METRICS]),
            "",
        ]
    if modes is not None:
        columns = ["target", "n_lesion_softmax"] + [
            f"{m}_{suffix}"
            for m in ("pointing_game", "pixel_auroc", "off_target_share")
            for suffix in (*MODES, "diff")
        ]
        parts += [
            "Softmax vs sigmoid guidance (diff = softmax - sigmoid; off_target_share: heat on "
            "other findings' lesions, lower is better):",
            "",
            markdown_table(modes, columns),
            "",
        ]
    return "\n".join(parts).strip() or "Nothing was scored."


# ---- the flow -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredSource:
    """One scored heatmap version: its item scores and per-target summary."""

    name: str
    version: str
    store: HeatmapStore
    scores: pd.DataFrame
    summary: pd.DataFrame


def _score_source(
    name: str,
    store: HeatmapStore,
    image_store: ImageStore,
    truth: GroundTruthMasks,
    indices: np.ndarray,
    tolerance: int,
    fit: FitMode,
    config: DiffusionConfig,
    tables: DirectoryTables,
) -> ScoredSource:
    scores = score_heatmap_version(
        image_store, store, truth, indices, tolerance, fit, config.class_names
    )
    summary = summarise_scores(scores, store.targets)
    tables.write(f"scores-{name}", scores)
    tables.write(f"summary-{name}", summary)
    return ScoredSource(name, store.version, store, scores, summary)


def _run_precompute(
    mode: str,
    version: str,
    store: str,
    checkpoints: str,
    targets: Sequence[str],
    overrides: TranslationOverrides,
    preset_name: str,
    splits: list[str],
    actors: int,
) -> dict[str, Any]:
    numbers = dataclasses.asdict(overrides) | {"mode": mode}
    result: dict[str, Any] = precompute_subflow(
        store=store,
        checkpoints=checkpoints,
        targets=list(targets),
        preset_name=preset_name,
        actors=actors,
        splits=splits,
        version=version,
        examples=0,
        **numbers,
    )
    return result


@flow(name="heatmap-quality", flow_run_name=_run_name)
def heatmap_quality_flow(
    store: str,
    truth: str,
    checkpoints: str | None = None,
    version: str | None = None,
    splits: list[str] | None = None,
    compare_modes: bool = True,
    compare_targets: list[str] | None = None,
    sweep: bool = True,
    sweep_items: int = 12,
    sweep_scales: list[float] | None = None,
    sweep_levels: list[int] | None = None,
    sweep_steps: list[int] | None = None,
    tolerance: int = 2,
    preset_name: str = "tiny",
    steps: int | None = None,
    scale: float | None = None,
    level: int | None = None,
    inversion_refinements: int | None = None,
    actors: int = 0,
    examples_per_target: int = 3,
    out: str | None = None,
    torch_threads_sweep: int = 1,
) -> dict[str, Any]:
    """Score DAug heatmaps against the synthetic ground-truth lesion masks.

    Args:
        store: image store (ingested from a synthetic release).
        truth: that release's ground truth folder (``OUT/ground_truth`` with masks.zarr).
        checkpoints: train-generator output; needed for the mode comparison and the sweep.
        version: an existing heatmap version to score (targets from its provenance).
        splits: items of these splits (default: test).
        compare_modes: compute softmax and sigmoid heatmaps (precompute subflows into
            versions quality-softmax-<hex> / quality-sigmoid-<hex>, hex from the settings) and
            compare them per target.
        compare_targets: their targets (default "+No Finding", then "-c" for every other
            class).
        sweep: time and score "+No Finding" heatmaps over scale x level x steps, in-process.
        sweep_items: lesion images the sweep runs on (the first of ``splits``).
        sweep_scales / sweep_levels / sweep_steps: the grid (default: around the preset's
            numbers, two values each, <= 8 points).
        tolerance: pointing-game tolerance in heatmap pixels.
        preset_name / steps / scale / level / inversion_refinements: the translation numbers
            of the mode comparison and the sweep's centre (preset's where not given).
        actors: Ray actors of the precompute subflows (0: one per CPU).
        examples_per_target: cases per target in the PNG grids.
        out: output folder (default STORE/_runs/heatmap-quality-<time>).
        torch_threads_sweep: torch threads of the in-process sweep (0: torch's default).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    chosen_splits = list(splits) if splits else ["test"]
    image_store = ImageStore.open(store, read_only=True)
    masks = GroundTruthMasks.open(truth)
    fit = store_fit_mode(image_store)
    overrides = TranslationOverrides(None, scale, level, steps, inversion_refinements)
    config = heatmap_config(preset_name, overrides)
    do_modes = compare_modes and checkpoints is not None
    do_sweep = sweep and checkpoints is not None and sweep_items > 0
    if (compare_modes or sweep) and checkpoints is None:
        logger.warning("no checkpoints: the softmax/sigmoid comparison and the sweep are skipped")
    if version is None and not do_modes and not do_sweep:
        raise ValueError(
            "nothing to score: give an existing heatmap `version`, or `checkpoints` for the "
            "softmax/sigmoid comparison or the sweep"
        )
    if version is not None:
        HeatmapStore(image_store, version)  # a missing version fails before any work
    points = sweep_grid(config.translation, sweep_scales, sweep_levels, sweep_steps)
    at = datetime.now(UTC)
    run_dir = Path(out) if out else Path(store) / "_runs" / f"heatmap-quality-{at:%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    tables = DirectoryTables(run_dir)
    key = artifact_key("heatmap-quality", Path(store).name)
    units = (version is not None) + 3 * do_modes + len(points) * do_sweep
    progress = ProgressReporter(f"{key}-progress", units, "heatmap-quality steps")
    logger.info(
        "heatmap quality of %s on %s (fit %s): version %s, modes %s, sweep %s (%d points)",
        store,
        chosen_splits,
        fit.value,
        version,
        do_modes,
        do_sweep,
        len(points) if do_sweep else 0,
    )

    scored: ScoredSource | None = None
    if version is not None:
        heat = HeatmapStore(image_store, version)
        indices = scorable_indices(image_store, heat, chosen_splits)
        logger.info("scoring heatmaps %s: %d items of %s", version, len(indices), chosen_splits)
        scored = _score_source(
            version, heat, image_store, masks, indices, tolerance, fit, config, tables
        )
        progress.advance(1)

    modes: dict[str, ScoredSource] = {}
    modes_table: pd.DataFrame | None = None
    compared = tuple(compare_targets) if compare_targets else default_compare_targets(config)
    if do_modes:
        assert checkpoints is not None
        versions = mode_versions(config, compared, Path(checkpoints))
        for mode in MODES:
            run = _run_precompute(
                mode,
                versions[mode],
                store,
                checkpoints,
                compared,
                overrides,
                preset_name,
                chosen_splits,
                actors,
            )
            logger.info(
                "%s heatmaps: %d computed, %d already done", mode, run["done"], run["already_done"]
            )
            progress.advance(1)
        image_store = ImageStore.open(store, read_only=True)  # sees the new versions
        stores = {mode: HeatmapStore(image_store, versions[mode]) for mode in MODES}
        done = [scorable_indices(image_store, s, chosen_splits) for s in stores.values()]
        both = np.intersect1d(done[0], done[1])
        for mode, heat in stores.items():
            modes[mode] = _score_source(
                mode, heat, image_store, masks, both, tolerance, fit, config, tables
            )
        modes_table = compare_summaries(modes["softmax"].summary, modes["sigmoid"].summary, MODES)
        tables.write("modes", modes_table)
        progress.advance(1)

    sweep_table: pd.DataFrame | None = None
    sweep_plot: Path | None = None
    if do_sweep:
        assert checkpoints is not None
        chosen = select_sweep_items(
            image_store, masks, chosen_splits, sweep_items, config.image_size, fit
        )
        logger.info("sweep on %d lesion images, %d points", len(chosen.indices), len(points))
        with torch_threads(torch_threads_sweep):
            sweep_table = run_sweep(config, Path(checkpoints), chosen, points, tolerance, progress)
        tables.write("sweep", sweep_table)
        sweep_plot = plot_sweep(sweep_table, run_dir / "sweep.png")

    grids = _case_grids(
        image_store, scored, modes, masks, fit, examples_per_target, run_dir, config.class_names
    )
    failures = _failures([s for s in (scored, *modes.values()) if s is not None])
    tables.write("failures", failures)

    summary_for_artifact = scored.summary if scored is not None else None
    headline = headline_markdown(summary_for_artifact, version, modes_table)
    result: dict[str, Any] = {
        "store": str(Path(store).resolve()),
        "truth": str(Path(truth).resolve()),
        "splits": chosen_splits,
        "tolerance": tolerance,
        "fit": fit.value,
        "translation": dataclasses.asdict(config.translation),
        "scored": None
        if scored is None
        else {
            "version": scored.version,
            "items": int(scored.scores["index"].nunique()),
            "targets": per_target(scored.summary),
        },
        "modes": {
            mode: {
                "version": source.version,
                "items": int(source.scores["index"].nunique()),
                "targets": per_target(source.summary),
            }
            for mode, source in modes.items()
        }
        or None,
        "compare_targets": list(compared) if do_modes else [],
        "sweep": []
        if sweep_table is None
        else [
            {k: _json_number(v) for k, v in row.items()} for row in sweep_table.to_dict("records")
        ],
        "failures": len(failures),
        "seconds": round(time.perf_counter() - started, 2),
        "run_dir": str(run_dir.resolve()),
        "paths": {
            "sweep_plot": str(sweep_plot.resolve()) if sweep_plot else None,
            "cases": {t: str(p.resolve()) for t, p in grids.items()},
            "tables": sorted(str(p.resolve()) for p in run_dir.glob("*.csv")),
        },
        "markdown": headline,
    }
    write_json(result, run_dir / "summary.json")
    _artifacts(key, store, result, scored, modes_table, sweep_table, sweep_plot, grids, failures)
    logger.info("heatmap quality finished in %.1f s: %s", result["seconds"], run_dir)
    return result


def _case_grids(
    image_store: ImageStore,
    scored: ScoredSource | None,
    modes: dict[str, ScoredSource],
    truth: GroundTruthMasks,
    fit: FitMode,
    count: int,
    run_dir: Path,
    class_names: Sequence[str],
) -> dict[str, Path]:
    """cases-<target>.png per target: of the mode comparison when it ran, else of the
    scored version."""
    if modes:
        sources = {name: s.store for name, s in modes.items()}
        scores = modes[MODES[0]].scores
        targets = modes[MODES[0]].store.targets
    elif scored is not None:
        sources = {scored.version: scored.store}
        scores, targets = scored.scores, scored.store.targets
    else:
        return {}
    grids: dict[str, Path] = {}
    for target in targets:
        cases = pick_cases(scores, target, count)
        path = run_dir / f"cases-{'plus' if target.startswith('+') else 'minus'}-{slug(target)}.png"
        grid = plot_cases(image_store, sources, truth, fit, target, cases, path, class_names)
        if grid is not None:
            grids[target] = grid
    return grids


def _failures(sources: Sequence[ScoredSource]) -> pd.DataFrame:
    parts = [failures_of(s.scores).assign(source=s.name) for s in sources]
    columns = ["source", "index", "dicom_id", "reason"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).reindex(columns=columns)


def _artifacts(
    key: str,
    store: str,
    result: dict[str, Any],
    scored: ScoredSource | None,
    modes_table: pd.DataFrame | None,
    sweep_table: pd.DataFrame | None,
    sweep_plot: Path | None,
    grids: dict[str, Path],
    failures: pd.DataFrame,
) -> None:
    run_dir = Path(result["run_dir"])
    lines = [
        f"## heatmap quality: {store}",
        "",
        f"Splits {', '.join(result['splits'])}; pointing-game tolerance {result['tolerance']} px; "
        f"masks fitted with `{result['fit']}`; {result['failures']} failed items; "
        f"{result['seconds']:.1f} s.",
        "",
        result["markdown"],
        "",
    ]
    if scored is not None:
        table_artifact(f"{key}-summary", scored.summary.round(4), f"Heatmaps {scored.version}.")
    if modes_table is not None:
        table_artifact(
            f"{key}-modes", modes_table.round(4), "Softmax vs sigmoid guidance per target."
        )
    if sweep_table is not None:
        table_artifact(
            f"{key}-sweep",
            sweep_table.round(4),
            "+No Finding heatmaps over scale x level x steps: localisation vs seconds per image.",
        )
        lines += [
            "Sweep (+No Finding, in-process):",
            "",
            markdown_table(
                sweep_table,
                SWEEP_COLUMNS,
            ),
            "",
        ]
        if sweep_plot is not None:
            lines += [f"![sweep]({sweep_plot.resolve().as_uri()})", ""]
    table_artifact(f"{key}-failures", failures, "Items that could not be scored, with the reason.")
    lines += [f"![{target}]({path.resolve().as_uri()})" for target, path in grids.items()]
    lines += ["", f"Run folder: [{run_dir}]({run_dir.as_uri()})"]
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines))
