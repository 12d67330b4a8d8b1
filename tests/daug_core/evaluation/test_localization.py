"""Localisation metrics on hand-made heatmaps and masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from daug_core.evaluation.localization import (
    LocalizationInputError,
    dilate,
    energy,
    heat_shares,
    mass_inside,
    pixel_auroc,
    pointing_hit,
)


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_pointing_game_hits_inside_misses_outside_and_respects_the_tolerance():
    mask = square(16, 4, 4, 3)  # rows/cols 4..6
    heat = np.zeros((16, 16))
    heat[5, 5] = 1.0
    assert pointing_hit(heat, mask, tolerance=0)
    heat = np.zeros((16, 16))
    heat[8, 5] = 1.0  # two rows below the mask
    assert not pointing_hit(heat, mask, tolerance=1)
    assert pointing_hit(heat, mask, tolerance=2)
    heat[12, 12] = 1.0  # a tie: one maximum near, one far
    assert pointing_hit(heat, mask, tolerance=2)


def test_pointing_game_refuses_empty_masks_and_flat_heatmaps():
    with pytest.raises(LocalizationInputError, match="non-empty mask"):
        pointing_hit(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)))
    with pytest.raises(LocalizationInputError, match="constant heatmap"):
        pointing_hit(np.ones((8, 8)), square(8, 1, 1, 2))
    with pytest.raises(LocalizationInputError, match="must be equal"):
        pointing_hit(np.ones((8, 8)), np.ones((4, 4)))


def test_dilation_is_a_chebyshev_ball():
    point = np.zeros((7, 7), dtype=bool)
    point[3, 3] = True
    grown = dilate(point, 2)
    assert grown.sum() == 25 and grown[1:6, 1:6].all()
    corner = np.zeros((5, 5), dtype=bool)
    corner[0, 0] = True
    assert dilate(corner, 1).sum() == 4  # clipped at the border


def test_pixel_auroc_matches_sklearn_and_known_cases():
    mask = square(10, 2, 2, 4)
    assert pixel_auroc(mask.astype(float), mask) == 1.0
    assert pixel_auroc(1.0 - mask, mask) == 0.0
    assert pixel_auroc(np.full((10, 10), 0.3), mask) == 0.5  # ties: chance
    heat = np.random.default_rng(1).random((10, 10))
    assert pixel_auroc(heat, mask) == pytest.approx(roc_auc_score(mask.ravel(), heat.ravel()))
    assert np.isnan(pixel_auroc(heat, np.zeros((10, 10))))
    assert np.isnan(pixel_auroc(heat, np.ones((10, 10))))


def test_mass_and_shares_add_up():
    target = square(8, 0, 0, 2)  # 4 pixels
    other = square(8, 6, 6, 2)  # 4 pixels
    heat = np.zeros((8, 8))
    heat[target] = 1.0  # 4 units on target
    heat[other] = 0.5  # 2 units on the other lesion
    heat[4, 4] = 2.0  # 2 units on healthy tissue
    assert mass_inside(heat, target) == pytest.approx(0.5)
    shares = heat_shares(heat, target, other | target)
    assert (shares.on_target, shares.off_target, shares.healthy) == pytest.approx((0.5, 0.25, 0.25))
    assert np.isnan(mass_inside(np.zeros((8, 8)), target))
    assert np.isnan(heat_shares(np.zeros((8, 8)), target, other).healthy)
    assert energy(heat) == pytest.approx(8 / 64)
    with pytest.raises(LocalizationInputError, match="non-negative"):
        mass_inside(-heat, target)
