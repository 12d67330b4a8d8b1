"""Classification metrics as small pure functions on numpy arrays (no sklearn).

ROC AUC is the Mann-Whitney U statistic divided by n_pos * n_neg, computed from ranks with ties
given their average rank: AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
This equals P(score_pos > score_neg) + 0.5 P(score_pos == score_neg), which is what sklearn's
``roc_auc_score`` returns (its trapezoidal ROC treats ties the same way). A class with only one
label value has no AUC: NaN, left out of means (EVALUATION.md).
"""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # last 1-based rank of each group of equal values
    group_rank = ends - (counts - 1) / 2.0
    return group_rank[inverse.ravel()]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary ROC AUC; entries with a NaN label are ignored; NaN when a class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    keep = ~np.isnan(y)
    s, y = s[keep], y[keep]
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN")
    positive = y == 1.0
    n_pos = int(positive.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C) scores and labels (NaN = masked) -> (C,) AUCs, NaN where undefined."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"need matching (N, C) arrays, got {s.shape} and {y.shape}")
    return np.array([roc_auc(s[:, c], y[:, c]) for c in range(s.shape[1])])


def accuracy_per_class(
    probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """(N, C) -> (C,) share of non-NaN labels matched by ``probability >= threshold``."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"need matching (N, C) arrays, got {p.shape} and {y.shape}")
    known = ~np.isnan(y)
    correct = ((p >= threshold) == (y == 1.0)) & known
    n = known.sum(axis=0)
    out = np.full(p.shape[1], np.nan)
    np.divide(correct.sum(axis=0), n, out=out, where=n > 0)
    return out


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean over the defined (non-NaN) entries; NaN when none is defined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
