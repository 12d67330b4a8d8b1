"""Random training batches streamed from an image store (numpy; no framework).

Batch ``k`` is drawn from its own generator seeded by ``(seed, k)``, so a run resumed at
step ``k`` sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from storage.errors import EmptySelectionError
from storage.image_store import ImageStore


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
    item in index order, its index, dicom_id, label row and the sha256 of its stored pixels.

    It hashes what the model sees, not the source files: a release written again by another
    DICOM library version (other header bytes, same pixels) gives the same value, while the
    JPG twin of a DICOM cohort (lossy pixels) does not."""
    items = store.items().set_index("index").loc[selection.indices]
    digest = hashlib.sha256(f"size={store.size};labels={selection.label_columns}".encode())
    for start in range(0, len(selection.indices), 256):
        part = selection.indices[start : start + 256]
        pixels = store.read_images(part).astype("<f4", copy=False)
        for offset, (index, image) in enumerate(zip(part, pixels, strict=True)):
            row = start + offset
            labels = ",".join("nan" if np.isnan(v) else f"{v:g}" for v in selection.labels[row])
            image_sha = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
            digest.update(f"\n{index};{items['dicom_id'].iloc[row]};{image_sha};{labels}".encode())
    return digest.hexdigest()


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
