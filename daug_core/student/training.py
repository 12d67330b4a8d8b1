"""Training the student on (image, teacher heatmaps) batches, through the project's step loop
(:func:`daug_core.training.train_steps`: learning-rate schedule, clipping, precision)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from daug_core.compute import Compute
from daug_core.student.config import StudentConfig
from daug_core.student.model import HeatmapStudent, student_loss
from daug_core.training import (
    BatchError,
    OnStep,
    TrainingResult,
    check_images,
    make_optimizer,
    train_steps,
)


@dataclass(frozen=True)
class TeacherBatch:
    """Images in model space (B, 1, S, S) and their teacher heatmaps (B, K, S, S) in [0, 1]."""

    images: torch.Tensor
    heatmaps: torch.Tensor


@dataclass
class StudentState:
    """What a run continues from: the network, its optimiser, the steps taken and the RNG
    (kept for the checkpoint layout; batches are drawn from the seed and the step)."""

    config: StudentConfig
    student: HeatmapStudent
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0


def init_student_state(
    config: StudentConfig,
    targets: tuple[str, ...],
    seed: int,
    device: str | torch.device = "cpu",
) -> StudentState:
    """A new student drawn from ``seed`` (the same weights on every device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = HeatmapStudent(config, targets)
    student.to(device)
    return StudentState(
        config,
        student,
        make_optimizer(student, config.training),
        torch.Generator().manual_seed(seed),
    )


def _check(batch: TeacherBatch, config: StudentConfig, targets: int, step: int) -> None:
    check_images(batch.images, image_size=config.image_size, step=step)
    expected = (batch.images.shape[0], targets, config.image_size, config.image_size)
    if tuple(batch.heatmaps.shape) != expected:
        raise BatchError(step, f"heatmaps must be {expected}, got {tuple(batch.heatmaps.shape)}")
    if not bool(torch.isfinite(batch.heatmaps).all()):
        raise BatchError(step, "heatmaps contain NaN or inf")


def train_student(
    state: StudentState,
    batches: Iterable[TeacherBatch],
    *,
    until_step: int | None = None,
    on_step: OnStep | None = None,
    compute: Compute | None = None,
) -> TrainingResult:
    """Train ``state`` in place up to ``until_step`` (default: the config's step count)."""
    config = state.config
    k = len(state.student.targets)

    def batch_loss(
        batch: TeacherBatch, *, step: int, model: torch.nn.Module, compute: Compute
    ) -> torch.Tensor:
        _check(batch, config, k, step)
        images = batch.images.to(compute.device)
        teacher = batch.heatmaps.to(compute.device)
        with compute.autocast():
            logits = model(images)
        return student_loss(logits, teacher, config.spatial_weight)[0]

    return train_steps(
        state,
        state.student,
        batches,
        batch_loss,
        config=config.training,
        until_step=until_step,
        on_step=on_step,
        compute=compute,
    )
