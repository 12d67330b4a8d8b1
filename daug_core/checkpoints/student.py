"""The student's checkpoint: the project's one layout (``model.json`` with kind ``student``,
``model.safetensors``, ``SHA256SUMS.json``, the trainer state). The header holds the network's
config, its targets and the teacher it learned from: the teacher version's name and its whole
heatmap provenance (the student's heatmaps carry it on)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from daug_core.checkpoints.layout import (
    flat_weights,
    load_pretrained,
    load_trainer_state,
    resolve_device,
    save_pretrained,
    trainer_state_writer,
)
from daug_core.diffusion.config import TrainingConfig
from daug_core.settings import CheckpointError, dataclass_from_dict
from daug_core.student.config import StudentConfig
from daug_core.student.model import HeatmapStudent
from daug_core.student.training import StudentState
from daug_core.training import make_optimizer


@dataclasses.dataclass(frozen=True)
class StudentCheckpoint:
    student: HeatmapStudent
    teacher_version: str
    teacher: dict[str, Any]  # the teacher version's heatmap provenance, as stored
    directory: Path


def save_student_checkpoint(
    state: StudentState,
    directory: str | os.PathLike[str],
    teacher_version: str,
    teacher: dict[str, Any],
) -> Path:
    """Write ``state`` to ``directory`` atomically; returns the path."""
    header = {
        "config": dataclasses.asdict(state.config),
        "targets": list(state.student.targets),
        "teacher_version": teacher_version,
        "teacher": teacher,
    }
    trainer = trainer_state_writer(
        optimizer=state.optimizer, generator=state.generator, step=state.step, extra={}
    )
    return save_pretrained(
        directory,
        kind="student",
        header=header,
        weights=flat_weights(state.student),
        write=trainer,
    )


def _config(header: dict[str, Any], directory: Path) -> StudentConfig:
    try:
        data = dict(header["config"])
        data["training"] = dataclass_from_dict(TrainingConfig, data["training"])
        data["block_out_channels"] = tuple(data["block_out_channels"])
        return StudentConfig(**data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(directory, f"model.json holds no student config ({exc})") from exc


def load_student(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> StudentCheckpoint:
    """The student at ``directory`` in eval mode on ``device``, with its teacher's record."""
    found = load_pretrained(directory, ("student",))
    student = HeatmapStudent(_config(found.header, found.directory), tuple(found.header["targets"]))
    student.load_state_dict(load_file(str(found.weights)))
    student.to(device).eval()
    return StudentCheckpoint(
        student,
        str(found.header["teacher_version"]),
        dict(found.header["teacher"]),
        found.directory,
    )


def load_student_state(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> StudentState:
    """A run to continue: the student, its optimiser and step, on ``device``."""
    loaded = load_student(directory, device)
    student = loaded.student.train()
    optimizer = make_optimizer(student, student.config.training)
    meta, generator = load_trainer_state(loaded.directory, optimizer, resolve_device(device))
    return StudentState(student.config, student, optimizer, generator, int(meta["step"]))
