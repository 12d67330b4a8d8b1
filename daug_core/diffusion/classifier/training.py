"""Training the noise-aware classifier on images noised at random timesteps.

As in guided-diffusion's ``classifier_train.py``: x_t = q_sample(x_0, t) with t uniform on
[0, max_noise_timestep], loss on classifier(x_t, t). Here the loss is DAug's multi-label BCE with
pos_weight = negatives / positives and NaN labels masked
(:mod:`daug_core.diffusion.classifier.loss`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from daug_core.compute import Compute
from daug_core.diffusion.classifier.factory import build_classifier
from daug_core.diffusion.classifier.loss import masked_bce_with_logits
from daug_core.diffusion.classifier.model import NoiseAwareClassifier
from daug_core.diffusion.config import DiffusionConfig
from daug_core.diffusion.schedule import make_noise_scheduler, q_sample
from daug_core.distributed import SINGLE, Ranks
from daug_core.training import (
    OnStep,
    TrainingResult,
    check_images,
    check_labels,
    make_optimizer,
    noise_draws,
    train_steps,
)

if TYPE_CHECKING:  # imported where built: it loads open_clip
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier


@dataclass
class ClassifierState:
    """Everything needed to continue classifier training (mutated in place by training)."""

    config: DiffusionConfig
    classifier: NoiseAwareClassifier | EncoderClassifier
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # timesteps and noise
    pos_weight: torch.Tensor  # (C,) float32, on the classifier's device
    step: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device


def init_classifier_state(
    config: DiffusionConfig,
    *,
    pos_weight: torch.Tensor | None,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> ClassifierState:
    """Step-0 state. ``pos_weight`` (C,) usually comes from
    :func:`daug_core.diffusion.classifier.loss.pos_weight_from_labels` over the training labels;
    None means
    all ones."""
    classifier = build_classifier(config.classifier, generator=generator).to(device)
    c = config.classifier.num_classes
    weight = torch.ones(c) if pos_weight is None else torch.as_tensor(pos_weight).float()
    if weight.shape != (c,):
        raise ValueError(f"pos_weight must have shape ({c},), got {tuple(weight.shape)}")
    optimizer = make_optimizer(classifier, config.classifier_training)
    return ClassifierState(config, classifier, optimizer, generator, weight.to(device))


def train_classifier(
    state: ClassifierState,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    until_step: int | None = None,
    on_step: OnStep | None = None,
    compute: Compute | None = None,
    ranks: Ranks = SINGLE,
) -> TrainingResult:
    """Train ``state`` in place until ``state.step == until_step`` (default: the config's
    ``num_steps``), the iterator ends, or ``on_step`` returns True.

    ``batches`` yields (images (B, 1, S, S) in [-1, 1], labels (B, C) in {0, 1, NaN}).
    ``compute``: the device the state lives on and the forward pass's autocast (default CPU,
    float32) (weights and optimiser stay float32).
    Data-parallel (``ranks.distributed``): ``batches`` yield this rank's rows of each global
    batch, the classifier runs under DDP and the loss is taken over the logits gathered from
    all ranks (:mod:`daug_core.distributed`): the single-process update on the global batch.
    """
    cfg = state.config
    train_cfg = cfg.classifier_training
    scheduler = make_noise_scheduler(cfg.schedule)
    t_max = (
        cfg.schedule.num_train_timesteps - 1
        if train_cfg.max_noise_timestep is None
        else train_cfg.max_noise_timestep
    )
    num_classes = cfg.classifier.num_classes

    def loss_of(
        batch: tuple[torch.Tensor, torch.Tensor],
        *,
        step: int,
        model: torch.nn.Module,
        compute: Compute,
    ) -> torch.Tensor:
        images, labels = batch
        x0 = check_images(images, image_size=cfg.image_size, step=step)
        y = check_labels(labels, batch=x0.shape[0], num_classes=num_classes, step=step)
        x0 = x0.to(device=compute.device, dtype=torch.float32)
        y = y.to(device=compute.device, dtype=torch.float32)
        t, noise = noise_draws(state.generator, x0, t_max + 1, ranks)
        x_t = q_sample(scheduler, x0, noise, t)  # Ho et al. 2020 eq. 4
        with compute.autocast():
            logits = model(x_t, t)
        # The masked mean over the global batch (ranks' shares may mask different counts).
        return masked_bce_with_logits(
            ranks.gather(logits.float()), ranks.gather_values(y), state.pos_weight
        )

    return train_steps(
        state,
        state.classifier,
        batches,
        loss_of,
        config=train_cfg,
        until_step=until_step,
        on_step=on_step,
        compute=compute,
        ranks=ranks,
    )
