"""Compose anatomy and findings into one radiograph and its per-finding masks.

Attenuation with findings (see :mod:`phantom` and :mod:`lesions` for the parts)::

    A = A0 * prod_f (1 - o_f)                       aerated lung left
    T = static - air * A + markings * A * prod_f (1 - l_f) + sum_f add_f
    I = clip(brightness + contrast * T, 0, 1) ** gamma + noise      bright = dense

Every finding's own change is confined to where its effect is non-zero, so rendering the
same case with and without one finding (:meth:`StudyFindings.only`) changes only pixels
inside that finding's mask. The noise comes from the pose's own stream and is therefore
identical in both renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.findings import (
    LUNG_OPACITY_CHILDREN,
    StudyFindings,
    draw_all_findings,
)
from storage.synthetic.phantom import (
    Anatomy,
    ImagePose,
    View,
    ViewGeometry,
    build_geometry,
    sample_anatomy,
    sample_pose,
)

_CHANNEL = {name: i for i, name in enumerate(CHEXPERT_LABELS)}


@dataclass(frozen=True)
class RenderedImage:
    """One image: ``pixels`` (H, W) float32 in [0, 1], bright = dense; ``masks``
    (14, H, W) uint8 in CheXpert label order, 1 where that finding changed the image."""

    pixels: np.ndarray
    masks: np.ndarray
    view: View


def render_image(
    anatomy: Anatomy, pose: ImagePose, findings: StudyFindings, noise: float
) -> RenderedImage:
    """Render ``anatomy`` seen through ``pose`` with ``findings``; ``noise`` is the base
    pixel-noise std (scaled by the patient's ``noise_scale``)."""
    geom = build_geometry(anatomy, pose)
    masks = np.zeros((len(CHEXPERT_LABELS), *geom.shape), dtype=np.uint8)
    aerated = np.ones(geom.shape, dtype=np.float32)
    markings_kept = np.ones(geom.shape, dtype=np.float32)
    additive = np.zeros(geom.shape, dtype=np.float32)
    for lesion in findings.lesions:
        effect = lesion.effect(geom)
        if effect.occupancy is not None:
            aerated *= 1.0 - effect.occupancy
        if effect.marking_loss is not None:
            markings_kept *= 1.0 - effect.marking_loss
        if effect.additive is not None:
            additive += effect.additive
        mask = effect.mask(geom)
        masks[_CHANNEL[lesion.label]] |= mask
        if lesion.label in LUNG_OPACITY_CHILDREN:
            masks[_CHANNEL["Lung Opacity"]] |= mask
    pixels = tone_map(geom, aerated, markings_kept, additive)
    if noise > 0:
        rng = np.random.default_rng(pose.noise_seed)
        std = noise * anatomy.noise_scale
        pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(std)
    return RenderedImage(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32), masks=masks, view=pose.view
    )


def tone_map(
    geom: ViewGeometry, aerated: np.ndarray, markings_kept: np.ndarray, additive: np.ndarray
) -> np.ndarray:
    """Attenuation -> brightness (film-like: linear ramp with a per-patient gamma)."""
    a = geom.anatomy
    air_left = geom.air_base * aerated
    T = geom.static - a.air * air_left + geom.markings * air_left * markings_kept + additive
    return np.clip(a.brightness + a.contrast * T, 0.0, 1.0) ** np.float32(a.gamma)


@dataclass(frozen=True)
class SyntheticCase:
    """One patient image with parameters for EVERY finding, for tests and demos."""

    anatomy: Anatomy
    pose: ImagePose
    findings: StudyFindings


def sample_case(seed: int, view: View = "PA", size: int = 96) -> SyntheticCase:
    """A reproducible case: anatomy, pose and all 13 lesions drawn from ``seed``.

    Example: ``render_image(c.anatomy, c.pose, c.findings.only({"Pneumothorax"}), 0.01)``.
    """
    root = np.random.SeedSequence(seed)
    anatomy_ss, pose_ss, lesion_ss = root.spawn(3)
    anatomy_rng = np.random.default_rng(anatomy_ss)
    anatomy = sample_anatomy(anatomy_rng, female=bool(anatomy_rng.random() < 0.5))
    pose = sample_pose(np.random.default_rng(pose_ss), view, size)
    return SyntheticCase(
        anatomy=anatomy,
        pose=pose,
        findings=draw_all_findings(np.random.default_rng(lesion_ss)),
    )
