"""The study's downstream numbers with intervals over test images (``daug study``).

Each evaluated run keeps its per-test-image outputs (:class:`RunOutputs`): classification
probabilities and labels, and the AP@5 of every (query, class) for image→image and
report→image retrieval. From those every headline metric of a results table can be recomputed
on any multiset of test images, which is what a bootstrap over test images needs:

- a variant's metric is the **mean over its seeds** of the metric on the same resampled
  images (seeds are averaged inside the statistic, so the interval covers the test-set
  sampling of the seed-averaged number a results table shows);
- a variant and the baseline are compared **paired**: both statistics see the same resampled
  images, and the p-value is read off the bootstrap distribution of the difference
  (:func:`daug_core.evaluation.bootstrap.difference_of_statistics`).

Runs are paired by image id: only the test images every run evaluated are used (a run with
heatmaps leaves out an image whose heatmap failed; the baseline does not need one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from daug_core.evaluation.bootstrap import bootstrap_interval, difference_of_statistics
from daug_core.evaluation.retrieval import class_means

HEADLINE: tuple[str, ...] = (
    "auc_macro",
    "auc_weighted",
    "x2x_map5",
    "x2x_wmap5",
    "r2x_map5",
    "r2x_wmap5",
)


@dataclass(frozen=True, kw_only=True, eq=False)
class RunOutputs:
    """One evaluated run's outputs per test image, rows in ``ids`` order."""

    ids: np.ndarray  # (N,) image ids (str)
    probabilities: np.ndarray  # (N, C)
    labels: np.ndarray  # (N, C): 0, 1 or NaN (masked)
    x2x_ap: np.ndarray  # (N, C): AP@5 of the image query for class c, NaN if it lacks c
    r2x_ap: np.ndarray  # (N, C): the same with the report as the query

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("probabilities", "labels", "x2x_ap", "r2x_ap"):
            array = getattr(self, name)
            if array.ndim != 2 or array.shape[0] != n:
                raise ValueError(f"RunOutputs.{name} must be ({n}, C), got {array.shape}")
        if len(set(self.ids.tolist())) != n:
            raise ValueError("RunOutputs.ids repeat")

    def save(self, path: Path) -> None:
        """Write as one ``.npz`` (via a temporary name, then renamed: never half-written)."""
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(
            partial,
            ids=self.ids.astype(str),
            probabilities=self.probabilities,
            labels=self.labels,
            x2x_ap=self.x2x_ap,
            r2x_ap=self.r2x_ap,
        )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunOutputs:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in data.files})

    def rows(self, ids: np.ndarray) -> RunOutputs:
        """These outputs on the images ``ids`` (all of them present), in that order."""
        position = {image: i for i, image in enumerate(self.ids.tolist())}
        missing = [image for image in ids.tolist() if image not in position]
        if missing:
            raise KeyError(f"{len(missing)} ids not among the outputs, e.g. {missing[0]}")
        index = np.array([position[image] for image in ids.tolist()], dtype=np.int64)
        return RunOutputs(
            ids=self.ids[index],
            probabilities=self.probabilities[index],
            labels=self.labels[index],
            x2x_ap=self.x2x_ap[index],
            r2x_ap=self.r2x_ap[index],
        )


def auc_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C) -> (C,) ROC AUC by ranks (Mann-Whitney, ties counted half): equal to sklearn's
    on the rows with a label, NaN where those rows hold one label value. Fast enough to run
    thousands of times inside a bootstrap."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"need matching (N, C) arrays, got {s.shape} and {y.shape}")
    out = np.full(s.shape[1], np.nan)
    masked = np.asarray(np.isnan(y).any(axis=0))
    ranks = rankdata(s, axis=0)
    for c in range(s.shape[1]):
        if masked[c]:
            keep = ~np.isnan(y[:, c])
            column_ranks, positive = rankdata(s[keep, c]), y[keep, c] == 1.0
        else:
            column_ranks, positive = ranks[:, c], y[:, c] == 1.0
        p = int(positive.sum())
        n = len(positive) - p
        if p and n:
            out[c] = (column_ranks[positive].sum() - p * (p + 1) / 2) / (p * n)
    return out


def metric_value(outputs: RunOutputs, metric: str, rows: np.ndarray | None = None) -> float:
    """One headline metric of a run on the test images ``rows`` (indices, repeats allowed; all
    when None): ``auc_macro`` / ``auc_weighted`` (positives-weighted) over the defined classes,
    ``x2x_map5`` / ``r2x_map5`` (official convention: classes without a query count 0) and
    ``x2x_wmap5`` / ``r2x_wmap5``."""
    pick = slice(None) if rows is None else rows
    if metric in ("auc_macro", "auc_weighted"):
        labels = outputs.labels[pick]
        auc = auc_per_class(outputs.probabilities[pick], labels)
        defined = ~np.isnan(auc)
        if metric == "auc_macro":
            return float(auc[defined].mean()) if defined.any() else float("nan")
        weights = (labels == 1.0).sum(axis=0)[defined]
        return float(np.average(auc[defined], weights=weights)) if weights.sum() else float("nan")
    direction, _, mean = metric.partition("_")
    if direction not in ("x2x", "r2x") or mean not in ("map5", "wmap5"):
        raise ValueError(f"unknown metric {metric!r}; known: {list(HEADLINE)}")
    means = class_means(outputs.x2x_ap[pick] if direction == "x2x" else outputs.r2x_ap[pick])
    return means.map_official if mean == "map5" else means.wmap


def headline(outputs: RunOutputs, rows: np.ndarray | None = None) -> dict[str, float]:
    """Every headline metric (:func:`metric_value`) of one run on the test images ``rows``."""
    return {metric: metric_value(outputs, metric, rows) for metric in HEADLINE}


def paired_runs(
    runs: Mapping[str, Sequence[RunOutputs]],
) -> tuple[np.ndarray, dict[str, list[RunOutputs]]]:
    """The test images every run evaluated (sorted) and every run restricted to them."""
    if not runs or any(not seeds for seeds in runs.values()):
        raise ValueError("every variant needs at least one evaluated run")
    common: set[str] | None = None
    for seeds in runs.values():
        for outputs in seeds:
            ids = set(outputs.ids.tolist())
            common = ids if common is None else common & ids
    shared = np.array(sorted(common or ()), dtype=str)
    if len(shared) < 2:
        raise ValueError(f"the runs share {len(shared)} test images; a bootstrap needs >= 2")
    return shared, {name: [o.rows(shared) for o in seeds] for name, seeds in runs.items()}


def _seed_mean(seeds: Sequence[RunOutputs], metric: str) -> Callable[[np.ndarray], float]:
    def statistic(rows: np.ndarray) -> float:
        return float(np.mean([metric_value(outputs, metric, rows) for outputs in seeds]))

    return statistic


def compare_variants(
    runs: Mapping[str, Sequence[RunOutputs]],
    baseline: str,
    *,
    metrics: Sequence[str] = HEADLINE,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per (variant, metric): the seed-averaged metric on the shared test images with
    its BCa interval, and for every variant but ``baseline`` the paired difference to it with
    its interval and two-sided bootstrap p-value (NaN for the baseline itself). Every
    statistic resamples the same images (one ``seed``)."""
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not among the variants {list(runs)}")
    unknown = sorted(set(metrics) - set(HEADLINE))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(HEADLINE)}")
    shared, aligned = paired_runs(runs)
    items = np.arange(len(shared))
    options: dict[str, Any] = {"resamples": resamples, "level": level, "seed": seed}
    rows = []
    for name, seeds in aligned.items():
        for metric in metrics:
            statistic = _seed_mean(seeds, metric)
            value = bootstrap_interval(statistic, items, **options)
            row = {
                "variant": name,
                "metric": metric,
                "seeds": len(seeds),
                "images": len(shared),
                "estimate": value.estimate,
                "low": value.low,
                "high": value.high,
                "difference": float("nan"),
                "difference_low": float("nan"),
                "difference_high": float("nan"),
                "p_value": float("nan"),
            }
            if name != baseline:
                versus = difference_of_statistics(
                    statistic, _seed_mean(aligned[baseline], metric), items, **options
                )
                row |= {
                    "difference": versus.difference.estimate,
                    "difference_low": versus.difference.low,
                    "difference_high": versus.difference.high,
                    "p_value": versus.p_value,
                }
            rows.append(row)
    return rows
