"""The timed sweep: heatmaps of a few lesion images per target (default ``+No Finding``) at
every point of guidance mode x scale x level x steps, scored against the ground-truth masks:
localisation and class specificity per target against seconds per image.

Runs in the flow's process with one :class:`~flows.runtime.actors.HeatmapWorker` (the models
loaded once, as the precompute actors load them).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from daug_core.diffusion.config import DiffusionConfig, GuidanceMode, TranslationConfig
from daug_core.diffusion.targets import Target
from flows.quality.scoring import (
    LESION_METRICS,
    score_item,
    scores_table,
    summarise_scores,
    target_mask,
)
from flows.quality.settings import SweepSettings
from flows.reports.artifacts import ProgressReporter
from storage.geometry import FitMode
from storage.store.image import ImageStore
from storage.synthetic.ground_truth import GroundTruthError, GroundTruthMasks

log = logging.getLogger(__name__)

SPECIFICITY: tuple[str, ...] = ("specificity", "chance_specificity", "n_specificity")


@dataclass(frozen=True)
class SweepPoint:
    scale: float
    level: int
    steps: int
    mode: GuidanceMode

    def label(self) -> str:
        return f"{self.mode} s={self.scale:g} L={self.level} n={self.steps}"


def sweep_grid(translation: TranslationConfig, settings: SweepSettings) -> list[SweepPoint]:
    """mode x scale x level x steps; by default ``translation``'s mode and two values each
    around its numbers (scale / 10 and scale, level / 2 and level, steps / 2 and steps): at
    most 8 points per mode. Points with more steps than their level are left out (DDIM needs
    steps <= level)."""
    modes = cast(tuple[GuidanceMode, ...], settings.modes) or (translation.mode,)
    scale_values = settings.scales or (translation.scale / 10, translation.scale)
    level_values = settings.levels or (max(1, translation.level // 2), translation.level)
    step_values = settings.steps or (max(1, translation.steps // 2), translation.steps)
    points = [
        SweepPoint(float(s), int(lv), int(n), mode)
        for mode, s, lv, n in itertools.product(
            dict.fromkeys(modes),
            dict.fromkeys(scale_values),
            dict.fromkeys(level_values),
            dict.fromkeys(step_values),
        )
    ]
    return [p for p in points if 1 <= p.steps <= p.level]


def with_point(config: DiffusionConfig, point: SweepPoint) -> DiffusionConfig:
    """``config`` with the point's numbers; every other translation field is kept."""
    translation = dataclasses.replace(
        config.translation, scale=point.scale, level=point.level, steps=point.steps, mode=point.mode
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
    targets: Sequence[Target] = (),
) -> SweepItems:
    """Usable items of ``splits`` in index order until each of ``targets`` has ``count``
    images with its class's lesion (any lesion for ``+No Finding``; without targets: the
    first ``count`` lesion images). Items without masks are skipped (the scoring parts
    report them)."""
    usable = image_store.usable(splits)
    chosen: list[int] = []
    ids: list[str] = []
    masks: list[np.ndarray] = []
    wanted = {str(t): count for t in targets} if targets else {"any lesion": count}
    for index, dicom_id in zip(usable["index"], usable["dicom_id"], strict=True):
        if max(wanted.values(), default=0) <= 0:
            break
        try:
            fitted = truth.masks(str(dicom_id), size, fit)
        except GroundTruthError as exc:
            log.warning("sweep: %s skipped: %s", dicom_id, exc)
            continue
        has = {str(t): bool(target_mask(fitted, t.class_name).any()) for t in targets} or {
            "any lesion": bool(fitted.any())
        }
        if any(has[name] and wanted[name] > 0 for name in wanted):
            for name in wanted:
                wanted[name] -= has[name]
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
    import torch

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
    threads: int,
    progress: ProgressReporter | None = None,
    device: str = "cpu",
    targets: Sequence[str] = ("+No Finding",),
) -> pd.DataFrame:
    """Heatmaps of ``targets`` for ``items`` at every point on ``device``, timed per image
    and scored; one row per (point, target)."""
    # The worker imports torch and the models: only a run needs them, not the CLI's options.
    import torch

    from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
    from flows.runtime.actors import HeatmapWorker, WorkerSpec

    spec = WorkerSpec(
        generator_dir=str(checkpoints / GENERATOR_DIR),
        classifier_dir=str(checkpoints / CLASSIFIER_DIR),
        config=config,
        targets=tuple(targets),
        torch_threads=threads if threads > 0 else torch.get_num_threads(),
        device=device,
    )
    with torch_threads(threads):
        worker = HeatmapWorker(spec)
        return _sweep(worker, config, items, points, tolerance, progress, tuple(targets))


def _sweep(
    worker: Any,
    config: DiffusionConfig,
    items: SweepItems,
    points: Sequence[SweepPoint],
    tolerance: int,
    progress: ProgressReporter | None,
    targets: tuple[str, ...],
) -> pd.DataFrame:
    names = config.class_names
    if len(items.indices) and points:  # warm-up: the first call pays for lazy initialisation
        worker.compute(items.images[:1], with_point(config, points[0]))
    rows: list[dict[str, Any]] = []
    for point in points:
        scores = []
        seconds = float("nan")
        if len(items.indices):
            started = time.perf_counter()
            result = worker.compute(items.images, with_point(config, point))
            seconds = (time.perf_counter() - started) / len(items.indices)
            heat = result.heatmaps.detach().cpu().numpy()
            for dicom_id, maps, masks in zip(items.dicom_ids, heat, items.masks, strict=True):
                scores.extend(score_item(dicom_id, maps, targets, masks, tolerance, names))
        summary = summarise_scores(scores_table(scores), targets)
        for _, row in summary.iterrows():
            rows.append(
                dataclasses.asdict(point)
                | {"label": point.label(), "target": row["target"], "items": len(items.indices)}
                | {"seconds_per_image": seconds}
                | {m: row[m] for m in (*LESION_METRICS, *SPECIFICITY)}
            )
            log.info(
                "sweep %s %s: %.3f s/image, pointing game %.3f, pixel AUROC %.3f, specificity %.3f",
                point.label(),
                row["target"],
                seconds,
                row["pointing_game"],
                row["pixel_auroc"],
                row["specificity"],
            )
        if progress is not None:
            progress.advance(1)
    return pd.DataFrame(rows)
