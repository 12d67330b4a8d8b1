"""The decoding rule documented in storage.synthetic.dicom_writer (test-side reference)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset


def decode_for_display(ds: Dataset) -> np.ndarray:
    """Modality LUT, then VOI window (or min-max), then MONOCHROME1 inversion -> [0, 1]."""
    out = ds.pixel_array.astype(np.float64)
    out = out * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    if "WindowCenter" in ds:
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        y = np.clip((out - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
    else:
        y = (out - out.min()) / max(float(out.max() - out.min()), 1e-9)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1.0 - y
    return y
