"""MIMIC-CXR-JPG style output: 8-bit grayscale JPEG, bright = dense (already windowed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def write_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Phantom in [0, 1] -> 8-bit grayscale JPEG (deterministic for a given Pillow/libjpeg)."""
    data = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(data).save(path, format="JPEG", quality=JPEG_QUALITY)
