"""95 % intervals and paired p-values over test items, by bootstrap (``scipy.stats.bootstrap``).

A study reports every number with an interval over its test images, and every variant against
the baseline with a paired test: both resample the *items* (images, or (image, class) rows), so
a statistic that needs several arrays of one item (scores and labels for an AUC; a variant's
and the baseline's values for a difference) resamples them together (``paired=True``).

scipy computes the resamples and the BCa interval (bias-corrected and accelerated: better than
the plain percentile interval for bounded, skewed statistics such as a pointing game near 1 or
an AUC). What it does not give is a p-value; :func:`paired_difference` reads it off the same
bootstrap distribution of the difference: the smallest two-sided level at which the percentile
interval would exclude 0, ``2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0))`` with the usual +1 correction so
that a finite number of resamples never claims p = 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap as scipy_bootstrap

Statistic = Callable[..., float]
"""A statistic of one or more arrays of the same items (axis 0), e.g. ``np.mean`` or an AUC
of ``(scores, labels)``."""


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A statistic on all items and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """``statistic(a) - statistic(b)`` on the same items, its interval and two-sided p-value."""

    difference: Interval
    p_value: float


def _distribution(
    statistic: Statistic, samples: tuple[np.ndarray, ...], resamples: int, level: float, seed: int
) -> tuple[float, float, float, np.ndarray]:
    """(estimate, low, high, bootstrap distribution) of ``statistic`` over paired items."""
    arrays = tuple(np.asarray(s) for s in samples)
    items = {len(a) for a in arrays}
    if len(items) != 1:
        raise ValueError(f"paired samples need one row per item each, got lengths {sorted(items)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 10:
        raise ValueError(f"resamples must be >= 10, got {resamples}")
    estimate = float(statistic(*arrays))
    if items.pop() < 2:
        return estimate, math.nan, math.nan, np.full(resamples, math.nan)
    with warnings.catch_warnings():
        # A constant bootstrap distribution (every item equal) has no BCa interval; scipy
        # warns and returns NaN, handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*degenerate.*")
        result = scipy_bootstrap(
            arrays,
            statistic,
            n_resamples=resamples,
            paired=True,
            vectorized=False,
            confidence_level=level,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    distribution = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    finite = distribution[np.isfinite(distribution)]
    # Every resample gives the same value (up to rounding: an AUC of 1 may come out as
    # 0.9999999999999998): the interval is that value, where BCa has none.
    if len(finite) and np.ptp(finite) <= 1e-12 * max(1.0, float(np.abs(finite).max())):
        low = high = estimate
    return estimate, low, high, distribution


def bootstrap_interval(
    statistic: Statistic,
    *samples: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int,
) -> Interval:
    """``statistic(*samples)`` with its BCa bootstrap interval over the items (rows) the
    samples share. NaN bounds when fewer than 2 items or when resamples make the statistic
    undefined (an AUC of a resample with one class)."""
    estimate, low, high, _ = _distribution(statistic, samples, resamples, level, seed)
    return Interval(estimate=estimate, low=low, high=high, level=level)


def paired_difference(
    statistic: Statistic,
    a: tuple[np.ndarray, ...],
    b: tuple[np.ndarray, ...],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int,
) -> PairedDifference:
    """``statistic(*a) - statistic(*b)`` where ``a`` and ``b`` hold the same items (a variant
    and the baseline on the same test images), its interval and a two-sided paired bootstrap
    p-value for "no difference"."""
    parts = len(a)
    if len(b) != parts:
        raise ValueError(f"a has {parts} arrays, b {len(b)}: the statistic takes the same inputs")
    return difference_of_statistics(
        lambda *arrays: statistic(*arrays[:parts]),
        lambda *arrays: statistic(*arrays[parts:]),
        *a,
        *b,
        resamples=resamples,
        level=level,
        seed=seed,
    )


def difference_of_statistics(
    statistic_a: Statistic,
    statistic_b: Statistic,
    *samples: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int,
) -> PairedDifference:
    """``statistic_a(*samples) - statistic_b(*samples)`` with its interval and two-sided paired
    bootstrap p-value, both statistics seeing the same resampled items: the general form of
    :func:`paired_difference` (e.g. ``samples`` = item indices into a variant's and the
    baseline's outputs)."""

    def difference(*arrays: np.ndarray) -> float:
        return float(statistic_a(*arrays)) - float(statistic_b(*arrays))

    estimate, low, high, distribution = _distribution(difference, samples, resamples, level, seed)
    finite = distribution[np.isfinite(distribution)]
    if len(finite) == 0:
        p_value = math.nan
    else:
        below = int((finite <= 0).sum())
        above = int((finite >= 0).sum())
        p_value = min(1.0, 2 * (min(below, above) + 1) / (len(finite) + 1))
    return PairedDifference(
        difference=Interval(estimate=estimate, low=low, high=high, level=level), p_value=p_value
    )
