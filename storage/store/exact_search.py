"""Exact cosine top-k over blocks of candidates: the running best k per query, merged block by
block with ``np.argpartition`` (O(B) per block instead of a sort), sorted once at the end.
Free of storage: :class:`~storage.store.embedding_index.EmbeddingIndex` feeds it the blocks of
its rows."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TopK(NamedTuple):
    """Per query, the best rows first: cosine similarity (Q, k) float32 and rows (Q, k) int64.
    ``k`` is at most the number of candidates seen."""

    similarity: np.ndarray
    rows: np.ndarray


def unit_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """``queries`` (Q, D) or (D,) as L2-normalised float32 (Q, D); a wrong shape, a non-finite
    or a zero query is a ValueError."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be (Q, {dim}), got {np.shape(queries)}")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if not (np.isfinite(q).all() and (norms > 0).all()):
        raise ValueError("queries must be finite and non-zero")
    return q / norms


class BestK:
    """The best ``k`` candidates per query among the blocks :meth:`add` has seen."""

    def __init__(self, queries: int, k: int) -> None:
        self.k = k
        self.similarity = np.empty((queries, 0), dtype=np.float32)
        self.rows = np.empty((queries, 0), dtype=np.int64)

    def add(self, similarity: np.ndarray, rows: np.ndarray) -> None:
        """One block: similarities (Q, B) of candidates ``rows`` (B,)."""
        sims, found = similarity, np.broadcast_to(rows, similarity.shape)
        if sims.shape[1] > self.k:
            part = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
            sims, found = np.take_along_axis(sims, part, axis=1), rows[part]
        self.similarity = np.concatenate([self.similarity, sims], axis=1)
        self.rows = np.concatenate([self.rows, found], axis=1)
        if self.similarity.shape[1] > self.k:
            part = np.argpartition(-self.similarity, self.k - 1, axis=1)[:, : self.k]
            self.similarity = np.take_along_axis(self.similarity, part, axis=1)
            self.rows = np.take_along_axis(self.rows, part, axis=1)

    def result(self) -> TopK:
        """Sorted by similarity, best first; ties: the lower row first."""
        order = np.lexsort((self.rows, -self.similarity), axis=1)
        return TopK(
            np.take_along_axis(self.similarity, order, axis=1).astype(np.float32),
            np.take_along_axis(self.rows, order, axis=1).astype(np.int64),
        )
