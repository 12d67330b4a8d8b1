"""StudySettings: the study's grids and modes, refused when unknown or repeated."""

import pytest

from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.settings import ConfigError
from flows.ablation_grids import grid_variants
from flows.study_settings import STUDY_PREVALENCES, StudySettings


def test_ours_runs_every_mode_and_the_official_grids_run_channel():
    study = StudySettings()
    assert study.grid_names == ("ours", "classification", "retrieval")
    names = {
        grid: [v.name for v in grid_variants(grid, None, ClipTrainSettings(), study.modes_of(grid))]
        for grid in study.grid_names
    }
    assert names["ours"] == [
        "baseline",
        "daug",
        "daug-add",
        "daug-append",
        "hybrid",
        "daug+hybrid",
        "daug+hybrid-add",
        "daug+hybrid-append",
    ]
    assert names["classification"] == ["cls_baseline", "cls_daug", "cls_hcontra", "cls_all"]
    assert dict(STUDY_PREVALENCES)["Lung Lesion"] == 0.13


@pytest.mark.parametrize(
    "bad",
    [
        {"grids": ("ours", "ours")},
        {"grids": ("mine",)},
        {"grids": ()},
        {"heatmap_modes": ("none",)},
        {"studies": 0},
        {"epochs": 0},
        {"resamples": 5},
    ],
)
def test_bad_study_settings_are_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        StudySettings(**bad)
