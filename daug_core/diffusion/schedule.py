"""The DDPM noise schedule, from diffusers' ``DDPMScheduler`` (Ho et al. 2020, eq. 4:
x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps)."""

from __future__ import annotations

from typing import cast

import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

from daug_core.diffusion.config import NoiseScheduleConfig


def make_noise_scheduler(cfg: NoiseScheduleConfig) -> DDPMScheduler:
    """The training scheduler (``add_noise``) for ``cfg``; epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type="epsilon",
        clip_sample=False,
    )


def alphas_cumprod(cfg: NoiseScheduleConfig) -> torch.Tensor:
    """alpha_bar_t for t = 0 .. T-1 (float32, CPU), the scheduler's own values."""
    return make_noise_scheduler(cfg).alphas_cumprod.detach().clone()


def q_sample(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Ho et al. eq. 4), via diffusers'
    ``DDPMScheduler.add_noise``."""
    return scheduler.add_noise(x0, noise, cast(torch.IntTensor, timesteps))
