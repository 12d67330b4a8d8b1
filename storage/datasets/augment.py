"""Geometric augmentation of the contrastive Dataset: one random affine per item, applied
identically to the image and its heatmap channels, drawn from an RNG that depends only on
(seed, epoch, store index)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Mild geometric augmentation applied identically to the image and its heatmaps.

    A random resized crop (area fraction ``scale``, aspect ratio w/h log-uniform in ``ratio``)
    resampled to the full size, rotated by a uniform angle in +-``degrees``; pixels from
    outside the image are 0 (the padding colour of the store). Mild on purpose: the heatmap
    channels are spatial evidence, and large crops would cut the findings they point at.
    """

    scale: tuple[float, float] = (0.85, 1.0)
    ratio: tuple[float, float] = (0.95, 1.0 / 0.95)
    degrees: float = 5.0

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0.0 <= self.degrees < 180.0:
            raise ValueError(f"degrees must be in [0, 180), got {self.degrees}")


def augment_theta(config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One (2, 3) ``affine_grid`` matrix: output coordinates -> input coordinates.

    In the normalised [-1, 1] frame (square images, so angles are true angles), output point
    o maps to input point c + R(angle) diag(w, h) o: a crop of half-extents (w, h) centred on
    c, rotated. w h = area fraction, w / h = aspect ratio, clipped to the image; c is uniform
    where the unrotated crop fits.
    """
    area = rng.uniform(*config.scale)
    ratio = math.exp(rng.uniform(math.log(config.ratio[0]), math.log(config.ratio[1])))
    w = min(1.0, math.sqrt(area * ratio))
    h = min(1.0, math.sqrt(area / ratio))
    cx = rng.uniform(-(1.0 - w), 1.0 - w)
    cy = rng.uniform(-(1.0 - h), 1.0 - h)
    angle = math.radians(rng.uniform(-config.degrees, config.degrees))
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[w * cos, -h * sin, cx], [w * sin, h * cos, cy]], dtype=np.float32)


def apply_affine(stack: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, S, S) with per-item (B, 2, 3) matrices, bilinearly, zeros outside.

    One sampling grid per item is shared by all its channels, so the image and every heatmap
    move together; bilinear weights are convex, so values stay in [0, 1]."""
    grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
    return F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (numpy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's augmentation: a function of (seed, epoch, store index)
    only, so it does not depend on the worker, the batch or the order of reads."""
    return np.random.default_rng(mixed_seed(seed, epoch, index))
