"""The generator: an unconditional 1-channel diffusers ``UNet2DModel`` trained with the DDPM
epsilon objective (Ho et al. 2020, Algorithm 1 / eq. 14, "L_simple"), AdamW and EMA weights.

Images enter as (B, 1, S, S) tensors in [-1, 1]. The loop takes a data iterator and a
:class:`GeneratorState` to continue from; all randomness (weight init, timesteps, noise) comes
from the state's ``torch.Generator``, whose state is checkpointed, so a resumed run continues
exactly as an uninterrupted one would given the same batches.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.training_utils import EMAModel

from daug_core.compute import Compute
from daug_core.diffusion.config import DiffusionConfig, GeneratorConfig, TrainingConfig
from daug_core.diffusion.schedule import make_noise_scheduler, q_sample
from daug_core.distributed import SINGLE, Ranks
from daug_core.rng import seeded_init
from daug_core.training import (
    OnStep,
    TrainingResult,
    check_images,
    make_optimizer,
    noise_draws,
    train_steps,
)


def build_unet(cfg: GeneratorConfig, *, generator: torch.Generator) -> UNet2DModel:
    """A freshly initialised UNet (CPU, float32); weights depend only on ``generator``."""
    with seeded_init(generator):
        return UNet2DModel(
            sample_size=cfg.image_size,
            in_channels=1,
            out_channels=1,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=cfg.down_block_types,
            up_block_types=cfg.up_block_types,
            attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
        )


def make_ema(unet: UNet2DModel, cfg: TrainingConfig) -> EMAModel:
    """diffusers ``EMAModel`` over ``unet``'s parameters (decay warm-up (1+n)/(10+n), capped)."""
    return EMAModel(unet.parameters(), decay=cfg.ema_decay)


@dataclass
class GeneratorState:
    """Everything needed to continue generator training (mutated in place by training)."""

    config: DiffusionConfig
    unet: UNet2DModel
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # timesteps and noise
    step: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


def init_generator_state(
    config: DiffusionConfig, *, generator: torch.Generator, device: str | torch.device = "cpu"
) -> GeneratorState:
    """Step-0 state: a new UNet (init seeded from ``generator``), EMA, AdamW.

    ``generator`` is kept and drives the training noise; use one on ``device`` for CUDA.
    """
    unet = build_unet(config.generator, generator=generator)
    torch.nn.Module.to(unet, device)  # ModelMixin.to's decorator hides its signature from mypy
    ema = make_ema(unet, config.generator_training)
    optimizer = make_optimizer(unet, config.generator_training)
    return GeneratorState(config, unet, ema, optimizer, generator)


def ema_unet(state: GeneratorState) -> UNet2DModel:
    """A copy of the UNet carrying the EMA weights (for sampling and heatmaps)."""
    model = copy.deepcopy(state.unet)
    state.ema.copy_to(model.parameters())
    return model.eval()


def ddpm_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """L_simple = ||eps - eps_theta(x_t, t)||^2 (Ho et al. eq. 14), with
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (eq. 4) from ``scheduler.add_noise``."""
    x_t = q_sample(scheduler, x0, noise, timesteps)
    return F.mse_loss(unet(x_t, timesteps).sample, noise)


def train_generator(
    state: GeneratorState,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    *,
    until_step: int | None = None,
    on_step: OnStep | None = None,
    compute: Compute | None = None,
    ranks: Ranks = SINGLE,
) -> TrainingResult:
    """Train ``state`` in place until ``state.step == until_step`` (default: the config's
    ``num_steps``), the iterator ends, or ``on_step`` returns True.

    ``batches`` yields (B, 1, S, S) images in [-1, 1] (or tuples whose first item is that); they
    are moved to the UNet's device. Resume by passing a state loaded from a checkpoint.
    ``compute``: the device the state lives on and the forward pass's autocast (default CPU,
    float32) (weights, EMA and optimiser stay float32).

    Data-parallel (``ranks.distributed``): ``batches`` yield this rank's rows of each global
    batch; the UNet runs under DDP, so the averaged gradient is the global batch's MSE gradient
    (equal shares), and the clipped update and the EMA are the same on every rank.
    """
    cfg = state.config
    scheduler = make_noise_scheduler(cfg.schedule)
    num_t = cfg.schedule.num_train_timesteps

    def loss_of(
        batch: torch.Tensor | tuple[torch.Tensor, ...],
        *,
        step: int,
        model: torch.nn.Module,
        compute: Compute,
    ) -> torch.Tensor:
        images = batch[0] if isinstance(batch, tuple | list) else batch
        x0 = check_images(images, image_size=cfg.image_size, step=step)
        x0 = x0.to(device=compute.device, dtype=torch.float32)
        # Noise is drawn on the generator's device, then moved: same numbers on any device.
        t, noise = noise_draws(state.generator, x0, num_t, ranks)
        with compute.autocast():
            return ddpm_loss(model, scheduler, x0, t, noise)

    return train_steps(
        state,
        state.unet,
        batches,
        loss_of,
        config=cfg.generator_training,
        until_step=until_step,
        on_step=on_step,
        compute=compute,
        ranks=ranks,
        after_step=lambda: state.ema.step(state.unet.parameters()),
        reported=ranks.mean,  # the global batch's
    )
