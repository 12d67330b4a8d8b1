"""The rank-based AUC and per-class accuracy against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daug_core.metrics import (
    accuracy_per_class,
    average_ranks,
    nanmean_or_nan,
    roc_auc,
    roc_auc_per_class,
)


def pairwise_auc(scores, labels):
    """P(pos > neg) + 0.5 P(pos == neg), by counting all pairs."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_hand_computed_cases():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # Ties across classes count one half: pairs (0.5|0.5)=.5, (0.5|0.2)=1, (0.9|0.5)=1, (0.9|0.2)=1.
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)


def test_nan_labels_are_ignored_and_single_class_is_undefined():
    assert roc_auc([0.1, 0.9, 0.3], [0, 1, float("nan")]) == 1.0
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(roc_auc([0.1, 0.2], [float("nan"), 0]))
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [0, 2])


def test_matches_pairwise_count_with_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)
    labels = rng.integers(0, 2, size=60).astype(float)
    assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_average_ranks():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_per_class_and_accuracy():
    nan = float("nan")
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]])
    labels = np.array([[1, 0], [0, 0], [1, nan]])
    auc = roc_auc_per_class(scores, labels)
    assert auc[0] == 1.0 and math.isnan(auc[1])
    np.testing.assert_allclose(accuracy_per_class(scores, labels), [1.0, 0.5])
    assert nanmean_or_nan(auc) == 1.0
    assert math.isnan(nanmean_or_nan(np.array([nan])))
