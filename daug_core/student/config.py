"""The student's settings: network size, loss and training numbers, per preset.

``tiny`` (64 px) trains on a CPU in minutes; ``paper`` is sized for 512 px heatmaps on GPUs.
The loss is measured, not guessed (``benchmarks/results/distill/``): the teacher's heatmaps are
sparse (mean ~0.02), so a per-pixel regression alone learns blur; a spatial term (the
KL divergence from the teacher map, read as a distribution over pixels, to the softmax of the
student's logits) puts the mass where the teacher's peak is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from daug_core.diffusion.config import TrainingConfig
from daug_core.settings import ConfigError, check_choices, described

StudentPresetName = Literal["tiny", "paper"]


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The network (a diffusers ``UNet2DModel`` run at t = 0: an encoder-decoder with skips)
    and its loss: ``l1`` on the sigmoid of the logits plus ``spatial_weight`` times the
    spatial KL term (0: L1 alone)."""

    name: str
    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    spatial_weight: float
    training: TrainingConfig

    def __post_init__(self) -> None:
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ConfigError(
                f"StudentConfig.image_size {self.image_size} is not divisible by the "
                f"{len(self.block_out_channels) - 1} downsamplings of {self.block_out_channels}"
            )
        if any(c % 8 for c in self.block_out_channels):
            raise ConfigError(
                f"StudentConfig.block_out_channels must be multiples of 8 (group norm), got "
                f"{self.block_out_channels}"
            )
        if not self.spatial_weight >= 0.0:
            raise ConfigError(
                f"StudentConfig.spatial_weight must be >= 0, got {self.spatial_weight}"
            )


def _training(batch_size: int, num_steps: int, learning_rate: float) -> TrainingConfig:
    return TrainingConfig(
        batch_size=batch_size,
        num_steps=num_steps,
        learning_rate=learning_rate,
        weight_decay=0.0,
        grad_clip_norm=1.0,
        checkpoint_every=250,
    )


def student_preset(name: str) -> StudentConfig:
    """The ``tiny`` (64 px, CPU) or ``paper`` (512 px, GPU) student."""
    if name == "tiny":
        return StudentConfig(
            name="tiny",
            image_size=64,
            block_out_channels=(16, 32, 64),
            layers_per_block=1,
            spatial_weight=1.0,
            training=_training(batch_size=16, num_steps=1500, learning_rate=1e-3),
        )
    if name == "paper":
        return StudentConfig(
            name="paper",
            image_size=512,
            block_out_channels=(32, 64, 128, 128, 256, 256),
            layers_per_block=2,
            spatial_weight=1.0,
            training=_training(batch_size=32, num_steps=20_000, learning_rate=2e-4),
        )
    raise ConfigError(f"unknown student preset {name!r} (tiny, paper)")


@dataclass(frozen=True, kw_only=True)
class StudentSettings:
    """One student training run: the preset, the seed and the steps to train to (None: the
    preset's)."""

    preset: StudentPresetName = described(
        "tiny", "student preset: tiny (64 px, CPU) or paper (512 px)"
    )
    seed: int = described(0, "seeds weights and batches (a resumed run continues alike)")
    steps: int | None = described(None, "total student steps to train to (default: the preset's)")
    spatial_weight: float | None = described(
        None, "weight of the spatial (peak) term of the loss; 0: L1 alone (default: the preset's)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"StudentSettings.steps must be >= 1, got {self.steps}")

    def config(self) -> StudentConfig:
        """The preset with the changes applied."""
        config = student_preset(self.preset)
        if self.steps is not None:
            config = dataclasses.replace(
                config, training=dataclasses.replace(config.training, num_steps=self.steps)
            )
        if self.spatial_weight is not None:
            config = dataclasses.replace(config, spatial_weight=self.spatial_weight)
        return config
