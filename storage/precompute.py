"""Image store -> heatmap store: plan the pending items by shard, then compute one shard.

Plain functions with no orchestration: the Prefect flow (flows/precompute.py) runs
:func:`precompute_shard` as one task per shard with a Ray actor pool as the
:class:`HeatmapComputer`; a notebook or test can pass an in-process computer instead.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
import pandas as pd

from storage.heatmap_store import HeatmapStore
from storage.image_store import ImageStore

log = logging.getLogger(__name__)


class HeatmapFailure(StrEnum):
    """Why an item got no heatmaps. Values start the ``reason`` column of failures.csv."""

    NON_FINITE_PIXELS = "non_finite_pixels"
    NON_FINITE_HEATMAP = "non_finite_heatmap"
    COMPUTE_ERROR = "compute_error"


@dataclass(frozen=True)
class ImageBatch:
    """Store images (B, S, S) float32 in [0, 1] with their store indices (B,)."""

    indices: np.ndarray
    images: np.ndarray


@dataclass(frozen=True)
class ItemFailure:
    index: int
    reason: str  # "<HeatmapFailure value>: detail"


@dataclass(frozen=True)
class BatchOutcome:
    """What a computer returns for one batch: heatmaps of the items that worked, and why the
    others did not. ``heatmaps`` is (len(indices), K, S, S) float16 in [0, 1]."""

    indices: np.ndarray
    heatmaps: np.ndarray
    failures: tuple[ItemFailure, ...]
    seconds: float


class HeatmapComputer(Protocol):
    """Computes batches, possibly in parallel; yields outcomes in the order of ``batches``."""

    def map_batches(self, batches: Sequence[ImageBatch]) -> Iterator[BatchOutcome]: ...


@dataclass(frozen=True)
class HeatmapShardWork:
    """Pending items of one store shard (one writer owns a shard)."""

    shard: int
    indices: tuple[int, ...]
    dicom_ids: tuple[str, ...]


@dataclass(frozen=True)
class HeatmapPlan:
    shards: tuple[HeatmapShardWork, ...]
    selected: int  # ingested items in the chosen splits
    already_done: int
    skipped_failed: int  # failed before and not retried

    @property
    def pending(self) -> int:
        return sum(len(s.indices) for s in self.shards)


@dataclass(frozen=True)
class HeatmapShardResult:
    shard: int
    done: int
    failed: dict[str, int]  # HeatmapFailure value -> count
    heat_sum: tuple[float, ...]  # per target: sum over done items of the mean heat
    seconds: float  # wall time of the shard
    compute_seconds: float  # time inside the computer (summed over batches)


def plan_heatmaps(
    heatmaps: HeatmapStore,
    images: ImageStore,
    splits: Sequence[str] | None = None,
    retry_failed: bool = False,
) -> HeatmapPlan:
    """Ingested items (image ``done`` and status ok) of ``splits`` (None: all) whose
    heatmaps are not done, grouped by shard. Leftover parts of a crashed run are folded in
    first; items that failed before are skipped unless ``retry_failed``."""
    heatmaps.consolidate()
    chosen = images.usable(splits)
    already = heatmaps.done_for(chosen["index"].to_numpy())
    todo = chosen[~already]
    failed = set(heatmaps.failures()["index"].tolist())
    skipped = todo["index"].isin(failed) if not retry_failed else todo["index"].isin(())
    todo = todo[~skipped]
    shards = tuple(
        HeatmapShardWork(
            shard=int(shard),
            indices=tuple(int(i) for i in group["index"]),
            dicom_ids=tuple(str(d) for d in group["dicom_id"]),
        )
        for shard, group in todo.groupby(todo["index"] // images.shard_items, sort=True)
    )
    return HeatmapPlan(shards, len(chosen), int(already.sum()), int(skipped.sum()))


def shard_batches(images: ImageStore, work: HeatmapShardWork, batch_size: int) -> list[ImageBatch]:
    """The shard's items in index order, ``batch_size`` at a time (the same split every run,
    so a resumed run sees the batches an uninterrupted one would)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = np.asarray(work.indices, dtype=np.int64)
    return [
        ImageBatch(chunk, images.read_images(chunk))
        for chunk in (indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
    ]


def precompute_shard(
    heatmaps: HeatmapStore,
    images: ImageStore,
    work: HeatmapShardWork,
    computer: HeatmapComputer,
    batch_size: int,
) -> HeatmapShardResult:
    """Compute and write the heatmaps of one shard; failed items go to its failure part.

    Write order: heatmaps (as batches arrive), the shard's failure part, then
    ``heatmaps_done``.
    """
    start = time.perf_counter()
    dicom_of = dict(zip(work.indices, work.dicom_ids, strict=True))
    k = len(heatmaps.targets)
    done: list[np.ndarray] = []
    failures: list[ItemFailure] = []
    heat_sum = np.zeros(k, dtype=np.float64)
    compute_seconds = 0.0
    outcomes: Iterable[BatchOutcome] = computer.map_batches(shard_batches(images, work, batch_size))
    for outcome in outcomes:
        compute_seconds += outcome.seconds
        failures.extend(outcome.failures)
        if len(outcome.indices):
            heatmaps.write_heatmaps(outcome.indices, outcome.heatmaps)
            done.append(np.asarray(outcome.indices, dtype=np.int64))
            heat_sum += outcome.heatmaps.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
    for failure in failures:
        log.warning(
            "heatmaps failed for item %d (%s): %s",
            failure.index,
            dicom_of.get(failure.index),
            failure.reason,
        )
    table = pd.DataFrame(
        {
            "index": [f.index for f in failures],
            "dicom_id": [dicom_of.get(f.index, "") for f in failures],
            "reason": [f.reason for f in failures],
        }
    )
    heatmaps.write_failures_part(work.shard, table)
    done_indices = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
    heatmaps.mark_done(done_indices)
    return HeatmapShardResult(
        shard=work.shard,
        done=len(done_indices),
        failed=dict(Counter(f.reason.split(":", 1)[0] for f in failures)),
        heat_sum=tuple(float(h) for h in heat_sum),
        seconds=time.perf_counter() - start,
        compute_seconds=compute_seconds,
    )
