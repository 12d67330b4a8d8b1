"""The settings of guided-diffusion checkpoints (torch-free, so the CLI can build its options
without importing torch): the generator's UNet (converted by
:mod:`daug_core.guided_diffusion_convert`) and the noise-aware classifier's encoder (by
:mod:`daug_core.guided_diffusion_classifier`)."""

from __future__ import annotations

from dataclasses import dataclass

# The classifier's settings are part of ClassifierConfig (daug_core.config), so they live there.
from daug_core.config import (
    NORM_EPS,
    NORM_GROUPS,
    GuidedDiffusionClassifierConfig,
    GuidedDiffusionClassifierError,
    GuidedDiffusionError,
    described,
)

__all__ = [
    "NORM_EPS",
    "NORM_GROUPS",
    "GuidedDiffusionClassifierConfig",
    "GuidedDiffusionClassifierError",
    "GuidedDiffusionConfig",
    "GuidedDiffusionError",
]


@dataclass(frozen=True, kw_only=True)
class GuidedDiffusionConfig:
    """The ``create_model`` arguments of a guided-diffusion UNet (the official DAug generator:
    ``image_size=512, num_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
    attention_resolutions="16", class_cond=True`` (2 classes), ``learn_sigma=True``, the
    defaults here) and the class label every decoding uses."""

    image_size: int = described(512, "image size the generator was trained at (px)")
    in_channels: int = described(1, "image channels (1: grey)")
    model_channels: int = described(128, "base width (guided-diffusion's num_channels)")
    channel_mult: tuple[int, ...] = described(
        (1, 1, 2, 2, 4, 4), "width multiplier per level (repeat, one per level)"
    )
    num_res_blocks: int = described(2, "residual blocks per level")
    # Downsample rates (image_size // resolution): 512 // 16 = 32 for "attention at 16 px".
    attention_resolutions: tuple[int, ...] = described(
        (32,), "levels with attention, as downsample rates: image_size // px (repeat)"
    )
    class_cond: bool = described(True, "class-conditional (the official: on No Finding)")
    num_classes: int = described(2, "classes of the class embedding (when class-conditional)")
    decode_label: int = described(
        1, "class label every decoding uses (the official code: 1; ignored if unconditional)"
    )
    learn_sigma: bool = described(True, "the model also predicts the variance (2x channels)")
    num_heads: int = described(1, "attention heads (only 1, the official, is mapped)")
    use_scale_shift_norm: bool = described(False, "scale-shift norm in the residual blocks")
    resblock_updown: bool = described(
        False, "residual up/down-sampling (not mapped; the official: False)"
    )

    def __post_init__(self) -> None:
        if self.num_heads != 1:
            raise GuidedDiffusionError(
                f"num_heads={self.num_heads}: only one attention head is mapped (the official "
                "generator's)"
            )
        if self.resblock_updown:
            raise GuidedDiffusionError("resblock_updown=True is not mapped (the official: False)")
        if self.class_cond and not 0 <= self.decode_label < self.num_classes:
            raise GuidedDiffusionError(
                f"decode_label={self.decode_label} is not a class of {self.num_classes}"
            )

    @property
    def classes(self) -> int | None:
        """Classes of the class embedding; None for an unconditional model."""
        return self.num_classes if self.class_cond else None

    @property
    def label(self) -> int | None:
        """The class label decodings use; None for an unconditional model."""
        return self.decode_label if self.class_cond else None

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)
