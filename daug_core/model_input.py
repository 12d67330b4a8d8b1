"""Store pixels -> model input: the one mapping shared by training, heatmap workers and the
quality sweep (store pixels in [0, 1]; model space [-1, 1], or each image min-max scaled to
[0, 1] as the official DAug code feeds its models, at the model's size)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from daug_core.diffusion.config import InputRange


def to_model_space(
    images: np.ndarray, image_size: int, input_range: InputRange = "signed"
) -> torch.Tensor:
    """(B, S, S) store pixels in [0, 1] -> (B, 1, s, s) at the model's size s: in [-1, 1]
    (``signed``) or each image scaled by its own minimum and maximum to [0, 1] (``minmax``; a
    constant image becomes 0).

    Downscaling uses area averaging (the antialiased choice for integer factors)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    if input_range == "signed":
        return x * 2.0 - 1.0
    if input_range != "minmax":
        raise ValueError(f"input_range must be 'signed' or 'minmax', got {input_range!r}")
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - low
    return (x - low) / torch.where(span > 0, span, torch.ones_like(span))
