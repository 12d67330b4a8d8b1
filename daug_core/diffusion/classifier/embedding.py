"""The timestep embedding both noise-aware classifiers share (ours and guided-diffusion's
encoder): sinusoidal features of t through the embedding MLP."""

from __future__ import annotations

import torch
from torch import nn


def embed_timesteps(
    time_proj: nn.Module,
    time_embedding: nn.Module,
    t: torch.Tensor | int,
    x: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The timestep embedding of ``t`` ((B,) or one for the whole batch ``x``): sinusoidal
    features in float32, cast to the weights' ``dtype``, through the embedding MLP."""
    timesteps = torch.as_tensor(t, device=x.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(x.shape[0])
    temb: torch.Tensor = time_embedding(time_proj(timesteps).to(dtype))
    return temb
