"""The study's settings, apart from the study flow so the CLI builds its options cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from daug_core.settings import ConfigError, check_finite, described
from flows.ablation_grids import GRIDS, HEATMAP_MODES, AblationGrid
from storage.synthetic.config import DEFAULT_PREVALENCES

# Splits of the study release, per patient. Larger held-out splits than the demo's 80/10/10:
# the heatmap scores (validate + test) need >= 30 images of the rarest class and the
# downstream bootstrap >= 300 test images at 2,000 studies.
STUDY_SPLITS: tuple[float, float, float] = (0.7, 0.1, 0.2)
# The demo's finding rates with one change: Lung Lesion (a nodule) 0.08 -> 0.13 of abnormal
# studies (8.5 % of all studies; MIMIC-CXR labels about 3 %): at 0.08 the 2,000-study release
# held 25 held-out Lung Lesion images, short of the 30 per class the heatmap scores need.
STUDY_PREVALENCES: tuple[tuple[str, float], ...] = tuple(
    (name, 0.13 if name == "Lung Lesion" else rate) for name, rate in DEFAULT_PREVALENCES
)


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """What ``daug study`` runs: the release, the models' training, the heatmaps, the ablation
    grids over seeds and the bootstrap. The defaults are the study the README reports."""

    studies: int = described(2000, "synthetic studies (>= 2,000 gives >= 300 test images)")
    seed: int = described(0, "random seed of the release, the generator and the classifier")
    generator_steps: int = described(3000, "generator training steps")
    classifier_steps: int = described(3000, "classifier training steps")
    heatmap_steps: int | None = described(None, "DDIM steps per direction (default: the preset's)")
    seeds: int = described(3, "training seeds of every ablation variant")
    # str (checked below): the CLI builds repeatable options of plain strings only.
    grids: tuple[str, ...] = described(
        ("ours", "classification", "retrieval"),
        "ablation grids (repeat): ours, classification, retrieval (the official code's)",
        option="grid",
    )
    heatmap_modes: tuple[str, ...] = described(
        HEATMAP_MODES,
        "heatmap modes of the ours grid's DAug rows (repeat): channel, add, append (the "
        "official grids run as the official code does: channel)",
        option="heatmap_mode",
    )
    # The tiny preset's 16 epochs are sized for the demo's ~200 training images; 4 epochs over
    # the study's ~1,400 give ~1.7x the demo's optimiser steps per run.
    epochs: int | None = described(4, "contrastive training epochs (None: the preset's)")
    quality: bool = described(
        True, "score softmax, sigmoid and unguided heatmaps on the held-out lesion images"
    )
    resamples: int = described(2000, "bootstrap resamples of every interval and p-value")

    def __post_init__(self) -> None:
        for name in ("studies", "generator_steps", "classifier_steps", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"StudySettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.heatmap_steps is not None and self.heatmap_steps < 1:
            raise ConfigError(f"StudySettings.heatmap_steps must be >= 1, got {self.heatmap_steps}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"StudySettings.epochs must be >= 1, got {self.epochs}")
        for name, known in (("grids", tuple(GRIDS)), ("heatmap_modes", HEATMAP_MODES)):
            chosen = getattr(self, name)
            if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(known):
                raise ConfigError(
                    f"StudySettings.{name} must be distinct values among {list(known)}, "
                    f"got {chosen}"
                )
        check_finite("StudySettings", "resamples", self.resamples, 10)

    @property
    def grid_names(self) -> tuple[AblationGrid, ...]:
        return cast(tuple[AblationGrid, ...], self.grids)

    def modes_of(self, grid: AblationGrid) -> tuple[str, ...]:
        """The heatmap modes a grid's DAug rows run in: every mode for ``ours`` (the question
        of which mode helps), ``channel`` for the official grids (their code's only mode)."""
        return self.heatmap_modes if grid == "ours" else ("channel",)
