"""The contrastive trainer's loop and embedding pass (torch only; no files, no Prefect; its
checkpoints are :mod:`daug_core.checkpoints.contrastive`).

A batch is a :class:`ClipBatch`: images (B, 1, S, S) in [0, 1], heatmaps (B, K, S, S) in the
model's ``heatmap_targets`` order, report tokens (B, L) and labels (B, 14) in {0, 1, NaN}.
Class prompts are re-encoded by the text tower at every step, so L_class trains the prompt
embeddings together with the towers (as the official DAug code does).

Optimiser: AdamW without weight decay on biases, norms and the logit scale (open_clip's
training rule), learning rate warmed up linearly for ``warmup_steps`` and then cosine-decayed
to 0 or kept constant (diffusers' schedule helpers).

"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from torch import nn

from daug_core.compute import Compute, cpu_fp32
from daug_core.contrastive.config import (
    ContrastiveTrainingConfig,
    HybridLossConfig,
    OptimizerRecipe,
)
from daug_core.contrastive.losses import HybridContrastiveLoss, HybridLossParts, class_probabilities
from daug_core.contrastive.model import HeatmapClip
from daug_core.distributed import SINGLE, Ranks
from daug_core.training import optimizer_step


class ClipBatch(NamedTuple):
    """One batch for the model: see the module docstring for shapes and ranges."""

    image: torch.Tensor
    heatmaps: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> ClipBatch:
        return ClipBatch(*(t.to(device, non_blocking=True) for t in self))


class PromptTokens(NamedTuple):
    """Tokenised class prompts (C, L), and negative prompts for the paired variant."""

    positive: torch.Tensor
    negative: torch.Tensor | None

    def to(self, device: torch.device) -> PromptTokens:
        negative = None if self.negative is None else self.negative.to(device)
        return PromptTokens(self.positive.to(device), negative)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class EpochStats:
    """Mean losses of one pass (training: over steps; evaluation: over batches)."""

    loss: float
    clip: float
    cls: float
    batches: int
    items: int
    seconds: float


@dataclass(frozen=True)
class Embedded:
    """Everything evaluation needs from one split: L2-normalised embeddings, class
    probabilities (docs/metrics.md "Classification AUC") and the losses of the pass."""

    image: np.ndarray  # (N, D)
    text: np.ndarray  # (N, D)
    probabilities: np.ndarray  # (N, C)
    labels: np.ndarray  # (N, C) in {0, 1, NaN}
    stats: EpochStats


# ---- optimiser ------------------------------------------------------------------------------
def no_weight_decay(name: str, parameter: nn.Parameter, recipe: OptimizerRecipe) -> bool:
    """``clip`` (open_clip's rule): biases, norms, every 1-d parameter and the logit scale.
    ``official``: biases and LayerNorm parameters. The official code lists BERT's names
    (``bias``, ``LayerNorm.bias``, ``LayerNorm.weight``), which none of CLIP's norms matches,
    so as written only biases escape decay; we keep its evident intent and exclude the norms
    (open_clip's ``ln_*``) too."""
    if recipe == "official":
        module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]  # "ln_1" of "...ln_1.weight"
        return name.endswith("bias") or module.startswith("ln_")
    return parameter.ndim < 2 or "bias" in name or "ln" in name or "logit_scale" in name


def make_optimizer(model: nn.Module, config: ContrastiveTrainingConfig) -> torch.optim.AdamW:
    """AdamW in the recipe ``config.optimizer`` (:func:`no_weight_decay` for the groups):
    ``clip`` with CLIP's betas for transformers (Radford et al. 2021, Sec. 2.5), ``official``
    with torch's defaults, as the official code builds it."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            exempt = no_weight_decay(name, parameter, config.optimizer)
            (no_decay if exempt else decay).append(parameter)
    betas, eps = ((0.9, 0.98), 1e-6) if config.optimizer == "clip" else ((0.9, 0.999), 1e-8)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=betas,
        eps=eps,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: ContrastiveTrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for ``warmup_steps`` (capped at the run length), then cosine to 0 at
    ``total_steps`` or constant."""
    warmup = min(config.warmup_steps, max(0, total_steps - 1))
    if config.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
    return get_constant_schedule_with_warmup(optimizer, warmup)


# ---- one pass -------------------------------------------------------------------------------
def encode_prompts(
    model: HeatmapClip, prompts: PromptTokens
) -> tuple[torch.Tensor, torch.Tensor | None]:
    negative = model.encode_text(prompts.negative) if prompts.negative is not None else None
    return model.encode_text(prompts.positive), negative


def fit_batch(batch: ClipBatch, size: int) -> ClipBatch:
    """Images and heatmaps resampled together to the model's side (antialiased bilinear):
    the paper's generator works at 512 px, its CLIP at 256 px, on one store."""
    if batch.image.shape[-2:] == (size, size):
        return batch

    def resize(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 0:
            return x.new_zeros((*x.shape[:2], size, size))
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)

    return batch._replace(image=resize(batch.image), heatmaps=resize(batch.heatmaps))


class ContrastiveForward(nn.Module):
    """One batch through both towers and the class prompts: the module a data-parallel run
    wraps in DDP (DDP synchronises the gradients of what runs inside its ``forward``)."""

    def __init__(self, model: HeatmapClip) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: ClipBatch, prompts: PromptTokens
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        batch = fit_batch(batch, self.model.image_size)
        image = self.model.encode_image(batch.image, batch.heatmaps)
        text = self.model.encode_text(batch.tokens)
        return image, text, *encode_prompts(self.model, prompts)


def _batch_loss(
    model: HeatmapClip,
    loss_fn: HybridContrastiveLoss,
    batch: ClipBatch,
    prompt_emb: tuple[torch.Tensor, torch.Tensor | None],
) -> tuple[HybridLossParts, torch.Tensor, torch.Tensor]:
    batch = fit_batch(batch, model.image_size)
    image = model.encode_image(batch.image, batch.heatmaps)
    text = model.encode_text(batch.tokens)
    positive, negative = prompt_emb
    parts = loss_fn(image, text, positive, batch.labels, model.logit_scale, negative)
    return parts, image, text


class _Means:
    def __init__(self) -> None:
        self.sums = np.zeros(3)
        self.batches = 0
        self.items = 0

    def add(self, parts: HybridLossParts, items: int) -> None:
        self.sums += [float(p.detach()) for p in parts]
        self.batches += 1
        self.items += items

    def stats(self, seconds: float) -> EpochStats:
        loss, clip, cls = (float(v) for v in self.sums / max(self.batches, 1))
        return EpochStats(loss, clip, cls, self.batches, self.items, seconds)


MAX_LOGIT_SCALE = 100.0


def clamp_logit_scale(model: HeatmapClip) -> None:
    """A learned scale stays <= 100, as CLIP clips it (Radford et al. 2021, Sec. 2.5)."""
    log_scale = model.clip.logit_scale
    if log_scale.requires_grad:
        with torch.no_grad():
            log_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


def train_epoch(
    model: HeatmapClip,
    loss_fn: HybridContrastiveLoss,
    batches: Iterable[ClipBatch],
    prompts: PromptTokens,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    on_step: Callable[[int, float], None] | None = None,
    compute: Compute | None = None,
    *,
    ranks: Ranks = SINGLE,
    forward: nn.Module | None = None,
    global_negatives: bool = True,
) -> EpochStats:
    """One pass of optimiser steps over ``batches``; batches of one pair are skipped (InfoNCE
    has no negatives there). Batches and prompts move to the model's device; ``compute`` is
    the model's device and the forward passes' autocast (weights and optimiser stay float32).

    Data-parallel (``ranks.distributed``): ``batches`` are this rank's rows of each global
    batch and ``forward`` is :class:`ContrastiveForward` under DDP (:meth:`Ranks.wrap`). The
    embeddings and labels of all ranks are gathered with gradient before the loss, so the
    contrastive negatives and the class loss's masked mean are the global batch's
    (:mod:`daug_core.distributed`); ``global_negatives=False`` keeps each rank's loss local
    (open_clip's ``local_loss``, cheaper and *not* the single-process update). Reported losses
    are then the global batch's, the same on every rank."""
    model.train()
    amp = compute or cpu_fp32()
    scaler = amp.grad_scaler()
    prompts = prompts.to(amp.device)
    step = forward if forward is not None else ContrastiveForward(model)
    pool = ranks if global_negatives else SINGLE
    means = _Means()
    start = time.perf_counter()
    for batch in batches:
        if batch.image.shape[0] * ranks.world_size < 2:
            continue
        batch = batch.to(amp.device)
        with amp.autocast():
            image, text, positive, negative = step(batch, prompts)
            parts = loss_fn(
                pool.gather(image),
                pool.gather(text),
                positive,
                pool.gather_values(batch.labels),
                model.logit_scale,
                negative,
            )
        if not torch.isfinite(parts.total):
            raise FloatingPointError(f"non-finite loss at step {means.batches + 1}: {parts}")
        optimizer_step(parts.total, optimizer, scaler)
        scheduler.step()
        clamp_logit_scale(model)
        means.add(parts, batch.image.shape[0] * ranks.world_size)
        if on_step is not None:
            on_step(means.batches, float(parts.total.detach()))
    return means.stats(time.perf_counter() - start)


@torch.no_grad()
def embed(
    model: HeatmapClip,
    loss_fn: HybridContrastiveLoss,
    batches: Iterable[ClipBatch],
    prompts: PromptTokens,
    compute: Compute | None = None,
) -> Embedded:
    """Embeddings, class probabilities and mean losses of a split (model in eval mode, on
    ``compute``'s device and autocast); embeddings come back as float32 numpy arrays."""
    model.eval()
    amp = compute or cpu_fp32()
    with amp.autocast():  # fixed in eval: the prompts are encoded once, not per batch
        positive, negative = encode_prompts(model, prompts.to(amp.device))
    prompt_emb = (positive.float(), None if negative is None else negative.float())
    means = _Means()
    start = time.perf_counter()
    images, texts, probs, labels = [], [], [], []
    for batch in batches:
        with amp.autocast():
            parts, image, text = _batch_loss(model, loss_fn, batch.to(amp.device), prompt_emb)
        image, text = image.float(), text.float()
        probabilities = _probabilities(model, loss_fn.config, image, prompt_emb)
        if batch.image.shape[0] >= 2:
            means.add(parts, batch.image.shape[0])
        images.append(image.cpu().numpy())
        texts.append(text.cpu().numpy())
        probs.append(probabilities.cpu().numpy())
        labels.append(batch.labels.cpu().numpy())
    if not images:
        raise ValueError("embed() got no batches")
    return Embedded(
        image=np.concatenate(images),
        text=np.concatenate(texts),
        probabilities=np.concatenate(probs),
        labels=np.concatenate(labels),
        stats=means.stats(time.perf_counter() - start),
    )


def _probabilities(
    model: HeatmapClip,
    loss: HybridLossConfig,
    image: torch.Tensor,
    prompt_emb: tuple[torch.Tensor, torch.Tensor | None],
) -> torch.Tensor:
    return class_probabilities(
        image, *prompt_emb, model.logit_scale, loss.class_logit_bias, loss.class_loss
    )


@dataclass(frozen=True)
class ImageScores:
    """What the model says of images without reports: L2-normalised image embeddings (N, D)
    and class probabilities (N, C), float32."""

    image: np.ndarray
    probabilities: np.ndarray


@torch.no_grad()
def score_images(
    model: HeatmapClip,
    loss: HybridLossConfig,
    prompts: PromptTokens,
    image: torch.Tensor,
    heatmaps: torch.Tensor,
    compute: Compute | None = None,
) -> ImageScores:
    """Embeddings and class probabilities of images (B, 1, S, S) with their heatmaps, exactly
    as :func:`embed` scores a split (same resampling, prompts and probability rule), for
    images that come with no report (a new study)."""
    model.eval()
    amp = compute or cpu_fp32()
    with amp.autocast():
        positive, negative = encode_prompts(model, prompts.to(amp.device))
        empty = image.new_zeros((image.shape[0], 0))
        batch = fit_batch(ClipBatch(image, heatmaps, empty, empty), model.image_size)
        embedding = model.encode_image(batch.image.to(amp.device), batch.heatmaps.to(amp.device))
    prompt_emb = (positive.float(), None if negative is None else negative.float())
    probabilities = _probabilities(model, loss, embedding.float(), prompt_emb)
    return ImageScores(embedding.float().cpu().numpy(), probabilities.cpu().numpy())


def steps_per_epoch(items: int, batch_size: int) -> int:
    """Optimiser steps of one epoch with drop_last (a last batch of one pair is useless)."""
    return max(1, math.floor(items / batch_size))
