"""The ablation grids: ours and the official code's classification / retrieval grids set the
heatmap mode and the hybrid-loss weight of every row as its config files do."""

from __future__ import annotations

import pytest

from daug_core.contrastive.presets import ClipTrainSettings
from flows.ablation_grids import GRIDS, grid_variants, variant_settings
from tests.factories import run_daug as daug

# (name, heatmap mode, w) of each official config, daug/configs/abl/*.yaml of drjinying/DAug.
OFFICIAL = {
    "classification": [
        ("cls_baseline", "none", 0.0),
        ("cls_daug", "channel", 0.0),
        ("cls_hcontra", "none", 0.7),
        ("cls_all", "channel", 0.7),
    ],
    "retrieval": [
        ("retrieval_baseline", "none", 1.0),
        ("retrieval_daug", "channel", 1.0),
        ("retrieval_hcontra", "none", 0.8),
        ("retrieval_all", "channel", 0.8),
    ],
}


def _trained(variant, training=ClipTrainSettings(), seed=3):
    config = variant_settings(training, variant, seed).config()
    return config.model.heatmap_mode, config.loss.weight, config.training.seed


@pytest.mark.parametrize("grid", ["classification", "retrieval"])
def test_official_grids_train_each_row_with_its_configs_mode_and_weight(grid):
    variants = grid_variants(grid, None, ClipTrainSettings(preset="paper"))
    rows = [(v.name, *_trained(v, ClipTrainSettings(preset="paper"))[:2]) for v in variants]
    assert rows == OFFICIAL[grid]
    # w = 0: the class loss alone (the official classification baseline), seed per run.
    assert _trained(variants[0], seed=7)[2] == 7


def test_ours_uses_w_1_without_the_hybrid_loss_and_the_settings_w_with_it():
    default = {v.name: _trained(v)[:2] for v in grid_variants("ours", None, ClipTrainSettings())}
    assert default == {
        "baseline": ("none", 1.0),
        "daug": ("channel", 1.0),
        "hybrid": ("none", 0.7),  # the tiny preset's w
        "daug+hybrid": ("channel", 0.7),
    }
    chosen = grid_variants("ours", ["daug+hybrid", "baseline"], ClipTrainSettings(weight=0.55))
    assert [v.name for v in chosen] == ["baseline", "daug+hybrid"]  # the grid's order
    assert [_trained(v, ClipTrainSettings(weight=0.55))[1] for v in chosen] == [1.0, 0.55]


@pytest.mark.parametrize(
    ("grid", "names", "weight", "message"),
    [
        ("classification", ["baseline"], None, "among ['cls_baseline'"),
        ("ours", ["cls_all"], None, "among ['baseline'"),
        ("ours", [], None, "variants must be among"),
        ("retrieval", None, 0.5, "fixes w per row"),
        ("tables", None, None, "grid must be one of"),
    ],
)
def test_a_variant_outside_the_grid_or_a_weight_it_would_ignore_is_refused(
    grid, names, weight, message
):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        grid_variants(grid, names, ClipTrainSettings(weight=weight))


def test_every_grid_has_four_distinct_rows_of_the_2x2_design():
    for variants in GRIDS.values():
        assert len({v.name for v in variants}) == 4
        assert [v.mode for v in variants] == ["none", "channel", "none", "channel"]


def test_the_cli_refuses_a_weight_for_an_official_grid_before_starting(tmp_path):
    store = tmp_path / "missing-store"
    result = daug(
        "ablate",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "out"),
        "--grid",
        "classification",
        "--weight",
        "0.5",
    )
    assert result.returncode == 2 and "fixes w per row" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_heatmap_modes_repeat_the_heatmap_rows_only():
    variants = grid_variants("retrieval", None, ClipTrainSettings(), ("append", "channel"))
    assert [(v.name, v.mode, v.weight) for v in variants] == [
        ("retrieval_baseline", "none", 1.0),
        ("retrieval_daug-append", "append", 1.0),
        ("retrieval_daug", "channel", 1.0),
        ("retrieval_hcontra", "none", 0.8),
        ("retrieval_all-append", "append", 0.8),
        ("retrieval_all", "channel", 0.8),
    ]
    for modes in ((), ("channel", "channel"), ("none",), ("stacked",)):
        with pytest.raises(ValueError, match="modes must be distinct"):
            grid_variants("ours", None, ClipTrainSettings(), modes)
