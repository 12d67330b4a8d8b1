"""What a user chooses for a heatmap version: the diffusion preset, the targets in channel order
and the translation numbers to override. One frozen object, carried whole from the CLI (or a
deployment's parameters) through the flow to the Ray workers; validated once, here, by building
the :class:`~daug_core.diffusion.config.TranslationConfig` it stands for and parsing its targets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from daug_core.diffusion.config import (
    DiffusionConfig,
    GuidanceMode,
    HeatmapDifference,
    HeatmapReference,
    InputRange,
    Precision,
    PresetName,
    TranslationConfig,
)
from daug_core.diffusion.presets import preset
from daug_core.diffusion.targets import Target, TargetError, all_targets
from daug_core.settings import check_choices, described

# The fields of HeatmapSettings that override TranslationConfig fields of the same name.
TRANSLATION_FIELDS: tuple[str, ...] = (
    "mode",
    "scale",
    "level",
    "steps",
    "inversion_refinements",
    "difference",
    "reference",
    "smoothing_sigma",
    "clip_denoised",
    "precision",
    "generator_ema",
    "input_range",
)


@dataclass(frozen=True, kw_only=True)
class HeatmapSettings:
    """Everything that determines a heatmap version's values, except the checkpoints.

    The translation fields override the preset's :class:`TranslationConfig` (None keeps the
    preset's value); :meth:`config` is the preset with them applied. ``targets`` are
    ``"+Class"`` / ``"-Class"`` in channel order; empty means DAug's K = 7 (``+c`` for every
    class, ``+No Finding`` first), see :meth:`target_names`.
    """

    preset: PresetName = described(
        "tiny",
        "diffusion preset: tiny (64 px, CPU), paper (512 px) or official (paper as the official "
        "code runs it)",
    )
    targets: tuple[str, ...] = described(
        (),
        '"+Class" or "-Class", in channel order (repeat; default: +c for every class)',
        option="target",
    )
    mode: GuidanceMode | None = described(
        None,
        "guidance: softmax (DAug), sigmoid (baseline) or official (the official code's softmax)",
    )
    scale: float | None = described(
        None, "classifier guidance scale s >= 0 (0: no guidance, reconstruction error only)"
    )
    level: int | None = described(None, "noise level L (a timestep of the training schedule)")
    steps: int | None = described(None, "DDIM steps over [0, L], each way")
    inversion_refinements: int | None = described(
        None, "fixed-point refinements per inversion step (0: plain DDIM inversion)"
    )
    difference: HeatmapDifference | None = described(
        None, "heatmap: minmax (official |minmax(x0) - minmax(x_cf)|) or raw |x0 - x_cf| / 2"
    )
    reference: HeatmapReference | None = described(
        None,
        "x_cf compared with: input (x0, DAug's) or reconstruction (the unguided decoding of x_L: "
        "the guidance's change only)",
    )
    smoothing_sigma: float | None = described(
        None, "Gaussian blur of the heatmap in pixels (0: none)"
    )
    clip_denoised: bool | None = described(
        None, "clamp the predicted x0 to [-1, 1] at every DDIM step (guided-diffusion's flag)"
    )
    precision: Precision | None = described(
        None,
        "UNet and classifier passes in fp32, bf16 or fp16 (CUDA); DDIM updates stay fp32",
    )
    generator_ema: bool | None = described(
        None, "decode with the generator's EMA weights (default) or its raw weights (official)"
    )
    input_range: InputRange | None = described(
        None,
        "model input: signed ([-1, 1]) or minmax (each image to [0, 1], the official code's); "
        "the models must have been trained with it",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        # Building the config runs TranslationConfig's checks (ranges, steps <= level, ...) and
        # DiffusionConfig's (level < T); parsing the targets checks them against the classes.
        self.target_names(self.config().class_names)

    def overrides(self) -> dict[str, Any]:
        """The translation fields that are set, by name."""
        return {
            name: getattr(self, name)
            for name in TRANSLATION_FIELDS
            if getattr(self, name) is not None
        }

    def apply(self, config: DiffusionConfig) -> DiffusionConfig:
        """``config`` with this object's translation overrides."""
        translation = dataclasses.replace(config.translation, **self.overrides())
        return dataclasses.replace(config, translation=translation)

    def config(self) -> DiffusionConfig:
        """The preset with the overrides applied."""
        return self.apply(preset(self.preset))

    @property
    def translation(self) -> TranslationConfig:
        return self.config().translation

    def target_names(self, class_names: tuple[str, ...]) -> tuple[str, ...]:
        """The targets in canonical spelling (``"+No Finding"``), the default set when none
        were given; a repeated target raises :class:`~daug_core.diffusion.guidance.TargetError`."""
        if not self.targets:
            return tuple(str(t) for t in all_targets(class_names, direction=1))
        return canonical_targets(self.targets, class_names)

    @classmethod
    def of(
        cls, preset_name: PresetName, targets: tuple[str, ...], translation: TranslationConfig
    ) -> HeatmapSettings:
        """Settings that reproduce ``translation`` exactly (every field set), e.g. from a stored
        version's provenance."""
        values = {name: getattr(translation, name) for name in TRANSLATION_FIELDS}
        return cls(preset=preset_name, targets=tuple(targets), **values)


def canonical_targets(texts: tuple[str, ...], class_names: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``"+Class"`` / ``"-Class"`` parsed and spelled canonically; repeats refused."""
    canonical = tuple(str(Target.parse(t, class_names)) for t in texts)
    if len(set(canonical)) != len(canonical):
        raise TargetError(f"targets repeat: {list(canonical)}")
    return canonical
