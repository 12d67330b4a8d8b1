"""What a user chooses for a heatmap version: the diffusion preset, the targets in channel order
and the whole :class:`~daug_core.diffusion.config.TranslationConfig`. One frozen object, built
once from the preset and what changed, carried whole from the CLI (or a deployment's parameters)
through the flow to the Ray workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daug_core.diffusion.config import DiffusionConfig, PresetName, TranslationConfig
from daug_core.diffusion.presets import preset
from daug_core.diffusion.targets import Target, TargetError, all_targets
from daug_core.settings import PresetParts, check_choices, described


@dataclass(frozen=True, kw_only=True)
class HeatmapSettings(PresetParts):
    """Everything that determines a heatmap version's values, except the checkpoints.

    ``translation`` is the whole :class:`TranslationConfig` (None: the preset's); build it
    from the preset and what changed with :meth:`build` (``HeatmapSettings.build(preset=
    "paper", translation={"scale": 30})``), as the CLI and a deployment's parameters do.
    ``targets`` are ``"+Class"`` / ``"-Class"`` in channel order; empty means DAug's K = 7
    (``+c`` for every class, ``+No Finding`` first), see :meth:`target_names`.
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
    translation: TranslationConfig = None  # type: ignore[assignment]  # None: the preset's

    @classmethod
    def preset_parts(cls) -> dict[str, Callable[[str], Any]]:
        return {"translation": lambda name: preset(name).translation}

    def __post_init__(self) -> None:
        check_choices(self)
        self.fill_parts()
        # Building the config runs DiffusionConfig's checks (level < T); parsing the targets
        # checks them against the classes.
        self.target_names(self.config().class_names)

    def config(self) -> DiffusionConfig:
        """The preset with this translation."""
        return dataclasses.replace(preset(self.preset), translation=self.translation)

    def target_names(self, class_names: tuple[str, ...]) -> tuple[str, ...]:
        """The targets in canonical spelling (``"+No Finding"``), the default set when none
        were given; a repeated target raises :class:`~daug_core.diffusion.guidance.TargetError`."""
        if not self.targets:
            return tuple(str(t) for t in all_targets(class_names, direction=1))
        return canonical_targets(self.targets, class_names)


def canonical_targets(texts: tuple[str, ...], class_names: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``"+Class"`` / ``"-Class"`` parsed and spelled canonically; repeats refused."""
    canonical = tuple(str(Target.parse(t, class_names)) for t in texts)
    if len(set(canonical)) != len(canonical):
        raise TargetError(f"targets repeat: {list(canonical)}")
    return canonical
