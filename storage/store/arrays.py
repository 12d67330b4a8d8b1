"""Zarr arrays of one item per row: run-wise writes, flag arrays, reads, and the codecs every
image and heatmap chunk is written with (CRC-32C checked on every read)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

Indices = Sequence[int] | np.ndarray


def write_item_runs(array: zarr.Array, indices: Indices, data: np.ndarray) -> None:
    """Write ``data[i]`` at item ``indices[i]``; consecutive indices go in one slice write."""
    order = np.argsort(np.asarray(indices))
    idx = np.asarray(indices, dtype=np.int64)[order]
    ordered = np.asarray(data)[order]
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    for run_idx, run_data in zip(np.split(idx, breaks), np.split(ordered, breaks), strict=True):
        if len(run_idx):
            array[int(run_idx[0]) : int(run_idx[-1]) + 1] = run_data


def pixel_compressors() -> tuple[BloscCodec, Crc32cCodec]:
    """Codecs after ``bytes`` for image and heatmap chunks: Blosc-zstd, then a CRC-32C of the
    compressed chunk, checked on every read (a flipped bit raises instead of returning wrong
    pixels; ``daug verify`` looks for such chunks). With Zarr sharding these are the inner
    chunks' codecs; the shard index carries its own CRC-32C (Zarr's default)."""
    return BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle), Crc32cCodec()


def flag_compressors() -> tuple[ZstdCodec, Crc32cCodec]:
    """Codecs after ``bytes`` for the ``done`` flag arrays: zstd (Zarr's default), CRC-32C."""
    return ZstdCodec(), Crc32cCodec()


def set_flags(array: zarr.Array, indices: Indices) -> None:
    """Set a (N,) bool array to True at ``indices``."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx):
        array.set_coordinate_selection((idx,), np.ones(len(idx), dtype=bool))


def clear_flags(array: zarr.Array, indices: Indices) -> None:
    """Set a (N,) bool array to False at ``indices``, rewriting each touched chunk whole
    (read, modify, write) so the chunk's other flags are kept. The caller holds the store's
    lease (storage/store/lease.py): no other run writes the chunk meanwhile."""
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    step = int(array.chunks[0])
    for chunk in np.unique(idx // step):
        start, stop = int(chunk) * step, min((int(chunk) + 1) * step, int(array.shape[0]))
        flags = np.asarray(array[start:stop], dtype=bool)
        flags[idx[idx // step == chunk] - start] = False
        array[start:stop] = flags


def read_items(array: zarr.Array, indices: Indices) -> np.ndarray:
    """Items at ``indices`` (any order) as float32."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.asarray(array.get_orthogonal_selection((idx,)), dtype=np.float32)
