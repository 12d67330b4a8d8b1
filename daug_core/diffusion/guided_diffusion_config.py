"""The settings of guided-diffusion checkpoints (torch-free, so the CLI can build its options
without importing torch): the generator's UNet (converted by
:mod:`daug_core.diffusion.guided_diffusion_convert`) and the noise-aware classifier's encoder (by
:mod:`daug_core.diffusion.classifier.guided_diffusion`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from daug_core.labels import SUPER_CLASS_NAMES
from daug_core.settings import ConfigError, described

__all__ = [
    "NORM_EPS",
    "NORM_GROUPS",
    "GuidedDiffusionClassifierConfig",
    "GuidedDiffusionClassifierError",
    "GuidedDiffusionConfig",
    "GuidedDiffusionError",
]


class GuidedDiffusionError(ConfigError):
    """A guided-diffusion model this converter cannot express or a state dict that does not
    match its settings."""


# guided-diffusion's normalization(): GroupNorm32(32, channels), torch's default eps.
NORM_GROUPS = 32
NORM_EPS = 1e-5
PoolKind = Literal["attention", "adaptive"]
POOL_KINDS: tuple[str, ...] = ("attention", "adaptive")


class GuidedDiffusionClassifierError(GuidedDiffusionError):
    """A guided-diffusion classifier this converter cannot express or a state dict that does
    not match its settings."""


@dataclass(frozen=True, kw_only=True)
class GuidedDiffusionClassifierConfig:
    """The ``EncoderUNetModel`` arguments of a guided-diffusion classifier; the defaults are
    the official DAug classifier's (``--image_size 512 --classifier_width 32
    --classifier_depth 4 --classifier_attention_resolutions 32,16,8
    --classifier_use_scale_shift_norm True --classifier_resblock_updown True
    --classifier_pool attention``, 7 classes, 1 channel, 64 channels per attention head)."""

    image_size: int = described(512, "image size the classifier was trained at (px)")
    in_channels: int = described(1, "image channels (1: grey)")
    model_channels: int = described(32, "base width (guided-diffusion's classifier_width)")
    class_names: tuple[str, ...] = described(
        SUPER_CLASS_NAMES,
        "the class of each logit, in order (repeat; the official: No Finding, then the 6 "
        "finding super-classes, our order)",
        option="class_name",
    )
    num_res_blocks: int = described(4, "residual blocks per level (classifier_depth)")
    # Downsample rates (image_size // resolution): 512 // 32 = 16, 512 // 16 = 32. The official
    # "32,16,8" also names 8 px (rate 64), which its six levels never reach: no layer there.
    attention_resolutions: tuple[int, ...] = described(
        (16, 32), "levels with attention, as downsample rates: image_size // px (repeat)"
    )
    channel_mult: tuple[int, ...] = described(
        (1, 1, 2, 2, 4, 4), "width multiplier per level (repeat, one per level)"
    )
    num_head_channels: int = described(64, "channels per attention head")
    use_scale_shift_norm: bool = described(True, "scale-shift norm in the residual blocks")
    resblock_updown: bool = described(True, "residual down-sampling (else a strided convolution)")
    pool: PoolKind = described(
        "attention", "pooling head: attention (CLIP-style) or adaptive (mean, then linear)"
    )

    def __post_init__(self) -> None:
        def fail(reason: str) -> None:
            raise GuidedDiffusionClassifierError(f"GuidedDiffusionClassifierConfig: {reason}")

        for name in (
            "image_size",
            "in_channels",
            "model_channels",
            "num_res_blocks",
            "num_head_channels",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name} must be an integer >= 1, got {value!r}")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            fail(f"class_names must be distinct names, one per logit, got {self.class_names!r}")
        if self.pool not in POOL_KINDS:
            fail(
                f"pool={self.pool!r} is not mapped: only 'attention' and 'adaptive' are "
                "(guided-diffusion's 'spatial' and 'spatial_v2' heads are not)"
            )
        if not self.channel_mult or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mult
        ):
            fail(f"channel_mult must be integers >= 1, one per level, got {self.channel_mult!r}")
        for rate in self.attention_resolutions:
            if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1 or rate & (rate - 1):
                fail(
                    f"attention_resolutions holds downsample rates (powers of two: "
                    f"image_size // px), got {rate!r}"
                )
        reduction = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % reduction:
            fail(
                f"image_size={self.image_size} is not divisible by {reduction}, the "
                f"down-sampling of {len(self.channel_mult)} levels"
            )
        for level, width in enumerate(self.widths):
            if width % NORM_GROUPS:
                fail(
                    f"level {level} has {width} channels, not a multiple of GroupNorm's "
                    f"{NORM_GROUPS} groups"
                )
            attended = self.has_attention(level) or level == len(self.widths) - 1
            if attended and width % self.num_head_channels:
                fail(
                    f"level {level} has attention over {width} channels, not a multiple of "
                    f"num_head_channels={self.num_head_channels}"
                )

    @property
    def out_channels(self) -> int:
        """Logits: one per class."""
        return len(self.class_names)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each level: ``model_channels * mult``."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding: 4 x ``model_channels``, as guided-diffusion's."""
        return 4 * self.model_channels

    @property
    def pool_size(self) -> int:
        """Side of the deepest feature map, which the attention pool's positional embedding
        covers (plus the mean token)."""
        return self.image_size // 2 ** (len(self.channel_mult) - 1)

    def has_attention(self, level: int) -> bool:
        """Whether the residual blocks of ``level`` are followed by attention blocks (the
        middle block always has one)."""
        return 2**level in self.attention_resolutions

    def heads(self, channels: int) -> int:
        """Attention heads over ``channels``: ``channels // num_head_channels``."""
        return channels // self.num_head_channels


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
