"""How well a heatmap points at a known lesion: pure functions of one heatmap and masks.

Used on the synthetic release, whose ground truth has a pixel mask per finding:

- pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"):
  a hit when the heatmap's maximum lies inside the mask dilated by ``tolerance`` pixels
  (their 15 px at 224 px is ~7 %; 2 px at 64 px is 3 %); ties go to every maximal pixel:
  a hit if any of them is inside (a flat heatmap points everywhere, so it is refused);
- pixel AUROC: ROC AUC of heat as a score for "pixel in mask" (scikit-learn); undefined
  (NaN) when the mask is empty or full;
- mass inside: the share of the heat that falls inside the mask;
- off-target shares: of all heat, the part on *other* findings' lesions and the part on
  healthy tissue (outside every lesion);
- specificity: of the heat on lesions, the share on the target's (for an image with lesions
  of the target and of another finding: does the heatmap mark *this* class's lesion?);
- energy: the mean heat, the false-positive energy of a healthy image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


class LocalizationInputError(ValueError):
    """A heatmap or mask has the wrong shape or values."""


def _check(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heat, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if h.ndim != 2 or h.shape != m.shape:
        raise LocalizationInputError(f"heat {h.shape} and mask {m.shape} must be equal 2-D")
    if not np.isfinite(h).all():
        raise LocalizationInputError("heat holds NaN/inf")
    if (h < 0).any():
        raise LocalizationInputError("heat must be non-negative")
    return h, m


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a (2p+1)² square (Chebyshev distance <= p)."""
    m = np.asarray(mask).astype(bool)
    if pixels <= 0:
        return m.copy()
    padded = np.pad(m, pixels)
    out = np.zeros_like(m)
    size = 2 * pixels + 1
    for dy in range(size):
        for dx in range(size):
            out |= padded[dy : dy + m.shape[0], dx : dx + m.shape[1]]
    return out


def pointing_hit(heat: np.ndarray, mask: np.ndarray, tolerance: int = 2) -> bool:
    """Does the heatmap's maximum fall inside ``mask`` (dilated by ``tolerance`` px)?"""
    h, m = _check(heat, mask)
    if not m.any():
        raise LocalizationInputError("the pointing game needs a non-empty mask")
    if h.max() == h.min():
        raise LocalizationInputError("a constant heatmap has no maximum to point with")
    peaks = h == h.max()
    return bool((peaks & dilate(m, tolerance)).any())


def pixel_auroc(heat: np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC of heat against the mask's pixels; NaN when the mask is empty or full."""
    h, m = _check(heat, mask)
    if m.all() or not m.any():
        return float("nan")
    return float(roc_auc_score(m.ravel(), h.ravel()))


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Σ heat inside the mask / Σ heat; NaN for a heatmap without heat."""
    h, m = _check(heat, mask)
    total = h.sum()
    return float(h[m].sum() / total) if total > 0 else float("nan")


@dataclass(frozen=True)
class HeatShares:
    """Where a heatmap's heat goes, as shares of its total (they add up to 1)."""

    on_target: float  # inside the target lesion
    off_target: float  # inside another finding's lesion, not the target's
    healthy: float  # outside every lesion

    @property
    def specificity(self) -> float:
        """Of the heat on lesions, the share on the target's: 1 when only the target's lesion
        is marked, 0 when only the others' are. The class specificity of a heatmap of an image
        that also has *another* finding's lesion (without one it is 1 by construction); NaN
        when no heat falls on any lesion."""
        on_lesions = self.on_target + self.off_target
        return self.on_target / on_lesions if on_lesions > 0 else float("nan")


def heat_shares(heat: np.ndarray, target: np.ndarray, others: np.ndarray) -> HeatShares:
    """Split the heat over the target lesion, other lesions and healthy tissue (NaN shares
    for a heatmap without heat)."""
    h, t = _check(heat, target)
    _, o = _check(heat, others)
    total = h.sum()
    if total <= 0:
        nan = float("nan")
        return HeatShares(nan, nan, nan)
    other_only = o & ~t
    return HeatShares(
        on_target=float(h[t].sum() / total),
        off_target=float(h[other_only].sum() / total),
        healthy=float(h[~(t | o)].sum() / total),
    )


def energy(heat: np.ndarray) -> float:
    """Mean heat per pixel: the false-positive energy of a heatmap of a healthy image."""
    h = np.asarray(heat, dtype=np.float64)
    if h.ndim != 2 or not np.isfinite(h).all():
        raise LocalizationInputError(f"heat must be a finite 2-D array, got {h.shape}")
    return float(h.mean())
