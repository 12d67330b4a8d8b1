"""Store pixels -> model input: the one mapping shared by training, heatmap workers and the
quality sweep (store pixels in [0, 1], model space in [-1, 1] at the model's size)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_space(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(B, S, S) store pixels in [0, 1] -> (B, 1, s, s) in [-1, 1] at the model's size s.

    Downscaling uses area averaging (the antialiased choice for integer factors)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    return x * 2.0 - 1.0
