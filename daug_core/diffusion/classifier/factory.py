"""The one place a noise-aware classifier is built from its config: ours
(:class:`~daug_core.diffusion.classifier.model.NoiseAwareClassifier`) or guided-diffusion's
encoder (:class:`~daug_core.diffusion.classifier.guided_diffusion.EncoderClassifier`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from daug_core.diffusion.classifier.model import NoiseAwareClassifier
from daug_core.diffusion.config import ClassifierConfig
from daug_core.rng import seeded_init

if TYPE_CHECKING:  # imported where built: the converter's module is only needed for encoders
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier


def build_classifier(
    cfg: ClassifierConfig, *, generator: torch.Generator
) -> NoiseAwareClassifier | EncoderClassifier:
    """A freshly initialised classifier (CPU, float32): ours, or guided-diffusion's encoder
    when ``cfg.encoder`` is set; weights depend only on ``generator``."""
    with seeded_init(generator):
        return classifier_module(cfg)


def classifier_module(cfg: ClassifierConfig) -> NoiseAwareClassifier | EncoderClassifier:
    """The network ``cfg`` describes, initialised from the global RNG (or on the meta device,
    to load weights into)."""
    if cfg.encoder is not None:
        from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

        return EncoderClassifier(cfg.encoder)
    return NoiseAwareClassifier(cfg)
