"""Heatmap scoring on hand-made heatmaps and masks whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from daug_core.labels import CHEXPERT_LABELS
from flows.quality.scoring import (
    ItemKind,
    ScoringInputError,
    compare_summaries,
    failures_of,
    other_lesions_mask,
    paired_comparison,
    scorable_indices,
    score_heatmap_version,
    score_item,
    scores_table,
    summarise_scores,
    target_mask,
)
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic.ground_truth import GroundTruthMasks, MaskStore
from tests.factories import fake_heatmap_provenance

S = 16
CH = {name: i for i, name in enumerate(CHEXPERT_LABELS)}


def masks_with(**squares: tuple[int, int, int, int]) -> np.ndarray:
    """(14, S, S) uint8 with a rectangle (y0, y1, x0, x1) per named channel."""
    masks = np.zeros((len(CHEXPERT_LABELS), S, S), dtype=np.uint8)
    for key, (y0, y1, x0, x1) in squares.items():
        masks[CH[key.replace("_", " ")], y0:y1, x0:x1] = 1
    return masks


PLEURAL_AND_HEART = masks_with(Pleural_Effusion=(2, 6, 2, 6), Cardiomegaly=(10, 14, 10, 14))


def peak_at(y: int, x: int) -> np.ndarray:
    heat = np.full((S, S), 0.1)
    heat[y, x] = 1.0
    return heat


def one(target: str, heat: np.ndarray, masks: np.ndarray = PLEURAL_AND_HEART, **kw):
    (score,) = score_item("img", heat[None], [target], masks, **kw)
    return score


def test_target_mask_unions_the_super_class_members():
    masks = masks_with(Pleural_Effusion=(0, 2, 0, 2), Pleural_Other=(5, 6, 5, 6))
    pleural = target_mask(masks, "Pleural")
    assert pleural.sum() == 4 + 1 and pleural[5, 5] and pleural[0, 0]
    assert not target_mask(masks, "Parenchymal").any()
    heart = masks_with(Cardiomegaly=(0, 1, 0, 3), Enlarged_Cardiomediastinum=(4, 5, 0, 1))
    assert target_mask(heart, "Cardiomediastinal").sum() == 4


def test_no_finding_is_the_union_of_all_fourteen_channels():
    masks = masks_with(Fracture=(0, 1, 0, 1), Lung_Opacity=(3, 4, 3, 4), Edema=(8, 9, 8, 10))
    union = target_mask(masks, "No Finding")
    assert union.sum() == 1 + 1 + 2
    assert not other_lesions_mask(masks, "No Finding").any()
    # Fracture and Lung Opacity belong to no super-class: they are "other" lesions for all.
    assert other_lesions_mask(masks, "Parenchymal").sum() == 2
    with pytest.raises(ScoringInputError, match="Pleura"):
        target_mask(masks, "Pleura")
    with pytest.raises(ScoringInputError, match=r"\(14, S, S\)"):
        target_mask(masks[:7], "Pleural")


def test_a_peak_inside_the_mask_hits_and_outside_misses():
    assert one("-Pleural", peak_at(3, 3)).hit == 1.0
    assert one("-Pleural", peak_at(12, 12)).hit == 0.0
    assert one("-Cardiomediastinal", peak_at(12, 12)).hit == 1.0
    assert one("+No Finding", peak_at(12, 12)).hit == 1.0  # every lesion is its target


def test_the_tolerance_dilates_the_mask():
    near = peak_at(7, 3)  # two rows below the pleural square (rows 2..5)
    assert one("-Pleural", near).hit == 1.0  # default tolerance 2 px
    assert one("-Pleural", near, tolerance=1).hit == 0.0
    assert one("-Pleural", near, tolerance=0).hit == 0.0


def test_a_flat_heatmap_points_at_nothing():
    score = one("-Pleural", np.full((S, S), 0.3))
    assert score.hit == 0.0 and score.mass_inside == pytest.approx(16 / 256)


def test_shares_add_up_and_have_the_known_values():
    heat = np.zeros((S, S))
    heat[2:6, 2:6] = 1.0  # 16 on the pleural lesion
    heat[10:14, 10:14] = 1.0  # 16 on the heart
    heat[0, 8:16] = 0.5  # 4 on healthy tissue
    score = one("-Pleural", heat)
    assert score.kind == ItemKind.LESION
    assert score.on_target_share == pytest.approx(16 / 36)
    assert score.off_target_share == pytest.approx(16 / 36)
    assert score.healthy_share == pytest.approx(4 / 36)
    total = score.on_target_share + score.off_target_share + score.healthy_share
    assert total == pytest.approx(1.0)
    assert score.mass_inside == pytest.approx(16 / 36)
    assert score.energy == pytest.approx(36 / 256)
    assert score.lesion_pixels == 16
    assert score.specificity == pytest.approx(0.5)  # as much heat on the heart as on it
    no_finding = one("+No Finding", heat)
    assert no_finding.on_target_share == pytest.approx(32 / 36)
    assert no_finding.off_target_share == 0.0
    assert math.isnan(no_finding.specificity)  # every lesion is its target: no other one


def test_specificity_is_the_targets_share_of_the_heat_on_lesions():
    """An image with a pleural lesion and an enlarged heart: heat on both, on one, on none."""
    heat = np.zeros((S, S))
    heat[2:6, 2:6] = 0.75  # 12 on the pleural lesion
    heat[10:14, 10:14] = 0.25  # 4 on the heart
    heat[0, :] = 1.0  # 16 on healthy tissue: not part of specificity
    assert one("-Pleural", heat).specificity == pytest.approx(12 / 16)
    assert one("-Cardiomediastinal", heat).specificity == pytest.approx(4 / 16)
    only_pleural = np.where(target_mask(PLEURAL_AND_HEART, "Pleural"), 1.0, 0.0)
    assert one("-Pleural", only_pleural).specificity == 1.0
    assert one("-Cardiomediastinal", only_pleural).specificity == 0.0
    healthy_heat = np.zeros((S, S))
    healthy_heat[0, 0] = 1.0
    assert math.isnan(one("-Pleural", healthy_heat).specificity)  # no heat on any lesion
    pleural_only = masks_with(Pleural_Effusion=(2, 6, 2, 6))
    assert math.isnan(one("-Pleural", heat, pleural_only).specificity)  # no other lesion


def test_chance_specificity_is_the_lesion_area_share_whatever_the_heat():
    """What uniform heat scores: a 4 x 4 pleural lesion beside an 8 x 8 heart."""
    masks = masks_with(Pleural_Effusion=(2, 6, 2, 6), Cardiomegaly=(8, 16, 8, 16))
    for heat in (peak_at(3, 3), peak_at(12, 12), np.ones((S, S))):
        assert one("-Pleural", heat, masks).chance_specificity == pytest.approx(16 / 80)
        assert one("-Cardiomediastinal", heat, masks).chance_specificity == pytest.approx(64 / 80)
    uniform = one("-Pleural", np.ones((S, S)), masks)
    assert uniform.specificity == pytest.approx(uniform.chance_specificity)
    pleural_only = masks_with(Pleural_Effusion=(2, 6, 2, 6))
    assert math.isnan(one("-Pleural", peak_at(3, 3), pleural_only).chance_specificity)


def test_pixel_auroc_is_one_for_the_mask_itself_and_zero_for_its_inverse():
    mask = target_mask(PLEURAL_AND_HEART, "Pleural").astype(float)
    assert one("-Pleural", mask).pixel_auroc == pytest.approx(1.0)
    assert one("-Pleural", 1.0 - mask).pixel_auroc == pytest.approx(0.0)


def test_kinds_healthy_and_other():
    heat = peak_at(3, 3)
    healthy = one("-Pleural", heat, np.zeros_like(PLEURAL_AND_HEART))
    assert healthy.kind == ItemKind.HEALTHY and healthy.energy == pytest.approx(heat.mean())
    assert math.isnan(healthy.hit) and math.isnan(healthy.off_target_share)
    heart_only = masks_with(Cardiomegaly=(10, 14, 10, 14))
    on_heart = np.zeros((S, S))
    on_heart[10:14, 10:14] = 1.0
    on_heart[0, 0:4] = 1.0
    other = one("-Pleural", on_heart, heart_only)
    assert other.kind == ItemKind.OTHER
    assert other.off_target_share == pytest.approx(16 / 20)
    assert other.healthy_share == pytest.approx(4 / 20)
    assert math.isnan(other.hit) and math.isnan(other.pixel_auroc)


def test_targets_are_parsed_and_a_non_finite_heatmap_is_a_failed_row():
    heat = np.stack([peak_at(3, 3), np.full((S, S), np.nan)])
    good, bad = score_item("img", heat, ["-pleural", "+No Finding"], PLEURAL_AND_HEART)
    assert good.target == "-Pleural" and good.kind == ItemKind.LESION
    assert bad.kind == ItemKind.FAILED and bad.reason.startswith("heatmap_not_finite")
    with pytest.raises(ScoringInputError, match="one map per target"):
        score_item("img", heat, ["+No Finding"], PLEURAL_AND_HEART)
    with pytest.raises(ScoringInputError, match="px"):
        score_item("img", heat[:, :8, :8], ["-Pleural", "+No Finding"], PLEURAL_AND_HEART)


def test_summary_per_target():
    full = np.ones((len(CHEXPERT_LABELS), S, S), dtype=np.uint8)  # AUROC undefined
    scores = [
        *score_item("a", peak_at(3, 3)[None], ["-Pleural"], PLEURAL_AND_HEART),
        *score_item("b", peak_at(12, 12)[None], ["-Pleural"], PLEURAL_AND_HEART),
        *score_item("c", peak_at(1, 1)[None], ["-Pleural"], full),
        *score_item("d", np.full((1, S, S), 0.25), ["-Pleural"], np.zeros_like(full)),
        *score_item("e", np.full((1, S, S), 0.75), ["-Pleural"], np.zeros_like(full)),
    ]
    table = scores_table(scores)
    summary = summarise_scores(table).set_index("target").loc["-Pleural"]
    assert summary["n_lesion"] == 3 and summary["pointing_game"] == pytest.approx(2 / 3)
    assert summary["n_auroc"] == 2
    aurocs = table.loc[table["dicom_id"].isin(["a", "b"]), "pixel_auroc"]
    assert summary["pixel_auroc"] == pytest.approx(aurocs.mean())
    assert summary["n_healthy"] == 2 and summary["healthy_energy"] == pytest.approx(0.5)
    assert summary["n_failed"] == 0
    # a and b have the heart's lesion too: 0.1 everywhere and a 1.0 peak on the pleural lesion
    # (a: 2.5 of its 4.1 on lesions) or on the heart (b: 1.6 of 4.1); c's masks are all one.
    assert summary["n_specificity"] == 2 and summary["specificity"] == pytest.approx(0.5)
    assert summary["chance_specificity"] == pytest.approx(0.5)  # two 4 x 4 lesions
    empty = summarise_scores(table, ["-Pleural", "+No Finding"]).set_index("target")
    assert empty.loc["+No Finding", "n_lesion"] == 0
    assert math.isnan(empty.loc["+No Finding", "pointing_game"])


def test_paired_comparison_pairs_the_same_images_and_brackets_the_difference():
    rng = np.random.default_rng(0)
    pleural_heat = np.zeros((S, S))
    pleural_heat[2:6, 2:6] = 1.0
    heart_heat = np.zeros((S, S))
    heart_heat[10:14, 10:14] = 1.0
    # 30 images: the guided heatmaps mark the pleural lesion on 27, the unguided ones on 10.
    guided, unguided = [], []
    for i in range(30):
        noise = rng.uniform(0, 0.01, (S, S))
        marked = noise + (pleural_heat if i % 10 else heart_heat)
        guided += score_item(f"i{i}", marked[None], ["-Pleural"], PLEURAL_AND_HEART)
        marked = noise + (pleural_heat if i < 10 else heart_heat)
        unguided += score_item(f"i{i}", marked[None], ["-Pleural"], PLEURAL_AND_HEART)
    table = paired_comparison(
        scores_table(guided), scores_table(unguided).iloc[::-1], ("guided", "unguided"), seed=0
    ).set_index("metric")
    hits = table.loc["pointing_game"]
    assert hits["n"] == 30 and hits["first_mean"] == pytest.approx(0.9)
    assert hits["second_mean"] == pytest.approx(10 / 30)
    assert hits["difference"] == pytest.approx(0.9 - 10 / 30)
    assert 0.3 < hits["low"] < hits["difference"] < hits["high"] < 0.85
    assert hits["p_value"] < 0.01
    assert table.loc["specificity", "difference"] > 0.4
    assert table.loc["specificity", "chance_mean"] == pytest.approx(0.5)
    assert math.isnan(hits["chance_mean"])
    # False-positive heat on healthy tissue: both mark one 4 x 4 lesion over the same noise.
    healthy = table.loc["healthy_share"]
    assert healthy["first_mean"] == pytest.approx(np.mean([s.healthy_share for s in guided]))
    assert healthy["second_mean"] == pytest.approx(np.mean([s.healthy_share for s in unguided]))
    assert 0.05 < healthy["first_mean"] < 0.08 and abs(healthy["difference"]) < 0.002
    with pytest.raises(ScoringInputError, match="different names"):
        paired_comparison(scores_table(guided), scores_table(guided), ("a", "a"))


def test_compare_summaries_side_by_side_with_differences():
    first = pd.DataFrame(
        {"target": ["+No Finding", "-Pleural"], "n_lesion": [4, 2]}
        | {"pointing_game": [0.75, 0.5], "off_target_share": [0.1, 0.2]}
    )
    second = first.assign(pointing_game=[0.5, 0.5], off_target_share=[0.3, 0.2])
    for frame in (first, second):
        for metric in ("pixel_auroc", "mass_inside", "healthy_share", "specificity"):
            frame[metric] = 0.5
        frame["other_off_target_share"] = np.nan
        frame["healthy_energy"] = 0.01
    table = compare_summaries(first, second).set_index("target")
    assert table.loc["+No Finding", "pointing_game_softmax"] == 0.75
    assert table.loc["+No Finding", "pointing_game_sigmoid"] == 0.5
    assert table.loc["+No Finding", "pointing_game_diff"] == pytest.approx(0.25)
    assert table.loc["+No Finding", "off_target_share_diff"] == pytest.approx(-0.2)
    assert table.loc["-Pleural", "n_lesion_sigmoid"] == 2
    assert math.isnan(table.loc["-Pleural", "other_off_target_share_diff"])
    with pytest.raises(ScoringInputError):
        compare_summaries(first, second, ("a", "a"))


def test_score_a_stored_version_with_a_missing_mask_as_a_failed_row(tmp_path):
    """Store images of 16 px, heatmaps of 8 px: masks are fitted to the heatmaps' size."""
    images = ImageStore.create(tmp_path / "store", 16, shard_items=4)
    ids = ["has-lesion", "healthy", "no-masks", "not-done"]
    images.register(pd.DataFrame({"dicom_id": ids, "split": ["test"] * 4}))
    images.write_images(np.arange(4), np.zeros((4, 16, 16)))
    images.write_part(0, pd.DataFrame({"index": np.arange(4), "status": ["ok"] * 4}))
    images.mark_done(np.arange(4))
    images.consolidate()
    truth = MaskStore(tmp_path / "ground_truth" / "masks.zarr", seed=0)
    native = np.zeros((len(CHEXPERT_LABELS), 32, 32), dtype=np.uint8)
    native[CH["Pleural Effusion"], 0:8, 0:8] = 1  # the top-left 2 x 2 of 8 px
    truth.write("has-lesion", native, 1, "PA")
    truth.write("healthy", np.zeros_like(native), 2, "PA")
    heat_store = HeatmapStore.create(images, fake_heatmap_provenance(["-Pleural"], 8))
    heat = np.zeros((4, 1, 8, 8))
    heat[:, 0, 0, 0] = 1.0  # a peak in the lesion
    heat_store.write_heatmaps(np.arange(4), heat)
    heat_store.mark_done([0, 1, 2])

    indices = scorable_indices(images, heat_store, ["test"])
    assert indices.tolist() == [0, 1, 2]
    assert scorable_indices(images, heat_store, ["train"]).tolist() == []
    masks = GroundTruthMasks.open(tmp_path / "ground_truth")
    scores = score_heatmap_version(images, heat_store, masks, indices)
    assert scores["kind"].tolist() == ["lesion", "healthy", "failed"]
    lesion = scores.iloc[0]
    assert lesion["hit"] == 1.0 and lesion["lesion_pixels"] == 4
    assert lesion["mass_inside"] == pytest.approx(1.0)
    failures = failures_of(scores)
    assert failures["dicom_id"].tolist() == ["no-masks"]
    assert "MissingMasksError" in failures["reason"].iloc[0]
    summary = summarise_scores(scores).iloc[0]
    assert summary["n_lesion"] == 1 and summary["n_healthy"] == 1 and summary["n_failed"] == 1
