"""(image, teacher heatmaps) pairs of a store for the heatmap student: the usable items of
some splits whose teacher heatmaps are done, drawn as batches from the seed and the step
alone (a resumed run draws the batches an uninterrupted one would)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from daug_core.labels import SUPER_CLASS_COLUMNS
from daug_core.model_input import to_model_space
from daug_core.student.training import TeacherBatch
from storage.errors import EmptySelectionError, StoreFormatError
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore

# Pairs up to this many bytes are read once and kept in memory (a tiny-preset store's are tens
# of MB); more are read batch by batch.
IN_MEMORY_BYTES = 1 << 30


def teacher_items(images: ImageStore, teacher: HeatmapStore, splits: Sequence[str]) -> np.ndarray:
    """Store indices of the usable items of ``splits`` with teacher heatmaps done, sorted; an
    :class:`EmptySelectionError` naming the version when there are none."""
    chosen = images.usable(list(splits))["index"].to_numpy(dtype=np.int64)
    chosen = chosen[teacher.done_for(chosen)] if len(chosen) else chosen
    if not len(chosen):
        raise EmptySelectionError(
            f"{images.location}: heatmap version {teacher.version!r} has no done items in "
            f"{list(splits)}; run `daug precompute --heatmap-version {teacher.version}` first"
        )
    return np.sort(chosen)


def stratified_fraction(images: ImageStore, indices: np.ndarray, fraction: float) -> np.ndarray:
    """A deterministic, label-stratified ``fraction`` of ``indices``: per combination of the
    super-class labels, the first ceil(fraction * n) items by the sha256 of their dicom_id
    (the same items on every run and machine; a larger fraction keeps the smaller one's)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0 or not len(indices):
        return np.asarray(indices, dtype=np.int64)
    items = images.items().set_index("index").loc[np.asarray(indices, dtype=np.int64)]
    order = items["dicom_id"].map(lambda d: hashlib.sha256(str(d).encode()).hexdigest())
    items = items.assign(_order=order.to_numpy()).sort_values("_order")
    groups = items.groupby(list(SUPER_CLASS_COLUMNS), dropna=False, sort=False)
    keep = [part.index[: math.ceil(fraction * len(part))] for _, part in groups]
    return np.sort(np.concatenate([np.asarray(k, dtype=np.int64) for k in keep]))


def stratified_selection(
    images: ImageStore, splits: Sequence[str] | None, fraction: float
) -> np.ndarray:
    """:func:`stratified_fraction` of the usable items of ``splits`` (None: all): the items
    ``daug precompute --fraction`` computes and ``daug distill``'s teacher learns from."""
    usable = images.usable(None if splits is None else list(splits))
    return stratified_fraction(images, usable["index"].to_numpy(dtype=np.int64), fraction)


class TeacherPairs:
    """The pairs of ``indices``: images at ``image_size`` in model space ([-1, 1]) and the
    teacher's heatmaps (float32, [0, 1])."""

    def __init__(
        self, images: ImageStore, teacher: HeatmapStore, indices: np.ndarray, image_size: int
    ) -> None:
        if teacher.size != image_size:
            raise StoreFormatError(
                f"heatmap version {teacher.version!r} is {teacher.size} px; the student "
                f"computes {image_size} px heatmaps"
            )
        self.images, self.teacher = images, teacher
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_size = image_size
        k = len(teacher.targets)
        size = len(self.indices) * (1 + k) * image_size * image_size * 4
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if size <= IN_MEMORY_BYTES:
            self._cache = self._read(self.indices)

    def _read(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_model_space(self.images.read_images(indices), self.image_size, "signed")
        heat = self.teacher.read_heatmaps(indices).astype(np.float32)
        return x, torch.from_numpy(np.clip(heat, 0.0, 1.0))

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, rows: np.ndarray) -> TeacherBatch:
        """The pairs at positions ``rows`` of :attr:`indices`."""
        if self._cache is not None:
            picked = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            return TeacherBatch(self._cache[0][picked], self._cache[1][picked])
        order = np.argsort(rows)
        x, heat = self._read(self.indices[np.asarray(rows)[order]])
        back = torch.from_numpy(np.argsort(order))
        return TeacherBatch(x[back], heat[back])

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[TeacherBatch]:
        """Endless batches; batch ``step`` is drawn from ``(seed, step)`` alone."""
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            yield self.take(rng.choice(len(self), size=batch_size, replace=len(self) < batch_size))
            step += 1
