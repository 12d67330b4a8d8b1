"""The study's downstream statistics on cases with known answers: the fast AUC against
sklearn, headline metrics recomputed from per-image outputs, and variants against a baseline."""

import math

import numpy as np
import pytest

from daug_core.evaluation.classification import classification_auc, roc_auc_per_class
from daug_core.evaluation.study_statistics import (
    HEADLINE,
    RunOutputs,
    auc_per_class,
    compare_variants,
    headline,
    metric_value,
    paired_runs,
)

nan = float("nan")


def outputs(rng, n=40, classes=3, signal=0.0, ids=None):
    """Random labels; probabilities = signal * label + noise; APs in [0, 1] where the image
    has the class."""
    labels = (rng.random((n, classes)) < 0.4).astype(float)
    labels[0], labels[1] = 1.0, 0.0  # every class has both values
    probabilities = signal * labels + rng.random((n, classes))
    ap = np.where(
        labels == 1.0, np.clip(0.3 + signal * 0.5 + rng.normal(0, 0.1, labels.shape), 0, 1), nan
    )
    return RunOutputs(
        ids=np.array(ids if ids is not None else [f"d{i:03d}" for i in range(n)]),
        probabilities=probabilities,
        labels=labels,
        x2x_ap=ap,
        r2x_ap=ap * 0.5,
    )


@pytest.mark.parametrize("seed", range(4))
def test_rank_auc_equals_sklearn_with_ties_masks_and_repeated_rows(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((60, 4)), 1)  # many ties
    labels = (rng.random((60, 4)) < 0.3).astype(float)
    labels[rng.random((60, 4)) < 0.2] = nan  # masked
    labels[:, 3] = 1.0  # one label value only: undefined
    rows = rng.integers(0, 60, size=60)  # a bootstrap resample
    for s, y in ((scores, labels), (scores[rows], labels[rows])):
        np.testing.assert_allclose(auc_per_class(s, y), roc_auc_per_class(s, y), atol=1e-12)
    assert math.isnan(auc_per_class(scores, labels)[3])


def test_headline_on_all_images_is_the_evaluation_s_numbers():
    run = outputs(np.random.default_rng(0), signal=0.5)
    expected = classification_auc(run.probabilities, run.labels, ["a", "b", "c"])
    numbers = headline(run)
    assert set(numbers) == set(HEADLINE)
    assert numbers["auc_macro"] == pytest.approx(expected.macro)
    assert numbers["auc_weighted"] == pytest.approx(expected.weighted)
    per_class = np.nanmean(run.x2x_ap, axis=0)
    assert numbers["x2x_map5"] == pytest.approx(per_class.mean())
    assert numbers["x2x_wmap5"] == pytest.approx(np.nanmean(run.x2x_ap))
    assert numbers["r2x_map5"] == pytest.approx(per_class.mean() / 2)
    with pytest.raises(ValueError, match="unknown metric"):
        metric_value(run, "x2x_map10")


def test_outputs_round_trip_and_pair_by_id(tmp_path):
    rng = np.random.default_rng(1)
    run = outputs(rng, n=6)
    run.save(tmp_path / "t.npz")
    back = RunOutputs.load(tmp_path / "t.npz")
    assert back.ids.tolist() == run.ids.tolist()
    np.testing.assert_array_equal(back.x2x_ap, run.x2x_ap)
    other = outputs(rng, n=5, ids=["d005", "d004", "d001", "d000", "zzz"])
    shared, aligned = paired_runs({"a": [run], "b": [other]})
    assert shared.tolist() == ["d000", "d001", "d004", "d005"]
    np.testing.assert_array_equal(aligned["b"][0].labels[0], other.labels[3])
    np.testing.assert_array_equal(aligned["a"][0].labels[3], run.labels[5])
    with pytest.raises(ValueError, match="share 1 test images"):
        paired_runs({"a": [run], "b": [outputs(rng, n=3, ids=["d000", "x", "y"])]})
    with pytest.raises(ValueError, match="repeat"):
        RunOutputs(
            ids=np.array(["a", "a"]),
            probabilities=np.zeros((2, 1)),
            labels=np.zeros((2, 1)),
            x2x_ap=np.zeros((2, 1)),
            r2x_ap=np.zeros((2, 1)),
        )


def test_a_copy_of_the_baseline_differs_by_zero_and_a_better_variant_is_detected():
    rng = np.random.default_rng(2)
    base = [outputs(rng, n=80), outputs(rng, n=80)]
    better = [outputs(rng, n=80, signal=1.0), outputs(rng, n=80, signal=1.0)]
    rows = compare_variants(
        {"baseline": base, "copy": list(base), "better": better},
        "baseline",
        metrics=("auc_macro", "x2x_map5"),
        resamples=400,
        seed=0,
    )
    by = {(r["variant"], r["metric"]): r for r in rows}
    assert len(rows) == 6
    baseline = by["baseline", "auc_macro"]
    assert math.isnan(baseline["p_value"]) and baseline["images"] == 80 and baseline["seeds"] == 2
    assert baseline["estimate"] == pytest.approx(np.mean([headline(b)["auc_macro"] for b in base]))
    assert baseline["low"] < baseline["estimate"] < baseline["high"]
    copy = by["copy", "auc_macro"]
    assert copy["difference"] == 0.0 and copy["p_value"] == 1.0
    for metric in ("auc_macro", "x2x_map5"):
        row = by["better", metric]
        assert row["difference"] > 0 and row["difference_low"] > 0, metric
        assert row["p_value"] < 0.01, metric
    with pytest.raises(ValueError, match="baseline"):
        compare_variants({"a": base}, "b", seed=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        compare_variants({"a": base}, "a", metrics=("auc",), seed=0)
