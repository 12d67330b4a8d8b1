"""The demo's settings, apart from the demo flow so the CLI builds its options cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from daug_core.settings import described


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """The demo's knobs; the defaults are what `make demo` runs."""

    studies: int = described(300, "synthetic studies")
    seed: int = described(0, "random seed of the release and the models")
    generator_steps: int = described(3000, "generator training steps")
    classifier_steps: int = described(3000, "classifier training steps")
    pretrained: bool = described(
        True,
        "start from the shipped checkpoints when the store is the one they were trained on "
        "(--no-pretrained trains from scratch, ~20 min)",
    )
    heatmap_steps: int | None = described(None, "DDIM steps per direction (default: the preset's)")
    ablation_seeds: int = described(
        1, "seeds of the ablation grid (daug study runs the grids over seeds, with intervals)"
    )
