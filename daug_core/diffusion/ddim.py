"""Deterministic DDIM (eta = 0) on a respaced timestep grid: inversion x0 -> x_L and decoding
x_L -> x0, with an optional guidance plug-in (guided-diffusion's ``cond_fn`` pattern).

Notation: alpha_bar_t = ``alphas_cumprod[t]`` of the training schedule, so that
x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4).

Grid. For noise level L (a timestep index) and n steps the trajectory visits the clean image
(alpha_bar = 1, the model is queried there with t = 0, the least noisy trained timestep) and
tau_i = round(i L / n), i = 1..n. With n = L that is every timestep 1..L; the tiny preset uses
n = 10, the paper preset n = L = 500.

Step. One DDIM update from (x_s, alpha_bar_s) to alpha_bar_r, both directions (Song et al. 2021,
"Denoising Diffusion Implicit Models", eq. 12 with sigma = 0):
    x0_hat = (x_s - sqrt(1 - alpha_bar_s) eps_theta(x_s, s)) / sqrt(alpha_bar_s)
    x_r    = sqrt(alpha_bar_r) x0_hat + sqrt(1 - alpha_bar_r) eps_theta(x_s, s)
Decoding takes r < s; inversion takes r > s, i.e. the Euler discretisation of the DDIM ODE
(Song et al. eq. 13) run forwards, as guided-diffusion's ``ddim_reverse_sample`` does. eps is
always evaluated at the *source* point (x_s, s). diffusers' ``DDIMInverseScheduler`` instead
evaluates it with the *target* timestep and offsets its grid by one step, so it is not used.

Exactness. If eps_theta does not depend on (x, t) the two directions are exact inverses (the
step is affine with coefficients that invert each other). For a real model, invert -> decode
differs from x0 by the first-order discretisation error of the ODE: eps_theta(x_s, s) is used on
the way up and eps_theta(x_r, r) on the way down. The error shrinks linearly with the step size.

Refinement (optional). The decoding step r -> s uses eps_theta(x_r, r); inverting *that* step
exactly means solving x_r = step(x_s, eps_theta(x_r, r), s -> r), done by fixed-point iteration
from the plain DDIM guess (fixed-point / "iterative" DDIM inversion: Pan et al. 2023, ICCV,
"Effective Real Image Editing with Accelerated Iterative Diffusion Inversion"; Garibi et al.
2024, "ReNoise"). Each refinement costs one model call per step and shrinks the round-trip
error geometrically; in the batched heatmap path the inversion is shared by all K targets, so
its cost is divided by K.

Precision. The trajectory and all coefficients stay in float32 (coefficients from float64); the
models see the input cast to their own parameter dtype (e.g. bfloat16), outputs are upcast.

Work. Every model pass without guidance runs under ``torch.inference_mode`` (no autograd
records). Decodings that start from the same x_L (the K targets of one image) share the first
step's eps_theta(x_L, L): :func:`level_epsilon` computes it once per image and
:func:`ddim_decode` takes it as ``first_eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# A model predicting eps from (x_t, t); diffusers models return an object with ``.sample``.
EpsModel = Callable[[torch.Tensor, torch.Tensor], Any]
# s * grad_x log p(y | x_t) at (x_t, t) -> same shape as x_t (guided-diffusion's cond_fn).
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DDIMGrid:
    """Timesteps and alpha_bar of the respaced trajectory, clean point first."""

    timesteps: tuple[int, ...]  # model timestep at each grid point; (0, tau_1, ..., tau_n = L)
    alpha_bars: tuple[float, ...]  # (1.0, alpha_bar[tau_1], ..., alpha_bar[L])

    @property
    def steps(self) -> int:
        return len(self.timesteps) - 1


def ddim_grid(alphas_cumprod: torch.Tensor, level: int, steps: int) -> DDIMGrid:
    """The grid for noise level ``level`` (1 <= level <= T-1) in ``steps`` (1 <= steps <= level)."""
    num_t = int(alphas_cumprod.shape[0])
    if not 1 <= level <= num_t - 1:
        raise ValueError(f"level must be in [1, {num_t - 1}], got {level}")
    if not 1 <= steps <= level:
        raise ValueError(f"steps must be in [1, level={level}], got {steps}")
    # Integer round-half-up of i * level / steps; strictly increasing because level >= steps.
    taus = [(i * level + steps // 2) // steps for i in range(1, steps + 1)]
    ab = alphas_cumprod.detach().double().cpu()
    return DDIMGrid(
        timesteps=(0, *taus),
        alpha_bars=(1.0, *(float(ab[t]) for t in taus)),
    )


def model_dtype(model: object, fallback: torch.dtype) -> torch.dtype:
    """The dtype of ``model``'s first floating parameter, else ``fallback``."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return fallback


def predict_epsilon(model: EpsModel, x: torch.Tensor, t: int) -> torch.Tensor:
    """eps_theta(x, t) in float32; x is cast to the model's dtype, t broadcast over the batch."""
    timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    out = model(x.to(model_dtype(model, x.dtype)), timesteps)
    eps = out.sample if hasattr(out, "sample") else out
    return eps.float()


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_from: float,
    alpha_bar_to: float,
    *,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """One deterministic DDIM update (Song et al. 2021, eq. 12 with sigma_t = 0)."""
    sqrt_ab_from = math.sqrt(alpha_bar_from)
    sqrt_1m_from = math.sqrt(1.0 - alpha_bar_from)
    x0_hat = (x - sqrt_1m_from * eps) / sqrt_ab_from  # "predicted x0", eq. 12
    if clip_denoised:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        if sqrt_1m_from > 0.0:
            # Re-derive eps from the clamped x0 (guided-diffusion _predict_eps_from_xstart).
            eps = (x - sqrt_ab_from * x0_hat) / sqrt_1m_from
    # "direction pointing to x_t" plus the rescaled x0, eq. 12.
    return math.sqrt(alpha_bar_to) * x0_hat + math.sqrt(1.0 - alpha_bar_to) * eps


def guided_epsilon(eps: torch.Tensor, cond_grad: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """eps_hat = eps - sqrt(1 - alpha_bar_t) * s * grad_x log p(y | x_t)
    (Dhariwal & Nichol 2021, eq. 14 / Algorithm 2; ``cond_grad`` already carries the scale s)."""
    return eps - math.sqrt(1.0 - alpha_bar) * cond_grad


def invert_to_level(
    eps_model: EpsModel,
    x0: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    level: int,
    steps: int,
    refinements: int = 0,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM inversion of clean images x0 (B, C, H, W) in [-1, 1] up to noise level
    ``level`` in ``steps`` steps, each refined ``refinements`` times by fixed-point iteration
    toward the exact inverse of the decoding step; returns x_L in float32 on x0's device."""
    grid = ddim_grid(alphas_cumprod, level, steps)
    with torch.inference_mode():
        x = x0.float()
        for i in range(grid.steps):
            ab_from, ab_to = grid.alpha_bars[i], grid.alpha_bars[i + 1]
            eps = predict_epsilon(eps_model, x, grid.timesteps[i])
            x_next = ddim_step(x, eps, ab_from, ab_to, clip_denoised=clip_denoised)
            for _ in range(refinements):
                # Fixed point of x_r = step(x_s, eps(x_r, r)): decoding from x_r returns x_s.
                eps = predict_epsilon(eps_model, x_next, grid.timesteps[i + 1])
                x_next = ddim_step(x, eps, ab_from, ab_to, clip_denoised=clip_denoised)
            x = x_next
    return x.clone()  # a normal tensor: callers may use it in autograd


def level_epsilon(
    eps_model: EpsModel, x_level: torch.Tensor, *, alphas_cumprod: torch.Tensor, level: int
) -> torch.Tensor:
    """eps_theta(x_L, L) in float32: the unguided eps of the first decoding step, the same for
    every decoding that starts from x_L (pass it to :func:`ddim_decode` as ``first_eps``)."""
    ddim_grid(alphas_cumprod, level, 1)  # checks the level
    with torch.inference_mode():
        eps = predict_epsilon(eps_model, x_level.float(), level)
    return eps.clone()


def ddim_decode(
    eps_model: EpsModel,
    x_level: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    level: int,
    steps: int,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    first_eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from x_L back to a clean image over the same grid as
    :func:`invert_to_level`. With ``cond_fn`` the eps of each step is replaced by the
    classifier-guided eps_hat (:func:`guided_epsilon`). ``first_eps``: eps_theta(x_L, L) if
    already known (:func:`level_epsilon`), saving one model pass. Returns float32."""
    grid = ddim_grid(alphas_cumprod, level, steps)
    if first_eps is not None and first_eps.shape != x_level.shape:
        raise ValueError(f"first_eps {tuple(first_eps.shape)} != x_L {tuple(x_level.shape)}")
    x = x_level.float()
    for i in range(grid.steps, 0, -1):
        t, alpha_bar = grid.timesteps[i], grid.alpha_bars[i]
        with torch.inference_mode():
            if i == grid.steps and first_eps is not None:
                eps = first_eps.float()
            else:
                eps = predict_epsilon(eps_model, x, t)
        if cond_fn is not None:
            timesteps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            eps = guided_epsilon(eps, cond_fn(x, timesteps).float(), alpha_bar)
        with torch.inference_mode():
            x = ddim_step(x, eps, alpha_bar, grid.alpha_bars[i - 1], clip_denoised=clip_denoised)
    return x.clone()  # a normal tensor: callers may use it in autograd
