"""Checkpoints of the contrastive model in the one layout of :mod:`daug_core.checkpoints.layout`:
the :class:`~daug_core.contrastive.model.HeatmapClip` weights (towers, widened patch
convolution, logit scale), a header with its ``ContrastiveConfig``, ``heatmap_targets`` and the
caller's ``info`` (epoch, metrics), and with an optimizer the trainer state (AdamW, LR
schedule, RNG) to resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from daug_core.checkpoints.layout import (
    flat_weights,
    load_pretrained,
    load_trainer_state,
    save_pretrained,
    trainer_state_writer,
)
from daug_core.contrastive.config import (
    ContrastiveConfig,
    contrastive_config_from_dict,
    contrastive_config_to_dict,
)
from daug_core.contrastive.model import HeatmapClip, build_model
from daug_core.settings import CheckpointError


@dataclass(frozen=True)
class ClipCheckpoint:
    """A loaded contrastive checkpoint."""

    model: HeatmapClip
    config: ContrastiveConfig
    heatmap_targets: tuple[str, ...]
    info: dict[str, Any]


def save_clip_checkpoint(
    directory: str | Path,
    model: HeatmapClip,
    config: ContrastiveConfig,
    info: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Weights, config and (with an optimizer) the trainer state, atomically."""
    trainer = (
        trainer_state_writer(
            optimizer=optimizer,
            generator=generator or torch.Generator(),
            step=int(info.get("step", 0)),
            extra={"scheduler": scheduler.state_dict() if scheduler is not None else None},
        )
        if optimizer is not None
        else None
    )
    header = {
        "config": contrastive_config_to_dict(config),
        "heatmap_targets": list(model.heatmap_targets),
        "info": info,
    }
    return save_pretrained(
        directory, kind="clip", header=header, weights=flat_weights(model), write=trainer
    )


def load_clip_checkpoint(directory: str | Path) -> ClipCheckpoint:
    """The model (CPU, eval mode), its config and info; weights from safetensors only."""
    found = load_pretrained(directory, ("clip",))
    config = contrastive_config_from_dict(found.header["config"])
    # The stored weights replace everything, so build without the pretrained file.
    skeleton = dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=None))
    targets = tuple(found.header["heatmap_targets"])
    model = build_model(skeleton, targets, seed=0)
    try:
        model.load_state_dict(load_file(str(found.weights)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            found.directory, f"weights do not fit the stored config: {exc}"
        ) from exc
    model.eval()
    return ClipCheckpoint(model, config, targets, dict(found.header.get("info") or {}))


def restore_trainer_state(
    directory: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> torch.Generator:
    """Load the optimizer and schedule saved with a checkpoint; returns its RNG."""
    meta, generator = load_trainer_state(Path(directory), optimizer, torch.device("cpu"))
    if meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return generator
