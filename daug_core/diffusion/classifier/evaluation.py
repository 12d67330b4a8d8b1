"""How well the noise-aware classifier separates classes at each noise level.

Guidance only works where the classifier still sees the class through the noise, so this is
measured per timestep t (default t in {0, 100, 200, 300, 500}): each batch is noised at every t
(one noise draw per batch, shared across t) and per-class AUC and accuracy are computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from daug_core.diffusion.classifier.model import NoiseAwareClassifier
from daug_core.diffusion.config import NoiseScheduleConfig
from daug_core.diffusion.schedule import make_noise_scheduler, q_sample
from daug_core.evaluation.classification import (
    accuracy_per_class,
    nanmean_or_nan,
    roc_auc_per_class,
)

if TYPE_CHECKING:
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

DEFAULT_EVAL_TIMESTEPS: tuple[int, ...] = (0, 100, 200, 300, 500)


@dataclass(frozen=True)
class NoiseLevelMetrics:
    timestep: int
    auc: tuple[float, ...]  # per class, NaN where a class has one label value only
    accuracy: tuple[float, ...]  # per class, threshold p = 0.5
    mean_auc: float  # over classes with a defined AUC
    mean_accuracy: float
    num_images: int


@dataclass(frozen=True)
class ClassifierEvaluation:
    class_names: tuple[str, ...]
    levels: tuple[NoiseLevelMetrics, ...]

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per (timestep, class): ready for a table artifact."""
        return [
            {
                "timestep": level.timestep,
                "class": name,
                "auc": level.auc[c],
                "accuracy": level.accuracy[c],
            }
            for level in self.levels
            for c, name in enumerate(self.class_names)
        ]


@torch.no_grad()
def evaluate_classifier(
    classifier: NoiseAwareClassifier | EncoderClassifier,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    schedule: NoiseScheduleConfig,
    generator: torch.Generator,
    timesteps: Sequence[int] = DEFAULT_EVAL_TIMESTEPS,
) -> ClassifierEvaluation:
    """AUC / accuracy per class at each timestep over all ``batches`` (images, labels)."""
    scheduler = make_noise_scheduler(schedule)
    device = next(classifier.parameters()).device
    dtype = next(classifier.parameters()).dtype
    probs: dict[int, list[np.ndarray]] = {t: [] for t in timesteps}
    labels: list[np.ndarray] = []
    for images, y in batches:
        x0 = images.to(device=device, dtype=torch.float32)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(device)
        labels.append(y.detach().cpu().double().numpy())
        for t in timesteps:
            t_batch = torch.full((x0.shape[0],), t, device=device, dtype=torch.long)
            x_t = q_sample(scheduler, x0, noise, t_batch)
            logits = classifier(x_t.to(dtype), t_batch).float()
            probs[t].append(torch.sigmoid(logits).cpu().double().numpy())
    names = classifier.class_names
    if not labels:
        raise ValueError("evaluate_classifier got no batches")
    y_all = np.concatenate(labels)
    levels = []
    for t in timesteps:
        p_all = np.concatenate(probs[t])
        auc = roc_auc_per_class(p_all, y_all)
        acc = accuracy_per_class(p_all, y_all)
        levels.append(
            NoiseLevelMetrics(
                timestep=int(t),
                auc=tuple(float(a) for a in auc),
                accuracy=tuple(float(a) for a in acc),
                mean_auc=nanmean_or_nan(auc),
                mean_accuracy=nanmean_or_nan(acc),
                num_images=int(y_all.shape[0]),
            )
        )
    return ClassifierEvaluation(tuple(names), tuple(levels))
