"""The quality sweep's settings, kept apart from the sweep's code so the CLI can build its
options without loading the models."""

from __future__ import annotations

from dataclasses import dataclass

from daug_core.compute import ComputeSettings
from daug_core.diffusion.config import GUIDANCE_MODES
from daug_core.settings import ConfigError, described


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """Which translation numbers the sweep tries, on how many images, with how many threads.
    Empty grids default to two values around the settings' own numbers (see
    :func:`sweep_grid`)."""

    enabled: bool = described(True, "time and score heatmaps over mode x scale x level x steps")
    items: int = described(12, "lesion images of each target's class the sweep runs on")
    targets: tuple[str, ...] = described(
        ("+No Finding",),
        'targets the sweep scores (repeat), e.g. "-Pleural": each on its class\'s lesion images',
        option="target",
    )
    modes: tuple[str, ...] = described(
        (),
        "guidance modes the sweep tries (repeat): softmax, sigmoid, official (default: the "
        "settings' mode)",
        option="mode",
    )
    scales: tuple[float, ...] = described(
        (), "sweep scales (repeat; default scale/10, scale)", option="scale"
    )
    levels: tuple[int, ...] = described(
        (), "sweep levels (repeat; default level/2, level)", option="level"
    )
    steps: tuple[int, ...] = described(
        (), "sweep DDIM steps (repeat; default steps/2, steps)", option="step"
    )
    torch_threads: int = described(1, "torch threads of the in-process sweep (0: torch's)")
    device: str = described(
        "auto", "device of the in-process sweep: auto (CUDA when present), cpu, cuda, cuda:N"
    )

    def __post_init__(self) -> None:
        if self.items < 0 or self.torch_threads < 0:
            raise ConfigError(f"SweepSettings: items and torch_threads must be >= 0: {self}")
        if any(not s >= 0 for s in self.scales):
            raise ConfigError(f"SweepSettings.scales must be >= 0: {self.scales}")
        if any(v < 1 for v in (*self.levels, *self.steps)):
            raise ConfigError(f"SweepSettings levels and steps must be >= 1: {self}")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"SweepSettings.targets must be distinct, not empty: {self.targets}")
        if len(set(self.modes)) != len(self.modes) or not set(self.modes) <= set(GUIDANCE_MODES):
            raise ConfigError(
                f"SweepSettings.modes must be distinct values among {GUIDANCE_MODES}: {self.modes}"
            )
        ComputeSettings(device=self.device)  # the device's spelling (resolved when it runs)
