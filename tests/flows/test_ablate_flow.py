"""The ablation flow: a 2 x 2 grid (variants x seeds) of one-epoch runs run two at a time;
summary statistics, files, skip-on-rerun and reproducibility of a redone run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from daug_core.contrastive.presets import ClipTrainSettings
from flows.ablate import ablate_flow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_grid_summary_files_and_a_reproducible_rerun(contrastive_store, tmp_path):
    args = {
        "store": str(contrastive_store),
        "out": str(tmp_path / "ablation"),
        "seeds": [0, 1],
        "variants": ["baseline", "daug+hybrid"],
        "training": ClipTrainSettings(epochs=1),
    }
    result = ablate_flow(**args)
    out = tmp_path / "ablation"
    runs = pd.read_csv(out / "ablation_runs.csv")
    assert sorted(zip(runs["variant"], runs["seed"], strict=True)) == [
        ("baseline", 0),
        ("baseline", 1),
        ("daug+hybrid", 0),
        ("daug+hybrid", 1),
    ]
    summary = pd.read_csv(out / "ablation.csv", index_col="variant")
    assert list(summary.index) == ["baseline", "daug+hybrid"]  # paper order
    for variant, group in runs.groupby("variant"):
        assert summary.loc[variant, "mean_auc_macro"] == pytest.approx(group["auc_macro"].mean())
        assert summary.loc[variant, "std_x2x_map5"] == pytest.approx(group["x2x_map5"].std())
        assert summary.loc[variant, "runs"] == 2
    markdown = (out / "RESULTS.md").read_text()
    assert "| baseline |" in markdown and "±" in markdown and result["runs"] == 4
    assert (out / "ablation.png").stat().st_size > 2000
    config = json.loads((out / "daug+hybrid" / "seed-1" / "train.json").read_text())["config"]
    assert config["loss"]["weight"] == 0.7 and config["model"]["heatmap_mode"] == "channel"
    baseline = json.loads((out / "baseline" / "seed-0" / "train.json").read_text())["config"]
    assert baseline["loss"]["weight"] == 1.0 and baseline["model"]["heatmap_mode"] == "none"

    # A rerun skips finished runs; a deleted run is redone with the same numbers.
    first = runs.set_index(["variant", "seed"])
    shutil.rmtree(out / "daug+hybrid" / "seed-1")
    ablate_flow(**args)
    again = pd.read_csv(out / "ablation_runs.csv").set_index(["variant", "seed"])
    pd.testing.assert_frame_equal(again, first)


def test_unknown_variant_is_refused(contrastive_store, tmp_path):
    with pytest.raises(ValueError, match="variants must be among"):
        ablate_flow(store=str(contrastive_store), out=str(tmp_path), variants=["bogus"])


def test_the_official_classification_grid_runs_with_its_weights(contrastive_store, tmp_path):
    """Issue 15's check at tiny size: the official classification grid's baseline (w = 0, the
    class loss alone, no heatmap) and full row (w = 0.7, the +No Finding heatmap) train and
    are evaluated; the official preset's own switches (train + validate, last epoch) apply."""
    result = ablate_flow(
        store=str(contrastive_store),
        out=str(tmp_path / "cls"),
        seeds=[0],
        variants=["cls_baseline", "cls_all"],
        grid="classification",
        training=ClipTrainSettings(epochs=1, train_splits="train+validate", model_selection="last"),
    )
    assert result["runs"] == 2
    runs = pd.read_csv(tmp_path / "cls" / "ablation_runs.csv").set_index("variant")
    assert runs.loc["cls_baseline", "w"] == 0.0 and runs.loc["cls_all", "w"] == 0.7
    assert runs["auc_macro"].between(0.0, 1.0).all()
    for variant, mode in (("cls_baseline", "none"), ("cls_all", "channel")):
        train = json.loads((tmp_path / "cls" / variant / "seed-0" / "train.json").read_text())
        assert train["config"]["model"]["heatmap_mode"] == mode
        assert train["config"]["training"]["train_splits"] == "train+validate"
