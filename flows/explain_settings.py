"""What ``daug explain`` shows (light: the CLI builds its options from it without loading the
models)."""

from __future__ import annotations

from dataclasses import dataclass

from daug_core.settings import ConfigError, described


@dataclass(frozen=True, kw_only=True)
class ExplainSettings:
    """What an explanation shows."""

    neighbours: int = described(5, "similar past studies to show per input (top-k)")
    overlay_size: int = described(512, "side in pixels of the overlay PNGs and DICOM captures")
    dicom: bool = described(True, "write each overlay as a DICOM Secondary Capture too")

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.overlay_size < 16:
            raise ConfigError("neighbours must be >= 1 and overlay_size >= 16")
