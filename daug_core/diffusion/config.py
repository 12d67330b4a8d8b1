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
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig
from daug_core.labels import SUPER_CLASS_NAMES as DEFAULT_CLASS_NAMES
from daug_core.settings import (
    ConfigError,
    check_choices,
    check_finite,
    dataclass_from_dict,
    described,
)

GuidanceMode = Literal["softmax", "sigmoid", "official"]
GUIDANCE_MODES: tuple[str, ...] = typing.get_args(GuidanceMode)
# How x0 and its counterfactual are compared (see daug_core.diffusion.heatmaps).
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


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Noise-aware classifier: the encoder half of a UNet (diffusers down blocks with a timestep
    embedding and GroupNorm), global average pooling and a linear head over ``class_names``.

    With ``encoder`` set, the classifier is guided-diffusion's ``EncoderUNetModel`` with those
    settings instead (the official DAug classifier: depth 4, attention pooling;
    :mod:`daug_core.diffusion.classifier.guided_diffusion`), trained and checkpointed the same way;
    its
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
    ``mode`` is how a target's log-probability is formed (:mod:`daug_core.diffusion.guidance`:
    softmax, sigmoid, or the official code's softmax variant).
    ``scale`` multiplies the classifier gradient; ``0`` is plain DDIM reconstruction (no guidance:
    the heatmap is the reconstruction error, the baseline the guidance is measured against).
    ``clip_denoised`` clamps the predicted x0 to [-1, 1] (guided-diffusion's ``clip_denoised``); it
    is off by default because clamping makes inversion and decoding stop being inverse maps.
    ``inversion_refinements`` > 0 solves each inversion step as the exact inverse of the decoding
    step by fixed-point iteration (see :mod:`daug_core.diffusion.ddim`); 0 is plain DDIM
    inversion, as in the official code. It matters with few steps: at 50 steps plain inversion
    -> decoding misses x0 by ~0.02 on average even for an ideal model; 2 refinements bring that
    below 1e-4.

    The next three fields turn (x0, x_cf) into the heatmap (:mod:`daug_core.diffusion.heatmaps`):
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

    level: int = described(500, "noise level L (a timestep of the training schedule)")
    steps: int = described(50, "DDIM steps over [0, L], each way")
    mode: GuidanceMode = described(
        "softmax",
        "guidance: softmax (DAug), sigmoid (baseline) or official (the official code's softmax)",
    )
    scale: float = described(
        100.0, "classifier guidance scale s >= 0 (0: no guidance, reconstruction error only)"
    )
    clip_denoised: bool = described(
        False, "clamp the predicted x0 to [-1, 1] at every DDIM step (guided-diffusion's flag)"
    )
    inversion_refinements: int = described(
        0, "fixed-point refinements per inversion step (0: plain DDIM inversion)"
    )
    difference: HeatmapDifference = described(
        "minmax", "heatmap: minmax (official |minmax(x0) - minmax(x_cf)|) or raw |x0 - x_cf| / 2"
    )
    reference: HeatmapReference = described(
        "input",
        "x_cf compared with: input (x0, DAug's) or reconstruction (the unguided decoding of x_L: "
        "the guidance's change only)",
    )
    smoothing_sigma: float = described(0.0, "Gaussian blur of the heatmap in pixels (0: none)")
    precision: Precision = described(
        "fp32", "UNet and classifier passes in fp32, bf16 or fp16 (CUDA); DDIM updates stay fp32"
    )
    generator_ema: bool = described(
        True, "decode with the generator's EMA weights (default) or its raw weights (official)"
    )
    input_range: InputRange = described(
        "signed",
        "model input: signed ([-1, 1]) or minmax (each image to [0, 1], the official code's); "
        "the models must have been trained with it",
    )

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

    max_batch: int = described(64, "rows of one UNet/classifier call (0: the preset's)")
    channels_last: bool = described(
        True, "run the models in channels-last memory format (faster convolutions)"
    )
    compile: bool = described(
        False, "torch.compile the models (faster calls after a slow first call per shape)"
    )

    def __post_init__(self) -> None:
        if self.max_batch < 0:
            raise ConfigError(f"max_batch must be >= 0 (0: the preset's), got {self.max_batch}")

    def over(self, preset: InferenceConfig) -> InferenceConfig:
        """These settings where ``max_batch`` 0 takes the preset's (a pool's choice over the
        preset's inference config)."""
        return dataclasses.replace(self, max_batch=self.max_batch or preset.max_batch)


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
