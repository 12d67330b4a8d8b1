"""Fit of an image (or a mask) into an S x S square: aspect-preserving (pad, crop) or not
(squash, the official DAug code's ``Resize([S, S])``).

Images and ground-truth masks go through the same function, so a mask lands on the same
pixels as the lesion it marks.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from PIL import Image


class FitMode(StrEnum):
    """``pad``: scale the long side to S and pad the short one (nothing is lost).
    ``crop``: scale the short side to S and centre-crop the long one (no padding).
    ``squash``: scale each side to S (the aspect ratio changes; the official DAug code's)."""

    PAD = "pad"
    CROP = "crop"
    SQUASH = "squash"


def fit_to_square(
    image: np.ndarray,
    size: int,
    mode: FitMode = FitMode.PAD,
    pad_value: float = 0.0,
    nearest: bool = False,
) -> np.ndarray:
    """Resize a 2-D float image to ``size`` x ``size``, keeping its aspect ratio unless ``mode``
    is squash.

    Downscaling uses Pillow's antialiased bilinear filter (its support grows with the scale
    factor, so a 3000 px radiograph is averaged, not aliased). ``nearest=True`` is for label
    maps. The content is centred; padding uses ``pad_value``.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    height, width = image.shape
    scale = size / (max(height, width) if mode is FitMode.PAD else min(height, width))
    new_h = size if mode is FitMode.SQUASH else max(1, round(height * scale))
    new_w = size if mode is FitMode.SQUASH else max(1, round(width * scale))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
            (new_w, new_h), resample
        )
    )
    out = np.full((size, size), pad_value, dtype=np.float32)
    # Source window (crop) and destination window (pad), both centred.
    src_y, src_x = max(0, (new_h - size) // 2), max(0, (new_w - size) // 2)
    dst_y, dst_x = max(0, (size - new_h) // 2), max(0, (size - new_w) // 2)
    h, w = min(size, new_h), min(size, new_w)
    out[dst_y : dst_y + h, dst_x : dst_x + w] = resized[src_y : src_y + h, src_x : src_x + w]
    return out
