"""Contracts shared by the training loops: per-step reports, results, callbacks, batch checks.

Training functions take a data iterator and a state to continue from; they never read files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from daug_core.diffusion.config import TrainingConfig
from daug_core.distributed import SINGLE, Ranks

StopReason = Literal["reached_num_steps", "data_exhausted", "callback"]


class BatchError(ValueError):
    """A training batch has the wrong shape, range or values; names the step and the reason."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"batch for step {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class StepReport:
    """What a training loop tells its callback after each optimiser step."""

    step: int  # steps completed so far (1-based after the first step)
    loss: float
    elapsed_seconds: float  # since this call started


# Returning True from the callback stops training after the current step (e.g. a time budget).
OnStep = Callable[[StepReport], bool | None]


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of one call to a training function (possibly a resumed one)."""

    losses: tuple[float, ...]  # one per step run in this call
    start_step: int
    end_step: int
    seconds: float
    stop_reason: StopReason

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


def check_images(images: object, *, image_size: int, step: int) -> torch.Tensor:
    """Validate a (B, 1, S, S) float batch in [-1, 1]; return it."""
    if not isinstance(images, torch.Tensor):
        raise BatchError(step, f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2:] != (image_size, image_size):
        raise BatchError(
            step, f"images must be (B, 1, {image_size}, {image_size}), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise BatchError(step, f"images must be floating point, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise BatchError(step, "images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise BatchError(step, f"images must be in [-1, 1], got [{lo:.3f}, {hi:.3f}]")
    return images


def check_labels(labels: object, *, batch: int, num_classes: int, step: int) -> torch.Tensor:
    """Validate (B, C) labels in {0, 1} or NaN (masked); return them."""
    if not isinstance(labels, torch.Tensor):
        raise BatchError(step, f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != (batch, num_classes):
        raise BatchError(
            step, f"labels must be ({batch}, {num_classes}), got {tuple(labels.shape)}"
        )
    known = labels[~torch.isnan(labels)]
    if not bool(((known == 0) | (known == 1)).all()):
        raise BatchError(step, "labels must be 0, 1 or NaN (masked)")
    return labels


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip: tuple[Iterable[torch.nn.Parameter], float] | None = None,
) -> None:
    """Backward pass and one optimiser step through ``scaler`` (fp16 loss scaling; a disabled
    scaler makes this exactly ``loss.backward(); optimizer.step()``), the gradients unscaled
    before ``clip`` = (parameters, max norm) clips them."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
    scaler.step(optimizer)
    scaler.update()


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, step: int) -> float:
    """The rate for step ``step`` (0-based: the steps already taken) by ``cfg.lr_schedule``,
    set on every parameter group; a function of the step alone, so a resumed run takes the
    rates of an uninterrupted one."""
    rate = cfg.learning_rate
    if cfg.lr_schedule == "linear":  # guided-diffusion's anneal_lr: 1 - the fraction done
        rate *= max(0.0, 1.0 - step / max(1, cfg.num_steps))
    for group in optimizer.param_groups:
        group["lr"] = rate
    return rate


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over all of ``model``'s parameters with the config's learning rate and decay."""
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )


def noise_draws(
    generator: torch.Generator, x0: torch.Tensor, t_high: int, ranks: Ranks = SINGLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps uniform on [0, t_high) and N(0, I) noise for the rows ``x0`` of a batch, on
    ``x0``'s device. They are drawn on the generator's device for the whole global batch (the
    same on every rank, as every rank's generator is) and this rank's rows are kept, so N
    data-parallel ranks noise their rows exactly as one process noises the global batch."""
    b = x0.shape[0] * ranks.world_size
    rows = ranks.rows(b)
    t = torch.randint(0, t_high, (b,), generator=generator, device=generator.device)
    noise = torch.randn((b, *x0.shape[1:]), generator=generator, device=generator.device)
    return t[rows].to(x0.device), noise[rows].to(x0.device)
