"""Random training batches streamed from an image store (numpy; no framework).

Batch ``k`` is drawn from its own generator seeded by ``(seed, k)``, so a run resumed at
step ``k`` sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage.errors import EmptySelectionError
from storage.store.image import ImageStore


@dataclass(frozen=True)
class Selection:
    """Usable items of some splits: store indices and their label rows (NaN = masked)."""

    indices: np.ndarray  # (N,) int64, sorted
    labels: np.ndarray  # (N, C) float64
    label_columns: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    step: int
    indices: np.ndarray  # (B,)
    images: np.ndarray  # (B, S, S) float32 in [0, 1]
    labels: np.ndarray  # (B, C) float64


def selection_sha256(store: ImageStore, selection: Selection) -> str:
    """A fingerprint of the data a model trains on: the store's image size and, per selected
    item in index order, its index, dicom_id, label row and the sha256 of its stored pixels
    (exact: the same release written on another CPU can differ, see :class:`DataFingerprint`).

    It hashes what the model sees, not the source files: a release written again by another
    DICOM library version (other header bytes, same pixels) gives the same value, while the
    JPG twin of a DICOM cohort (lossy pixels) does not."""
    digest, dicom_ids = _items_digest(store, selection)
    for start in range(0, len(selection.indices), 256):
        part = selection.indices[start : start + 256]
        pixels = store.read_images(part).astype("<f4", copy=False)
        for offset, (index, image) in enumerate(zip(part, pixels, strict=True)):
            row = start + offset
            labels = _label_text(selection.labels[row])
            image_sha = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            digest.update(f"\n{index};{dicom_ids.iloc[row]};{image_sha};{labels}".encode())
    return digest.hexdigest()


THUMBNAIL_GRID = 8


@dataclass(frozen=True)
class DataFingerprint:
    """What a model trains on, comparable across machines: the items and labels exactly
    (``items_sha256``), the pixels as ``THUMBNAIL_GRID`` x ``THUMBNAIL_GRID`` block means per
    item (``thumbnails``). The synthetic renderer's float32 exp / pow / cos round differently
    with each CPU's SIMD kernels (numpy dispatches AVX2 or AVX-512), so the same release
    written on two machines differs by one grey level in ~0.02 % of its pixels: block means move
    by ~1e-7, a change of the data by far more."""

    items_sha256: str
    thumbnails: np.ndarray  # (N, G, G) float32

    def differences(self, other: DataFingerprint, tolerance: float = 1e-4) -> str | None:
        """Why ``other`` is not the same data (None when it is)."""
        if self.items_sha256 != other.items_sha256:
            return f"other items or labels (sha256 {other.items_sha256[:12]})"
        if self.thumbnails.shape != other.thumbnails.shape:
            return f"thumbnails {other.thumbnails.shape}, expected {self.thumbnails.shape}"
        worst = float(np.abs(self.thumbnails - other.thumbnails).max(initial=0.0))
        if not worst <= tolerance:
            return f"other pixels (block means differ by up to {worst:.2g} > {tolerance:g})"
        return None


def _items_digest(store: ImageStore, selection: Selection) -> tuple[hashlib._Hash, pd.Series]:
    items = store.items().set_index("index").loc[selection.indices]
    digest = hashlib.sha256(f"size={store.size};labels={selection.label_columns}".encode())
    return digest, items["dicom_id"]


def _label_text(labels: np.ndarray) -> str:
    return ",".join("nan" if np.isnan(v) else f"{v:g}" for v in labels)


def block_means(images: np.ndarray, grid: int = THUMBNAIL_GRID) -> np.ndarray:
    """(N, S, S) -> (N, grid, grid): the mean of each block (blocks as even as S allows)."""
    edges = np.linspace(0, images.shape[-1], grid + 1).astype(np.int64)[:-1]
    sums = np.add.reduceat(np.add.reduceat(images.astype(np.float64), edges, 1), edges, 2)
    sizes = np.diff(np.append(edges, images.shape[-1]))
    return (sums / np.outer(sizes, sizes)).astype(np.float32)


def selection_fingerprint(store: ImageStore, selection: Selection) -> DataFingerprint:
    """The :class:`DataFingerprint` of ``selection``: ids and labels hashed as
    :func:`selection_sha256` hashes them, the pixels as block means."""
    digest, dicom_ids = _items_digest(store, selection)
    parts = []
    for row, index in enumerate(selection.indices):
        labels = _label_text(selection.labels[row])
        digest.update(f"\n{index};{dicom_ids.iloc[row]};{labels}".encode())
    for start in range(0, len(selection.indices), 256):
        parts.append(block_means(store.read_images(selection.indices[start : start + 256])))
    empty = np.zeros((0, THUMBNAIL_GRID, THUMBNAIL_GRID), dtype=np.float32)
    return DataFingerprint(digest.hexdigest(), np.concatenate(parts) if parts else empty)


def select(store: ImageStore, splits: Sequence[str], label_columns: Sequence[str]) -> Selection:
    """The usable items (:meth:`ImageStore.usable`) of ``splits``, with their labels."""
    chosen = store.usable(splits)
    if chosen.empty:
        raise EmptySelectionError(f"{store.location}: no ingested items in splits {list(splits)}")
    return Selection(
        indices=chosen["index"].to_numpy(dtype=np.int64),
        labels=chosen[list(label_columns)].to_numpy(dtype=np.float64, copy=True),
        label_columns=tuple(label_columns),
    )


def random_batches(
    store: ImageStore,
    selection: Selection,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """An endless stream of batches sampled with replacement across epochs boundaries.

    Data-parallel: ``batch_size`` is the global batch and rank r reads (only) the r-th
    contiguous share of its rows, so the ranks' batches of a step make up the batch one
    process would read."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"rank {rank} of {world_size} cannot share batches of {batch_size}")
    local = batch_size // world_size
    step = start_step
    n = len(selection.indices)
    while True:
        rng = np.random.default_rng([seed, step])
        rows = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        rows = rows[rank * local : (rank + 1) * local]
        indices = selection.indices[rows]
        yield Batch(step, indices, store.read_images(indices), selection.labels[rows])
        step += 1


def sequential_batches(store: ImageStore, selection: Selection, batch_size: int) -> Iterator[Batch]:
    """Every selected item once, in index order (evaluation)."""
    for k, start in enumerate(range(0, len(selection.indices), batch_size)):
        indices = selection.indices[start : start + batch_size]
        labels = selection.labels[start : start + batch_size]
        yield Batch(k, indices, store.read_images(indices), labels)
