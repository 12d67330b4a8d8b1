"""Multi-label BCE with per-class positive weights and masked (NaN) labels, as DAug's classifier
uses (``BCEWithLogitsLoss(pos_weight = negatives / positives)``). Pure functions, no loop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pos_weight_from_labels(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """negatives / positives per class over (N, C) labels in {0, 1, NaN}; NaN is ignored.

    A class with no positive (or no negative) label gets weight 1.0: there is nothing to balance.
    """
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if y.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {tuple(y.shape)}")
    known = ~torch.isnan(y)
    pos = ((y == 1) & known).sum(dim=0).double()
    neg = ((y == 0) & known).sum(dim=0).double()
    weight = torch.where((pos > 0) & (neg > 0), neg / pos.clamp_min(1), torch.ones_like(pos))
    return weight.float()


def masked_bce_with_logits(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``-[w y log s(z) + (1 - y) log(1 - s(z))]`` over the entries whose label is not NaN.

    Returns 0 (with a gradient path) when every label is masked.
    """
    known = ~torch.isnan(labels)
    targets = torch.where(known, labels, torch.zeros_like(labels)).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    mask = known.to(per_entry.dtype)
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)
