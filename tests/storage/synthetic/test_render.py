"""Every finding's mask covers the pixels the finding changes (render with and without)."""

from __future__ import annotations

import numpy as np
import pytest

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.config import RENDERABLE_FINDINGS, SynthConfig
from storage.synthetic.findings import (
    LUNG_OPACITY_CHILDREN,
    StudyFindings,
    UnknownFindingError,
    draw_study_findings,
)
from storage.synthetic.phantom import View
from storage.synthetic.render import RenderedImage, render_image, sample_case

CHANNEL = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
NOT_ON_LATERAL = {"Pneumothorax", "Enlarged Cardiomediastinum", "Fracture", "Pleural Other"}
NOISE = 0.012
SEEDS = (0, 1, 2)


def _render(seed: int, view: View, names: set[str]) -> RenderedImage:
    case = sample_case(seed, view=view, size=80)
    return render_image(case.anatomy, case.pose, case.findings.only(names), NOISE)


def _inside_share(change: np.ndarray, mask: np.ndarray) -> float:
    return float(change[mask > 0].sum() / max(change.sum(), 1e-12))


@pytest.mark.parametrize("view", ["PA", "AP", "LATERAL"])
@pytest.mark.parametrize("name", RENDERABLE_FINDINGS)
def test_mask_covers_the_change(name: str, view: View) -> None:
    for seed in SEEDS:
        clean = _render(seed, view, set())
        sick = _render(seed, view, {name})
        assert sick.pixels.shape == clean.pixels.shape
        change = np.abs(sick.pixels.astype(np.float64) - clean.pixels)
        mask = sick.masks[CHANNEL[name]]
        others = np.delete(sick.masks, [CHANNEL[name], CHANNEL["Lung Opacity"]], axis=0)
        assert not others.any(), f"{name}: other channels set"
        if view == "LATERAL" and name in NOT_ON_LATERAL:
            assert not mask.any() and change.max() == 0.0
            continue
        assert 0 < mask.mean() < 0.5, f"{name} {view} seed {seed}: mask area {mask.mean():.3f}"
        assert change.sum() > 0
        share = _inside_share(change, mask)
        assert share >= 0.8, f"{name} {view} seed {seed}: {share:.2f} of change inside mask"
        # visible: a clear change somewhere, not only noise-level wiggles
        assert change.max() > 0.08, f"{name} {view} seed {seed}: max change {change.max():.3f}"


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_mask_covers_the_change_among_other_findings(view: View) -> None:
    """Removing one finding from an image with ALL findings changes only its own mask."""
    for seed in SEEDS:
        everything = set(RENDERABLE_FINDINGS)
        full = _render(seed, view, everything)
        for name in RENDERABLE_FINDINGS:
            without = _render(seed, view, everything - {name})
            change = np.abs(full.pixels.astype(np.float64) - without.pixels)
            if change.sum() == 0:
                continue  # fully hidden behind other findings
            share = _inside_share(change, full.masks[CHANNEL[name]])
            assert share >= 0.8, f"{name} {view} seed {seed}: {share:.2f} inside"


def test_lung_opacity_channel_is_union_of_children() -> None:
    for name in LUNG_OPACITY_CHILDREN:
        image = _render(0, "PA", {name})
        assert np.array_equal(image.masks[CHANNEL["Lung Opacity"]], image.masks[CHANNEL[name]])


@pytest.mark.parametrize("view", ["PA", "AP", "LATERAL"])
def test_no_finding_images_have_empty_masks(view: View) -> None:
    image = _render(4, view, set())
    assert image.masks.dtype == np.uint8
    assert image.masks.shape == (14, *image.pixels.shape)
    assert not image.masks.any()
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0


def test_phantom_looks_like_a_chest_radiograph() -> None:
    """Dark lungs inside a brighter body on a dark background, non-square grid."""
    case = sample_case(7, view="PA", size=96)
    image = render_image(case.anatomy, case.pose, StudyFindings(), NOISE)
    h, w = image.pixels.shape
    assert h != w
    lung_right = image.pixels[int(0.35 * h), int(0.28 * w)]
    spine = image.pixels[int(0.35 * h), w // 2]
    corner = image.pixels[-1, 0]
    assert lung_right < spine - 0.2
    assert corner < 0.15 or image.pixels[int(0.9 * h), w // 2] > lung_right


def test_render_is_deterministic() -> None:
    a = _render(3, "PA", set(RENDERABLE_FINDINGS))
    b = _render(3, "PA", set(RENDERABLE_FINDINGS))
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.masks, b.masks)


def test_labels_follow_findings() -> None:
    config = SynthConfig()
    normal = nonempty = 0
    for i in range(300):
        presence = np.random.default_rng(i)
        findings = draw_study_findings(presence, np.random.default_rng(10_000 + i), config)
        labels = findings.labels()
        assert labels["No Finding"] == (not findings.names)
        if findings.names & LUNG_OPACITY_CHILDREN:
            assert labels["Lung Opacity"]
        normal += labels["No Finding"]
        nonempty += len(findings.names) > 1
    assert 0.25 < normal / 300 < 0.45  # normal_fraction = 0.35
    assert nonempty > 30  # findings co-occur


def test_only_rejects_unknown_names() -> None:
    with pytest.raises(UnknownFindingError):
        sample_case(0).findings.only({"Broken Heart"})
