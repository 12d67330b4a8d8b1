"""DAug's hybrid contrastive loss (arXiv 2412.04828, Sec. 3.3), in open_clip ``loss.py`` style:
pure functions of embeddings, no model and no training-loop knowledge.

    L = w · L_CLIP(image, report) + (1 − w) · L_class(image, class prompts, labels)

- L_CLIP: the symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3), over
  s · x_i · t_j for L2-normalised image x and report t embeddings, matching pairs on the diagonal
  (``open_clip.loss.ClipLoss`` without cross-device gathering).
- L_class ``bce`` (official ``label_bce: true``): logits z_ic = s · x_i · p_c + b against each
  class prompt p_c, binary cross-entropy per label. The official code uses the same fixed s = 100
  as L_CLIP and no bias (b = 0); ``HybridLossConfig.class_logit_bias`` allows one.
- L_class ``paired`` (official ``label_bce: false``): per class a 2-way softmax over
  (s · x_i · n_c, s · x_i · p_c) (negative, positive prompt), cross-entropy against the label.

Labels are (B, C) in {0, 1} with NaN for "masked" (uncertain under the ``ignore`` policy); the
class losses average over the unmasked entries (the official code has no masked entries: it maps
uncertain to negative). Every function takes the logit scale s as an argument; the model owns it
(:attr:`daug_core.contrastive.model.HeatmapClip.logit_scale`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from daug_core.contrastive.config import HybridLossConfig
from daug_core.diffusion.classifier.loss import masked_bce_with_logits

ClassLossMode = Literal["bce", "paired"]


class HybridLossParts(NamedTuple):
    """The weighted total and its two unweighted terms (scalars)."""

    total: torch.Tensor
    clip: torch.Tensor
    cls: torch.Tensor


def clip_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE: ½ [CE(s X Tᵀ, diag) + CE(s T Xᵀ, diag)] over a batch of B pairs."""
    _check_pairs(image_emb, text_emb)
    logits_per_image = logit_scale * image_emb @ text_emb.T
    targets = torch.arange(image_emb.shape[0], device=image_emb.device)
    return (
        F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)
    ) / 2


def class_logits(
    image_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """z = s · X Pᵀ + b, (B, C): scaled cosine of each image to each class prompt."""
    return logit_scale * image_emb @ prompt_emb.T + bias


def paired_class_logits(
    image_emb: torch.Tensor,
    positive_emb: torch.Tensor,
    negative_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """(B, C, 2) logits, index 0 the negative prompt and 1 the positive one (official order)."""
    if positive_emb.shape != negative_emb.shape:
        raise ValueError(
            f"positive {tuple(positive_emb.shape)} and negative {tuple(negative_emb.shape)} "
            f"prompt embeddings differ in shape"
        )
    negative = logit_scale * image_emb @ negative_emb.T
    positive = logit_scale * image_emb @ positive_emb.T
    return torch.stack([negative, positive], dim=-1)


def bce_class_loss(
    image_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    bias: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Mean binary cross-entropy of σ(s · x · p_c + b) against the unmasked labels."""
    logits = class_logits(image_emb, prompt_emb, logit_scale, bias)
    _check_labels(labels, logits.shape)
    return masked_bce_with_logits(logits, labels.to(logits.dtype))


def paired_class_loss(
    image_emb: torch.Tensor,
    positive_emb: torch.Tensor,
    negative_emb: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> torch.Tensor:
    """Mean 2-way cross-entropy of softmax(s · x · n_c, s · x · p_c) against the unmasked labels.

    Equal to BCE on the logit s · x · (p_c − n_c): the pair softmax is a sigmoid of the difference.
    """
    logits = paired_class_logits(image_emb, positive_emb, negative_emb, logit_scale)
    _check_labels(labels, logits.shape[:2])
    known = ~torch.isnan(labels)
    targets = torch.where(known, labels, torch.zeros_like(labels)).long()
    per_entry = F.cross_entropy(
        logits.reshape(-1, 2), targets.reshape(-1), reduction="none"
    ).reshape(labels.shape)
    mask = known.to(per_entry.dtype)
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)


def class_probabilities(
    image_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    negative_emb: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    bias: torch.Tensor | float = 0.0,
    mode: ClassLossMode = "bce",
) -> torch.Tensor:
    """P(label c | image), (B, C), for the classification AUC (docs/metrics.md).

    ``bce``: σ(s · x · p_c + b); ``paired``: the positive entry of the pair softmax
    (``negative_emb`` required, ``bias`` unused). Per-class ranks, hence AUC, do not depend on s
    or b; the probabilities do.
    """
    if mode == "bce":
        return torch.sigmoid(class_logits(image_emb, prompt_emb, logit_scale, bias))
    if mode == "paired":
        if negative_emb is None:
            raise ValueError("mode 'paired' needs the negative prompt embeddings")
        logits = paired_class_logits(image_emb, prompt_emb, negative_emb, logit_scale)
        return logits.softmax(dim=-1)[..., 1]
    raise ValueError(f"mode must be 'bce' or 'paired', got {mode!r}")


class HybridContrastiveLoss(nn.Module):
    """L = w · L_CLIP + (1 − w) · L_class with the numbers of a :class:`HybridLossConfig`.

    Stateless (the logit scale is an argument, owned by the model); a module so a training loop
    can hold it like open_clip's ``ClipLoss``.
    """

    def __init__(self, config: HybridLossConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        image_emb: torch.Tensor,
        report_emb: torch.Tensor,
        class_emb: torch.Tensor,
        labels: torch.Tensor,
        logit_scale: torch.Tensor | float,
        negative_emb: torch.Tensor | None = None,
    ) -> HybridLossParts:
        """Loss of a batch: image/report embeddings (B, D), class prompt embeddings (C, D) in
        ``config.class_names`` order, labels (B, C) in {0, 1, NaN}; ``negative_emb`` (C, D) for
        the paired variant."""
        cfg = self.config
        if class_emb.shape[0] != cfg.num_classes:
            raise ValueError(
                f"{class_emb.shape[0]} class prompt embeddings for {cfg.num_classes} classes"
            )
        clip = clip_contrastive_loss(image_emb, report_emb, logit_scale)
        if cfg.class_loss == "bce":
            cls = bce_class_loss(image_emb, class_emb, labels, logit_scale, cfg.class_logit_bias)
        else:
            if negative_emb is None:
                raise ValueError("class_loss 'paired' needs the negative prompt embeddings")
            cls = paired_class_loss(image_emb, class_emb, negative_emb, labels, logit_scale)
        total = cfg.weight * clip + (1.0 - cfg.weight) * cls
        return HybridLossParts(total=total, clip=clip, cls=cls)


def _check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)} embeddings must "
            f"both be (B, D) with the same B and D"
        )


def _check_labels(labels: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> None:
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels must be {tuple(shape)}, got {tuple(labels.shape)}")
    known = labels[~torch.isnan(labels)]
    if not ((known == 0) | (known == 1)).all():
        # A raw -1 (uncertain) would silently become a target of -1 in BCE.
        raise ValueError("labels must be 0, 1 or NaN (masked); binarize raw CheXpert values first")
