"""Classification metrics as small pure functions on numpy arrays, ROC AUC from scikit-learn.

The AUC itself is ``sklearn.metrics.roc_auc_score`` (docs/metrics.md, "Classification AUC":
per-class ``average=None``, the macro mean and ``average="weighted"``). What this module adds
is what sklearn refuses to do for a multi-label test split:

- labels may be NaN (masked by the store's ``ignore`` uncertainty policy): each class is
  scored on its own labelled rows only, so classes see different row subsets;
- a class whose labelled rows hold a single label value has no ROC curve. sklearn raises for
  the whole matrix; here that class is *undefined* (NaN), reported by name and left out of
  both means, as docs/metrics.md defines. It is never scored 0.5.

The weighted mean reproduces sklearn's ``average="weighted"`` (weights = positives per class)
restricted to the defined classes; with no NaN and every class defined it is exactly
sklearn's number (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


def _binary_pair(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 scores and labels of the rows with a label (validated)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    keep = ~np.isnan(y)
    s, y = s[keep], y[keep]
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf where a label is given")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN")
    return s, y


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary ROC AUC (sklearn) over the rows whose label is not NaN.

    NaN ("undefined") when those rows hold only positives or only negatives.
    """
    s, y = _binary_pair(scores, labels)
    positives = int((y == 1.0).sum())
    if positives == 0 or positives == y.size:
        return float("nan")
    return float(roc_auc_score(y, s))


def roc_auc_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C) scores and labels (NaN = masked) -> (C,) AUCs, NaN where undefined."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"need matching (N, C) arrays, got {s.shape} and {y.shape}")
    return np.array([roc_auc(s[:, c], y[:, c]) for c in range(s.shape[1])], dtype=np.float64)


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


@dataclass(frozen=True)
class ClassificationAuc:
    """Per-class ROC AUC of a test split and its two means (docs/metrics.md).

    ``per_class`` and ``positives`` follow ``class_names`` order. ``macro`` is the plain mean
    and ``weighted`` the positives-weighted mean, both over the *defined* classes only;
    ``undefined`` names the classes left out (one label value among their labelled rows).
    Both means are NaN when no class is defined.
    """

    class_names: tuple[str, ...]
    per_class: dict[str, float]  # NaN where undefined
    positives: dict[str, int]  # labelled positive rows per class (the weights)
    labelled: dict[str, int]  # rows with a non-NaN label per class
    macro: float
    weighted: float
    undefined: tuple[str, ...]

    def rows(self) -> list[dict[str, object]]:
        """One flat dict per class, ready for a table artifact."""
        return [
            {
                "class": name,
                "auc": self.per_class[name],
                "positives": self.positives[name],
                "labelled": self.labelled[name],
            }
            for name in self.class_names
        ]


def classification_auc(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> ClassificationAuc:
    """ROC AUC per class, macro and positives-weighted means (docs/metrics.md,
    "Classification AUC"), from (N, C) probabilities and (N, C) labels in {0, 1, NaN}.

    Per class, rows with a NaN label are dropped before sklearn's ``roc_auc_score``; the weight
    of class c in ``weighted`` is its number of positive rows, as sklearn's
    ``average="weighted"`` uses (``y_true.sum(axis=0)``).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    names = tuple(class_names)
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"need matching (N, C) arrays, got {p.shape} and {y.shape}")
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} class names for {p.shape[1]} columns")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    auc = roc_auc_per_class(p, y)
    positives = (y == 1.0).sum(axis=0).astype(np.int64)
    labelled = (~np.isnan(y)).sum(axis=0).astype(np.int64)
    defined = ~np.isnan(auc)
    weights = positives[defined]
    weighted = (
        float(np.average(auc[defined], weights=weights)) if weights.sum() > 0 else float("nan")
    )
    return ClassificationAuc(
        class_names=names,
        per_class={n: float(a) for n, a in zip(names, auc, strict=True)},
        positives={n: int(k) for n, k in zip(names, positives, strict=True)},
        labelled={n: int(k) for n, k in zip(names, labelled, strict=True)},
        macro=nanmean_or_nan(auc),
        weighted=weighted,
        undefined=tuple(n for n, d in zip(names, defined, strict=True) if not d),
    )
