"""Image store -> heatmap store: plan the pending items by shard, then compute one shard.

Plain functions with no orchestration. :func:`precompute_shard` runs where the models are: a
Ray actor (flows/runtime/actors.py) given a :class:`ShardTask` opens the stores by their URL
and reads, computes and writes its shard itself, so only item indices go out and counts come
back; a notebook or test calls it in-process with any batch computer.

A shard is written by one worker at a time (the dispatcher never hands a shard to two), and
within it each batch commits on its own: heatmaps, the batch's failure part, then its
``heatmaps_done`` flags. A worker lost mid-shard therefore loses at most the batch in flight;
its retry skips the committed batches. Batches lie on a fixed grid of the shard
(``batch_size`` consecutive indices), so a resumed shard computes exactly the batches an
uninterrupted run would, whatever finished before.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np
import pandas as pd

from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore

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


class BatchComputer(Protocol):
    """Heatmaps for one batch of store images (a :class:`~flows.runtime.actors.HeatmapWorker`
    is one); a bad item never fails its batch, it comes back as a failure."""

    def __call__(self, batch: ImageBatch) -> BatchOutcome: ...


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


@dataclass(frozen=True, kw_only=True)
class ShardTask:
    """What a worker needs to do one shard: where the stores are (URLs or paths), the
    version, the pending items, the batch size, and the lease holder it commits under."""

    store: str
    heatmap_version: str
    work: HeatmapShardWork
    batch_size: int
    lease_holder: str | None = None  # None: no fencing (in-memory stores, tests)


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
    items: np.ndarray | None = None,
) -> HeatmapPlan:
    """Ingested items (image ``done`` and status ok) of ``splits`` (None: all), and of
    ``items`` (store indices; None: all), whose heatmaps are not done, grouped by shard.
    Leftover parts of a crashed run are folded in first; items that failed before are skipped
    unless ``retry_failed``."""
    heatmaps.consolidate()
    chosen = images.usable(splits)
    if items is not None:
        chosen = chosen[chosen["index"].isin(np.asarray(items, dtype=np.int64))]
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


def shard_batches(work: HeatmapShardWork, shard_items: int, batch_size: int) -> list[np.ndarray]:
    """The shard's pending indices grouped on the grid of ``batch_size`` consecutive indices
    from the shard's start (so batches do not depend on what was done before)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = np.asarray(work.indices, dtype=np.int64)
    cell = (indices - work.shard * shard_items) // batch_size
    return [indices[cell == c] for c in np.unique(cell)]


def precompute_shard(
    heatmaps: HeatmapStore,
    images: ImageStore,
    work: HeatmapShardWork,
    computer: BatchComputer,
    batch_size: int,
    before_commit: Callable[[], None] | None = None,
) -> HeatmapShardResult:
    """Compute and write the heatmaps of one shard, batch by batch; failed items go to the
    batch's failure part. Items done meanwhile (by an earlier try of this shard) are skipped.

    Per batch: heatmaps, failure part, ``before_commit()`` (the lease's fencing check: a
    worker whose run lost its lease raises there and commits nothing), ``heatmaps_done``.
    """
    start = time.perf_counter()
    dicom_of = dict(zip(work.indices, work.dicom_ids, strict=True))
    k = len(heatmaps.targets)
    done_count = 0
    failures: list[ItemFailure] = []
    heat_sum = np.zeros(k, dtype=np.float64)
    compute_seconds = 0.0
    already = heatmaps.done_for(np.asarray(work.indices, dtype=np.int64))
    pending = HeatmapShardWork(
        shard=work.shard,
        indices=tuple(i for i, d in zip(work.indices, already, strict=True) if not d),
        dicom_ids=tuple(i for i, d in zip(work.dicom_ids, already, strict=True) if not d),
    )
    for indices in shard_batches(pending, images.shard_items, batch_size):
        outcome = computer(ImageBatch(indices, images.read_images(indices)))
        compute_seconds += outcome.seconds
        if len(outcome.indices):
            heatmaps.write_heatmaps(outcome.indices, outcome.heatmaps)
            heat_sum += outcome.heatmaps.astype(np.float64).mean(axis=(2, 3)).sum(axis=0)
        for failure in outcome.failures:
            log.warning(
                "heatmaps failed for item %d (%s): %s",
                failure.index,
                dicom_of.get(failure.index),
                failure.reason,
            )
        table = pd.DataFrame(
            {
                "index": [f.index for f in outcome.failures],
                "dicom_id": [dicom_of.get(f.index, "") for f in outcome.failures],
                "reason": [f.reason for f in outcome.failures],
            }
        )
        heatmaps.write_failures_part(work.shard, table, part=int(indices[0]))
        if before_commit is not None:
            before_commit()
        heatmaps.mark_done(outcome.indices)
        done_count += len(outcome.indices)
        failures.extend(outcome.failures)
    return HeatmapShardResult(
        shard=work.shard,
        done=done_count,
        failed=dict(Counter(f.reason.split(":", 1)[0] for f in failures)),
        heat_sum=tuple(float(h) for h in heat_sum),
        seconds=time.perf_counter() - start,
        compute_seconds=compute_seconds,
    )
