"""Typed, frozen configuration of the diffusion core, with the named presets ``tiny`` and ``paper``.

One code path serves both presets; they differ only in numbers. ``tiny`` trains from scratch on a
2-core CPU in minutes (64 px, ~1 M-parameter UNet and classifier). ``paper`` follows DAug's
generator/classifier (the official code is guided-diffusion as modified by Wolleb et al. 2022 for
chest X-rays: linear schedule, T = 1000, 128 base channels, 2 res-blocks per level, attention at
16 px, noise level L = 500, classifier scale s = 100), scaled to 512 px with guided-diffusion's
512 px channel multipliers (0.5, 1, 1, 2, 2, 4, 4).

Configs round-trip through JSON (:func:`config_to_dict` / :func:`config_from_dict`) so they can be
stored next to checkpoints and in heatmap-store provenance. Every config and settings class is
frozen and keyword-only (a positional call is a TypeError, so a reordered field cannot shift
values); each checks its own ranges in ``__post_init__``, once, where its type is defined.

:class:`DiffusionTrainSettings` is what a user chooses for a training run (the preset and what
to override), carried whole from the CLI or a deployment to the flow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# Equivalent of storage.labels.SUPER_CLASS_NAMES; daug_core must not import storage.
DEFAULT_CLASS_NAMES: tuple[str, ...] = (
    "No Finding",
    "Cardiomediastinal",
    "Lung Lesion",
    "Parenchymal",
    "Atelectasis/Pneumothorax",
    "Pleural",
    "Support Devices",
)

GuidanceMode = Literal["softmax", "sigmoid", "official"]
GUIDANCE_MODES: tuple[str, ...] = typing.get_args(GuidanceMode)
# How x0 and its counterfactual are compared (see daug_core.heatmaps).
HeatmapDifference = Literal["minmax", "raw"]
# What the counterfactual is compared with: x0 itself (DAug) or the unguided DDIM decoding of
# the same x_L (the guidance's own change, without the reconstruction error).
HeatmapReference = Literal["input", "reconstruction"]
# Model precision: fp32, bfloat16 or float16 (CUDA only), of training and of heatmap passes.
Precision = Literal["fp32", "bf16", "fp16"]
# Store pixels [0, 1] -> model input: [-1, 1] (ours, diffusers' convention) or each image
# min-max scaled to [0, 1] (the official DAug code's data loader).
InputRange = Literal["signed", "minmax"]
PresetName = Literal["tiny", "paper", "official"]
# Learning rate over the steps of a diffusion-model training run.
StepSchedule = Literal["constant", "linear"]
UNION_TYPES = (typing.Union, types.UnionType)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds something else than expected (here,
    torch-free, so the CLI can name it without importing the models)."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        super().__init__(f"checkpoint {path}: {reason}")
        self.path = path
        self.reason = reason


def described(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field default with its help text (the CLI builds its options from it);
    ``metadata`` may add ``option`` (the CLI spelling, e.g. ``"target"`` for ``targets``)."""
    if isinstance(default, list | dict | set):
        raise TypeError("use an immutable default (tuple, frozenset)")
    return field(default=default, metadata={"help": help, **metadata})


def check_finite(owner: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` and ``value`` is a number
    (NaN fails every comparison, so it is refused here too)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{owner}.{name} must be a finite number {bounds}, got {value!r}")


_CHOICE_FIELDS: dict[type, tuple[tuple[str, tuple[Any, ...]], ...]] = {}


def _choice_fields(cls: type) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """(name, allowed values) of each field of dataclass ``cls`` typed ``Literal[...]`` (or
    ``Literal[...] | None``, None then allowed too); computed once per class."""
    if cls in _CHOICE_FIELDS:
        return _CHOICE_FIELDS[cls]
    hints = typing.get_type_hints(cls)
    fields = []
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        members = typing.get_args(hint) if typing.get_origin(hint) in UNION_TYPES else (hint,)
        literals = [m for m in members if typing.get_origin(m) is Literal]
        if literals:
            nullable = (None,) if type(None) in members else ()
            fields.append((item.name, (*typing.get_args(literals[0]), *nullable)))
    _CHOICE_FIELDS[cls] = tuple(fields)
    return _CHOICE_FIELDS[cls]


def check_choices(settings: object) -> None:
    """Raise :class:`ConfigError` naming the field and its choices when a ``Literal``-typed
    field of the dataclass ``settings`` holds anything else (a typo in a YAML file or a
    Prefect parameter is caught where it is read, not deep in a run)."""
    for name, choices in _choice_fields(type(settings)):
        value = getattr(settings, name)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices if c is not None)
            raise ConfigError(
                f"{type(settings).__name__}.{name} must be one of {shown}, got {value!r}"
            )


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """DDPM forward process (Ho et al. 2020): beta_t linear in t, as in guided-diffusion."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(
                f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Arguments of diffusers ``UNet2DModel`` (1 channel in and out, unconditional, epsilon)."""

    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    attention_head_dim: int
    norm_num_groups: int

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                "block_out_channels, down_block_types, up_block_types differ in length"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"norm_num_groups={self.norm_num_groups} must divide {self.block_out_channels}"
            )
        if self.image_size % 2 ** (n - 1):
            raise ConfigError(f"image_size {self.image_size} is not divisible by 2**{n - 1}")


# --- guided-diffusion's classifier (the official DAug one) -----------------------------------


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
        DEFAULT_CLASS_NAMES,
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
class ClassifierConfig:
    """Noise-aware classifier: the encoder half of a UNet (diffusers down blocks with a timestep
    embedding and GroupNorm), global average pooling and a linear head over ``class_names``.

    With ``encoder`` set, the classifier is guided-diffusion's ``EncoderUNetModel`` with those
    settings instead (the official DAug classifier: depth 4, attention pooling;
    :mod:`daug_core.guided_diffusion_classifier`), trained and checkpointed the same way; its
    image size and class names must be this config's, the other fields are then unused."""

    image_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    down_block_types: tuple[str, ...]
    attention_head_dim: int
    norm_num_groups: int
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    encoder: GuidedDiffusionClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.encoder is not None and (
            self.encoder.image_size != self.image_size
            or self.encoder.class_names != self.class_names
        ):
            raise ConfigError(
                f"ClassifierConfig.encoder ({self.encoder.image_size} px, "
                f"{self.encoder.class_names}) must have the classifier's image size and classes "
                f"({self.image_size} px, {self.class_names})"
            )
        if len(self.down_block_types) != len(self.block_out_channels):
            raise ConfigError("block_out_channels and down_block_types differ in length")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"norm_num_groups={self.norm_num_groups} must divide {self.block_out_channels}"
            )
        if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ConfigError(f"class_names must be unique and non-empty: {self.class_names}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True, kw_only=True)
class TranslationConfig:
    """Image-to-counterfactual translation: DDIM inversion to ``level`` then guided decoding.
    Every field changes the heatmap values, so heatmap provenance embeds this object whole.

    ``level`` is a timestep index of the training schedule (500 of T = 1000 in DAug); ``steps`` DDIM
    steps are spread evenly over [0, level] (``steps == level`` uses every timestep).
    ``mode`` is how a target's log-probability is formed (:mod:`daug_core.guidance`: softmax,
    sigmoid, or the official code's softmax variant).
    ``scale`` multiplies the classifier gradient; ``0`` is plain DDIM reconstruction (no guidance:
    the heatmap is the reconstruction error, the baseline the guidance is measured against).
    ``clip_denoised`` clamps the predicted x0 to [-1, 1] (guided-diffusion's ``clip_denoised``); it
    is off by default because clamping makes inversion and decoding stop being inverse maps.
    ``inversion_refinements`` > 0 solves each inversion step as the exact inverse of the decoding
    step by fixed-point iteration (see :mod:`daug_core.ddim`); 0 is plain DDIM inversion, as in the
    official code. It matters with few steps: at 50 steps plain inversion -> decoding misses x0 by
    ~0.02 on average even for an ideal model; 2 refinements bring that below 1e-4.

    The next three fields turn (x0, x_cf) into the heatmap (:mod:`daug_core.heatmaps`):
    ``difference`` ``"minmax"`` is the official |minmax(x0) - minmax(x_cf)|; ``"raw"`` is
    |x0 - x_cf| / 2, the change in store pixel units, which a global brightness shift of x_cf
    does not spread over the whole image. ``reference`` ``"input"`` compares x_cf with x0 (DAug);
    ``"reconstruction"`` compares it with the unguided DDIM decoding of the same x_L, so the
    heat is the guidance's own change and not the reconstruction error (one more decoding per
    image, shared by its targets; with ``scale = 0`` the heatmap is zero). ``smoothing_sigma``
    (pixels, 0 = none) blurs the heatmap with a Gaussian, which suppresses single-pixel
    reconstruction noise.

    ``precision`` is the dtype of the models' weights and activations in every UNet and
    classifier pass (``bf16``: bfloat16; ``fp16``: float16, CUDA only); the DDIM updates and
    the heatmap stay float32, the guidance gradient is returned in float32. It changes the
    values, so a heatmap version holds one precision.

    ``generator_ema`` decodes with the generator's EMA weights (``unet_ema/``, the usual choice
    for sampling); ``False`` uses the raw training weights (``unet/``), as the official code
    does.

    ``input_range`` maps store pixels into model space, for training and decoding alike (the
    models must decode in the range they were trained in): ``"signed"`` is x * 2 - 1 in
    [-1, 1]; ``"minmax"`` scales each image to [0, 1] by its own minimum and maximum and feeds
    it as is, as the official code does (its generator and classifier were trained so).
    """

    level: int = 500
    steps: int = 50
    mode: GuidanceMode = "softmax"
    scale: float = 100.0
    clip_denoised: bool = False
    inversion_refinements: int = 0
    difference: HeatmapDifference = "minmax"
    reference: HeatmapReference = "input"
    smoothing_sigma: float = 0.0
    precision: Precision = "fp32"
    generator_ema: bool = True
    input_range: InputRange = "signed"

    def __post_init__(self) -> None:
        check_choices(self)
        if not 1 <= self.steps <= self.level:
            raise ConfigError(
                f"need 1 <= steps <= level, got steps={self.steps}, level={self.level}"
            )
        check_finite("TranslationConfig", "scale", self.scale, 0.0)
        if self.inversion_refinements < 0:
            raise ConfigError(
                f"inversion_refinements must be >= 0, got {self.inversion_refinements}"
            )
        check_finite("TranslationConfig", "smoothing_sigma", self.smoothing_sigma, 0.0, 16.0)


@dataclass(frozen=True, kw_only=True)
class InferenceConfig:
    """How the heatmap path runs, not what it computes (so not part of heatmap provenance):
    ``max_batch`` bounds the rows of one UNet/classifier call in the batched path;
    ``channels_last`` runs the models in channels-last memory format (the tiny heatmap path
    1.3x faster in fp32 on this machine's CPU; the fast layout of GPU tensor cores);
    ``compile`` wraps them in ``torch.compile`` (+5 % at the tiny widths, -16 % at the paper's
    on this CPU, after 40 s to minutes of compilation per input shape and process: off by
    default). Results equal the defaults' up to float rounding."""

    max_batch: int = 64
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Optimiser and loop numbers for one model. ``batch_size`` and ``checkpoint_every`` are for the
    caller that builds the data iterator and the per-step callback; ``num_steps`` is the total step
    count a run (or a resumed run) trains up to. ``max_noise_timestep`` (inclusive) bounds the
    timesteps sampled for training; the generator uses the whole schedule. ``lr_schedule``
    ``"linear"`` anneals the rate from ``learning_rate`` to 0 over ``num_steps`` (guided-diffusion's
    ``anneal_lr``, the official classifier's), ``"constant"`` keeps it."""

    batch_size: int
    num_steps: int
    learning_rate: float
    weight_decay: float
    grad_clip_norm: float
    checkpoint_every: int
    ema_decay: float = 0.9999
    max_noise_timestep: int | None = None
    lr_schedule: StepSchedule = "constant"

    def __post_init__(self) -> None:
        check_choices(self)
        if self.batch_size < 1 or self.num_steps < 0 or self.learning_rate <= 0:
            raise ConfigError(f"invalid training numbers: {self}")
        # NaN passes every "<=" test above; a NaN rate or decay would train to NaN weights.
        check_finite("TrainingConfig", "learning_rate", self.learning_rate, 0.0)
        check_finite("TrainingConfig", "weight_decay", self.weight_decay, 0.0)
        check_finite("TrainingConfig", "grad_clip_norm", self.grad_clip_norm, 0.0)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """Everything the diffusion core needs, per preset."""

    name: str
    schedule: NoiseScheduleConfig
    generator: GeneratorConfig
    classifier: ClassifierConfig
    translation: TranslationConfig
    generator_training: TrainingConfig
    classifier_training: TrainingConfig
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    format_version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.generator.image_size != self.classifier.image_size:
            raise ConfigError(
                f"generator ({self.generator.image_size} px) and classifier "
                f"({self.classifier.image_size} px) image sizes differ"
            )
        t_max = self.schedule.num_train_timesteps - 1
        if self.translation.level > t_max:
            raise ConfigError(f"translation level {self.translation.level} > T-1 = {t_max}")
        if self.translation.mode == "official" and self.class_names[0] != "No Finding":
            raise ConfigError(
                "guidance mode 'official' needs 'No Finding' as the classifier's first class "
                f"(the official code's order), got {self.class_names}"
            )
        m = self.classifier_training.max_noise_timestep
        if m is not None and not 0 <= m <= t_max:
            raise ConfigError(f"classifier max_noise_timestep {m} outside [0, {t_max}]")

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classifier.class_names


def _tiny() -> DiffusionConfig:
    size = 64
    return DiffusionConfig(
        name="tiny",
        schedule=NoiseScheduleConfig(),
        generator=GeneratorConfig(
            image_size=size,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            attention_head_dim=32,
            norm_num_groups=8,
        ),
        classifier=ClassifierConfig(
            image_size=size,
            block_out_channels=(32, 64, 128, 160),
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * 4,
            attention_head_dim=32,
            norm_num_groups=8,
        ),
        # Chosen by measurement (README "Heatmap quality"; `daug heatmap-quality` sweeps them):
        # on 64 px phantoms the paper's L = 500, s = 100 with minmax gave pointing game 0.21 and
        # pixel AUROC 0.52 (s = 100 rewrote the whole image); L = 300, s = 10, raw difference
        # and a 1.5 px blur give 0.97 / 0.95 with the 3,000-step models. Ten steps without
        # refinements score as well as 20 steps or refined inversion, at half the time or less.
        translation=TranslationConfig(
            level=300,
            steps=10,
            mode="softmax",
            scale=10.0,
            inversion_refinements=0,
            difference="raw",
            smoothing_sigma=1.5,
        ),
        generator_training=TrainingConfig(
            batch_size=8,
            # 300 steps reconstruct the phantoms but the heatmaps find lesions only with a
            # generator trained 3,000 steps (pointing game 0.69 -> 0.97 at L = 300).
            num_steps=3000,
            learning_rate=2e-4,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            checkpoint_every=200,
            ema_decay=0.995,
        ),
        classifier_training=TrainingConfig(
            batch_size=16,
            num_steps=3000,
            # Measured on the 300-study demo store (271 train images, 600 steps, AUC at t = 0
            # on 42 held-out images): lr 1e-3 underfits (train 0.66, held-out 0.60); 3e-4 gives
            # 0.79 / 0.75 and, with 1,200 steps, 0.89 / 0.76; 1e-4 gives 0.82 / 0.75. Mean
            # validate AUC over t in {0..500}: 0.73 at 600 steps, 0.76 at 1,500, 0.81 at
            # 3,000; guidance needs the confident one (No Finding AUC 0.81 -> 1.00 at t = 0).
            learning_rate=3e-4,
            weight_decay=0.05,
            grad_clip_norm=1.0,
            checkpoint_every=200,
            max_noise_timestep=500,
        ),
        inference=InferenceConfig(max_batch=64),
    )


def _paper() -> DiffusionConfig:
    size = 512
    # guided-diffusion at 512 px: channel_mult (0.5, 1, 1, 2, 2, 4, 4) x num_channels; the chest
    # X-ray flags use num_channels=128, num_res_blocks=2, attention at 16 px (+ the middle block).
    gen_channels = (64, 128, 128, 256, 256, 512, 512)
    # Classifier flags: width 32 (here 32 at full resolution so GroupNorm(32) divides it),
    # attention at 32, 16 and 8 px.
    clf_channels = (32, 64, 64, 128, 128, 256, 256)
    return DiffusionConfig(
        name="paper",
        schedule=NoiseScheduleConfig(),
        generator=GeneratorConfig(
            image_size=size,
            block_out_channels=gen_channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * 5 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 5,
            attention_head_dim=64,
            norm_num_groups=32,
        ),
        classifier=ClassifierConfig(
            image_size=size,
            block_out_channels=clf_channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3,
            attention_head_dim=64,
            norm_num_groups=32,
        ),
        translation=TranslationConfig(
            level=500, steps=500, mode="softmax", scale=100.0, inversion_refinements=0
        ),
        inference=InferenceConfig(max_batch=8),
        generator_training=TrainingConfig(
            batch_size=10,
            num_steps=150_000,
            learning_rate=1e-4,
            weight_decay=0.0,
            grad_clip_norm=1.0,
            checkpoint_every=5000,
            ema_decay=0.9999,
        ),
        classifier_training=TrainingConfig(
            batch_size=10,
            num_steps=50_000,
            learning_rate=3e-4,
            weight_decay=0.05,
            grad_clip_norm=1.0,
            checkpoint_every=5000,
            max_noise_timestep=999,
        ),
    )


def _official() -> DiffusionConfig:
    """The official DAug code's translation switch for switch (``classifier_sample_known.py``,
    ``train_ddpm.sh``): its guidance targets, ``clip_denoised``, the raw (non-EMA) generator
    weights, images min-max scaled to [0, 1] (training and decoding), 500 DDIM steps each way
    to L = 500, s = 100, the minmax heatmap; its generator layout (channel mult
    (1, 1, 2, 2, 4, 4) x 128, 2 res-blocks, one attention head at 16 px) and its classifier's
    learning rate and weight decay (1e-4, 0) and its network: guided-diffusion's depth-4
    ``EncoderUNetModel`` with attention pooling (``ClassifierConfig.encoder``). Not matched by
    the generator we train (diffusers' UNet2DModel, unconditional): the class conditioning and
    learned variance; ``daug convert-generator`` brings the official checkpoint with them."""
    paper = _paper()
    return dataclasses.replace(
        paper,
        name="official",
        generator=dataclasses.replace(
            paper.generator,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D",) * 5 + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * 5,
            attention_head_dim=512,  # one head of all 512 channels, as num_heads=1
        ),
        translation=dataclasses.replace(
            paper.translation,
            mode="official",
            clip_denoised=True,
            generator_ema=False,
            input_range="minmax",
        ),
        classifier=dataclasses.replace(
            paper.classifier,
            encoder=GuidedDiffusionClassifierConfig(
                image_size=paper.classifier.image_size, class_names=paper.classifier.class_names
            ),
        ),
        classifier_training=dataclasses.replace(
            paper.classifier_training, learning_rate=1e-4, weight_decay=0.0, lr_schedule="linear"
        ),
    )


_PRESETS = {"tiny": _tiny, "paper": _paper, "official": _official}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str) -> DiffusionConfig:
    """The named preset (``"tiny"``, ``"paper"`` or ``"official"``)."""
    try:
        return _PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}") from None


@dataclass(frozen=True, kw_only=True)
class DiffusionTrainSettings:
    """One training run of the generator and the noise-aware classifier: the preset and the
    step counts to train to (None: the preset's)."""

    preset: PresetName = described(
        "tiny",
        "diffusion preset: tiny (64 px, CPU), paper (512 px) or official (paper as the official "
        "code runs it)",
    )
    seed: int = described(0, "seeds weights, noise and batches (a resumed run continues alike)")
    generator_steps: int | None = described(
        None, "total generator steps to train to (default: the preset's)"
    )
    classifier_steps: int | None = described(
        None, "total classifier steps to train to (default: the preset's)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("generator_steps", "classifier_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"DiffusionTrainSettings.{name} must be >= 1, got {value}")

    def config(self) -> DiffusionConfig:
        """The preset with the step counts applied."""
        config = preset(self.preset)
        generator, classifier = config.generator_training, config.classifier_training
        if self.generator_steps is not None:
            generator = dataclasses.replace(generator, num_steps=self.generator_steps)
        if self.classifier_steps is not None:
            classifier = dataclasses.replace(classifier, num_steps=self.classifier_steps)
        return dataclasses.replace(
            config, generator_training=generator, classifier_training=classifier
        )


def config_to_dict(config: DiffusionConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> DiffusionConfig:
    """Inverse of :func:`config_to_dict`; unknown or missing keys raise :class:`ConfigError`.

    Configs stored before ``max_batch`` moved from the translation to :class:`InferenceConfig`
    (checkpoints of 2026-12-01 and earlier) are read with it moved."""
    data = dict(data)
    translation = dict(data.get("translation") or {})
    if "max_batch" in translation and "inference" not in data:
        data["inference"] = {"max_batch": translation.pop("max_batch")}
        data["translation"] = translation
    config: DiffusionConfig = dataclass_from_dict(DiffusionConfig, data)
    return config


def classifier_config_from_dict(data: dict[str, Any]) -> ClassifierConfig:
    """A :class:`ClassifierConfig` from ``dataclasses.asdict`` output (lists become tuples)."""
    config: ClassifierConfig = dataclass_from_dict(ClassifierConfig, data)
    return config


def dataclass_from_dict(cls: type, data: Any) -> Any:
    """A frozen config dataclass from ``dataclasses.asdict`` output: nested (also optional)
    dataclasses rebuilt, JSON lists back to tuples; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {key: _coerce(hints[key], value) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return dataclass_from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in UNION_TYPES:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return _coerce(members[0], value)
        return tuple(value) if isinstance(value, list | tuple) else value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value
