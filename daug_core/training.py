"""What the training loops share: the step loop itself, per-step reports, results, callbacks,
batch checks.

Training functions take a data iterator and a state to continue from; they never read files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import torch

from daug_core.compute import Compute, cpu_fp32
from daug_core.diffusion.config import TrainingConfig
from daug_core.distributed import SINGLE, Ranks

StopReason = Literal["reached_num_steps", "data_exhausted", "callback"]
Batch = TypeVar("Batch")
Batch_contra = TypeVar("Batch_contra", contravariant=True)


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


class Trainee(Protocol):
    """What the step loop advances: a trainer's state, with the steps taken and the optimiser."""

    step: int
    optimizer: torch.optim.Optimizer


class BatchLoss(Protocol[Batch_contra]):
    """A trainer's loss of one batch for step ``step`` (1-based: the step it is for), through
    ``model`` (the trained module, under DDP when data-parallel), its forward pass under
    ``compute.autocast()``."""

    def __call__(
        self, batch: Batch_contra, *, step: int, model: torch.nn.Module, compute: Compute
    ) -> torch.Tensor: ...


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def train_steps(
    state: Trainee,
    module: torch.nn.Module,
    batches: Iterable[Batch],
    batch_loss: BatchLoss[Batch],
    *,
    config: TrainingConfig,
    until_step: int | None = None,
    on_step: OnStep | None = None,
    compute: Compute | None = None,
    ranks: Ranks = SINGLE,
    after_step: Callable[[], None] | None = None,
    reported: Callable[[torch.Tensor], float] = _value,
) -> TrainingResult:
    """The step loop of a trainer: train ``module`` (``state``'s) in place until
    ``state.step == until_step`` (default: ``config.num_steps``), ``batches`` end, or ``on_step``
    returns True.

    Each step takes the next batch's ``batch_loss``, sets the step's learning rate
    (:func:`set_learning_rate`, from ``state.step``, so a resumed run continues the schedule),
    takes one :func:`optimizer_step` with ``module``'s gradients clipped to
    ``config.grad_clip_norm``, runs ``after_step`` (an EMA update), counts the step and reports
    ``reported(loss)`` (the loss to record) to ``on_step``. ``compute`` is ``module``'s device and
    the forward passes' autocast (weights and optimiser stay float32; default CPU, float32);
    ``module`` runs under DDP when
    ``ranks.distributed``. ``module`` is left in eval mode.
    """
    target = config.num_steps if until_step is None else until_step
    compute = compute or cpu_fp32()
    device = compute.device
    scaler = compute.grad_scaler()
    start_step, losses = state.step, []
    started = time.perf_counter()
    stop: StopReason = "reached_num_steps"
    module.train()
    model = ranks.wrap(module, device)
    iterator = iter(batches)
    while state.step < target:
        try:
            batch = next(iterator)
        except StopIteration:
            stop = "data_exhausted"
            break
        loss = batch_loss(batch, step=state.step + 1, model=model, compute=compute)
        clip = (module.parameters(), config.grad_clip_norm)
        set_learning_rate(state.optimizer, config, state.step)
        optimizer_step(loss, state.optimizer, scaler, clip)
        if after_step is not None:
            after_step()
        state.step += 1
        losses.append(reported(loss))
        report = StepReport(state.step, losses[-1], time.perf_counter() - started)
        if on_step is not None and on_step(report) and state.step < target:
            stop = "callback"
            break
    module.eval()
    return TrainingResult(
        tuple(losses), start_step, state.step, time.perf_counter() - started, stop
    )
