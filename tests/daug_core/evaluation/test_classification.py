"""ROC AUC (sklearn-backed) with NaN labels and undefined classes, against hand-computed cases,
a pair-counting reference and sklearn's own multi-label averages; per-class accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from daug_core.evaluation.classification import (
    accuracy_per_class,
    classification_auc,
    nanmean_or_nan,
    roc_auc,
    roc_auc_per_class,
)

nan = float("nan")


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


def test_nan_labels_are_ignored_and_single_class_is_undefined_not_half():
    assert roc_auc([0.1, 0.9, 0.3], [0, 1, nan]) == 1.0
    # The NaN row would otherwise be the only wrongly ranked one.
    assert roc_auc([0.1, 0.9, 0.95], [0, 1, nan]) == 1.0
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(roc_auc([0.1, 0.2], [nan, 0]))
    assert math.isnan(roc_auc([0.1, 0.2], [nan, nan]))
    with pytest.raises(ValueError, match="labels must be"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([nan, 0.2], [0, 1])
    assert roc_auc([nan, 0.2, 0.3], [nan, 0, 1]) == 1.0  # a score without a label is unused


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_and_pair_counting_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=60).astype(float)
    labels = rng.integers(0, 2, size=60).astype(float)
    got = roc_auc(scores, labels)
    assert got == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-15)


def test_per_class_and_accuracy():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6]])
    labels = np.array([[1, 0], [0, 0], [1, nan]])
    auc = roc_auc_per_class(scores, labels)
    assert auc[0] == 1.0 and math.isnan(auc[1])
    np.testing.assert_allclose(accuracy_per_class(scores, labels), [1.0, 0.5])
    assert nanmean_or_nan(auc) == 1.0
    assert math.isnan(nanmean_or_nan(np.array([nan])))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        roc_auc_per_class(scores, labels[:, :1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_classification_auc_equals_sklearn_averages_when_every_class_is_defined(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((80, 5)) < [0.1, 0.3, 0.5, 0.7, 0.2]).astype(float)
    labels[0], labels[1] = 1.0, 0.0  # every class has both values
    probs = np.clip(labels * 0.3 + rng.random((80, 5)) * 0.7, 0, 1)
    probs[:10] = np.round(probs[:10], 1)  # some ties
    names = [f"c{i}" for i in range(5)]
    result = classification_auc(probs, labels, names)
    np.testing.assert_allclose(
        list(result.per_class.values()), roc_auc_score(labels, probs, average=None), atol=1e-15
    )
    assert result.macro == pytest.approx(roc_auc_score(labels, probs, average="macro"), abs=1e-15)
    assert result.weighted == pytest.approx(
        roc_auc_score(labels, probs, average="weighted"), abs=1e-15
    )
    assert result.undefined == ()
    assert list(result.positives.values()) == labels.sum(axis=0).astype(int).tolist()


def test_classification_auc_hand_case_with_nan_and_undefined_class():
    #            A     B    C (only positives among labelled rows: undefined)
    probs = np.array(
        [
            [0.9, 0.2, 0.5],
            [0.8, 0.7, 0.4],
            [0.3, 0.6, 0.3],
            [0.1, 0.1, 0.2],
            [0.5, 0.9, 0.1],
        ]
    )
    labels = np.array(
        [
            [1, 0, 1],
            [0, 1, 1],
            [1, nan, nan],
            [0, 0, 1],
            [nan, 1, nan],
        ]
    )
    result = classification_auc(probs, labels, ["A", "B", "C"])
    # A: positives {0.9, 0.3}, negatives {0.8, 0.1}: pairs 0.9>0.8, 0.9>0.1, 0.3<0.8, 0.3>0.1.
    assert result.per_class["A"] == pytest.approx(3 / 4)
    # B: positives {0.7, 0.9}, negatives {0.2, 0.1}: every pair ordered.
    assert result.per_class["B"] == 1.0
    assert math.isnan(result.per_class["C"])
    assert result.undefined == ("C",)
    assert result.positives == {"A": 2, "B": 2, "C": 3}
    assert result.labelled == {"A": 4, "B": 4, "C": 3}
    assert result.macro == pytest.approx((0.75 + 1.0) / 2)
    assert result.weighted == pytest.approx((0.75 * 2 + 1.0 * 2) / 4)
    rows = result.rows()
    assert [r["class"] for r in rows] == ["A", "B", "C"] and rows[0]["positives"] == 2


def test_classification_auc_weights_by_positives_not_by_rows():
    # A: 1 positive, AUC 1; B: 3 positives, AUC 0 -> weighted (1*1 + 0*3) / 4 = 0.25.
    probs = np.array([[0.9, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.9]])
    labels = np.array([[1, 1], [0, 1], [0, 1], [0, 0]])
    result = classification_auc(probs, labels, ["A", "B"])
    assert (result.per_class["A"], result.per_class["B"]) == (1.0, 0.0)
    assert result.macro == 0.5
    assert result.weighted == pytest.approx(0.25)


def test_classification_auc_all_undefined_and_bad_input():
    result = classification_auc(np.array([[0.2], [0.4]]), np.array([[1.0], [1.0]]), ["A"])
    assert math.isnan(result.macro) and math.isnan(result.weighted)
    assert result.undefined == ("A",)
    with pytest.raises(ValueError, match="class names"):
        classification_auc(np.zeros((2, 2)), np.zeros((2, 2)), ["A"])
    with pytest.raises(ValueError, match="repeat"):
        classification_auc(np.zeros((2, 2)), np.zeros((2, 2)), ["A", "A"])
