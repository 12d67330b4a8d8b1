"""Hybrid contrastive loss: closed-form 2x2 cases, open_clip agreement, masking, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from daug_core.contrastive.config import HybridLossConfig
from daug_core.contrastive.losses import (
    HybridContrastiveLoss,
    bce_class_loss,
    class_probabilities,
    clip_contrastive_loss,
    paired_class_loss,
)

NAN = float("nan")
E1 = torch.tensor([1.0, 0.0])
E2 = torch.tensor([0.0, 1.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def two_class_config(**changes: object) -> HybridLossConfig:
    fields: dict[str, object] = {
        "class_names": ("a", "b"),
        "class_prompts": ("an a.", "a b."),
        "negative_prompts": ("no a.", "no b."),
        **changes,
    }
    return HybridLossConfig(**fields)  # type: ignore[arg-type]


# --- InfoNCE ---------------------------------------------------------------------------------


def test_infonce_matches_the_closed_form_on_orthogonal_pairs() -> None:
    images = torch.stack([E1, E2])
    # Matching pairs: logits s·I; each row's CE is log(1 + e^{-s}).
    assert clip_contrastive_loss(images, images, 2.0).item() == pytest.approx(softplus(-2.0))
    # Swapped pairs: the target logit is 0, the other s.
    swapped = torch.stack([E2, E1])
    assert clip_contrastive_loss(images, swapped, 2.0).item() == pytest.approx(softplus(2.0))


def test_infonce_is_symmetric_in_its_two_directions() -> None:
    # image 0 matches text 0 (cos 1) and text 1 (cos c); image 1 is orthogonal to text 0.
    c = 0.6
    images = torch.stack([E1, E2])
    texts = torch.stack([E1, torch.tensor([c, math.sqrt(1 - c * c)])])
    s = 3.0
    row0 = -math.log(math.exp(s) / (math.exp(s) + math.exp(s * c)))
    row1 = -math.log(math.exp(s * math.sqrt(1 - c * c)) / (1 + math.exp(s * math.sqrt(1 - c * c))))
    col0 = -math.log(math.exp(s) / (math.exp(s) + 1))
    col1 = -math.log(
        math.exp(s * math.sqrt(1 - c * c)) / (math.exp(s * c) + math.exp(s * math.sqrt(1 - c * c)))
    )
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert clip_contrastive_loss(images, texts, s).item() == pytest.approx(expected, rel=1e-6)


def test_weight_one_equals_open_clip_clip_loss() -> None:
    images, texts = unit(8, 16, 0), unit(8, 16, 1)
    scale = torch.tensor(14.3)
    labels = torch.randint(0, 2, (8, 2), generator=torch.Generator().manual_seed(2)).float()
    parts = HybridContrastiveLoss(two_class_config(weight=1.0))(
        images, texts, unit(2, 16, 3), labels, scale
    )
    expected = ClipLoss()(images, texts, scale)
    torch.testing.assert_close(parts.total, expected)
    torch.testing.assert_close(parts.clip, expected)


# --- class terms ---------------------------------------------------------------------------


def test_bce_matches_the_closed_form_with_a_masked_label() -> None:
    images = torch.stack([E1, E2])
    prompts = torch.stack([E1, E2])
    labels = torch.tensor([[1.0, 0.0], [1.0, NAN]])
    # logits = 2·I − 1 = [[1, −1], [−1, 1]]; entry (1, 1) is masked.
    loss = bce_class_loss(images, prompts, labels, logit_scale=2.0, bias=-1.0)
    expected = (softplus(-1.0) + softplus(-1.0) + softplus(1.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_masked_entries_do_not_change_the_loss() -> None:
    images, prompts = unit(4, 8, 0), unit(3, 8, 1)
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    masked = labels.clone()
    masked[0, 1] = masked[2, 2] = NAN
    logits = 5.0 * images @ prompts.T
    keep = ~torch.isnan(masked)
    expected = F.binary_cross_entropy_with_logits(logits[keep], labels[keep])
    torch.testing.assert_close(bce_class_loss(images, prompts, masked, 5.0), expected)
    everything_masked = torch.full_like(labels, NAN)
    assert bce_class_loss(images, prompts, everything_masked, 5.0).item() == 0.0
    assert paired_class_loss(images, prompts, unit(3, 8, 2), everything_masked, 5.0).item() == 0.0


def test_paired_matches_the_closed_form() -> None:
    image = E1[None]
    positive, negative = E1[None], E2[None]
    # logits (negative, positive) = (0, s): CE is log(1 + e^{-s}) for label 1, log(1 + e^{s}) for 0.
    one = paired_class_loss(image, positive, negative, torch.tensor([[1.0]]), 3.0)
    zero = paired_class_loss(image, positive, negative, torch.tensor([[0.0]]), 3.0)
    assert one.item() == pytest.approx(softplus(-3.0))
    assert zero.item() == pytest.approx(softplus(3.0))
    masked = paired_class_loss(
        torch.stack([E1, E2]),
        torch.stack([E1, E2]),
        torch.stack([E2, E1]),
        torch.tensor([[1.0, NAN], [NAN, 0.0]]),
        3.0,
    )
    assert masked.item() == pytest.approx((softplus(-3.0) + softplus(3.0)) / 2)


def test_paired_equals_bce_on_the_difference_of_prompts() -> None:
    images, positive, negative = unit(5, 8, 0), unit(3, 8, 1), unit(3, 8, 2)
    labels = torch.tensor([[1, 0, NAN], [0, 1, 1], [1, 1, 0], [0, 0, 0], [NAN, 1, 0]])
    paired = paired_class_loss(images, positive, negative, labels, 7.0)
    difference_logits = 7.0 * images @ (positive - negative).T
    keep = ~torch.isnan(labels)
    expected = F.binary_cross_entropy_with_logits(difference_logits[keep], labels[keep])
    torch.testing.assert_close(paired, expected)


# --- the hybrid ----------------------------------------------------------------------------


def test_weight_zero_is_the_class_term_and_weights_mix_linearly() -> None:
    images, reports, prompts = unit(6, 8, 0), unit(6, 8, 1), unit(2, 8, 2)
    labels = torch.tensor([[1, 0], [0, 1], [1, NAN], [0, 0], [1, 1], [NAN, 0]])
    scale = torch.tensor(10.0)
    zero = HybridContrastiveLoss(two_class_config(weight=0.0))(
        images, reports, prompts, labels, scale
    )
    torch.testing.assert_close(zero.total, bce_class_loss(images, prompts, labels, scale))
    torch.testing.assert_close(zero.total, zero.cls)
    mixed = HybridContrastiveLoss(two_class_config(weight=0.7, class_logit_bias=-2.0))(
        images, reports, prompts, labels, scale
    )
    torch.testing.assert_close(mixed.cls, bce_class_loss(images, prompts, labels, scale, -2.0))
    torch.testing.assert_close(mixed.total, 0.7 * mixed.clip + 0.3 * mixed.cls)


def test_paired_hybrid_needs_negatives() -> None:
    images, prompts = unit(2, 4, 0), unit(2, 4, 1)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = HybridContrastiveLoss(two_class_config(class_loss="paired"))
    with pytest.raises(ValueError, match="negative"):
        loss(images, images, prompts, labels, 5.0)
    parts = loss(images, images, prompts, labels, 5.0, negative_emb=unit(2, 4, 2))
    torch.testing.assert_close(
        parts.cls, paired_class_loss(images, prompts, unit(2, 4, 2), labels, 5.0)
    )


def test_gradients_reach_every_embedding_and_a_learned_scale() -> None:
    images = unit(4, 8, 0).requires_grad_()
    reports = unit(4, 8, 1).requires_grad_()
    prompts = unit(2, 8, 2).requires_grad_()
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    labels = torch.tensor([[1, 0], [0, NAN], [1, 1], [0, 0]], dtype=torch.float32)
    parts = HybridContrastiveLoss(two_class_config())(
        images, reports, prompts, labels, log_scale.exp()
    )
    parts.total.backward()
    for tensor in (images, reports, prompts, log_scale):
        assert tensor.grad is not None
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_bad_labels_and_shapes_are_refused() -> None:
    images, prompts = unit(2, 4, 0), unit(2, 4, 1)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        bce_class_loss(images, prompts, torch.tensor([[1.0, -1.0], [0.0, 0.0]]), 5.0)
    with pytest.raises(ValueError, match="labels must be"):
        bce_class_loss(images, prompts, torch.zeros(2, 3), 5.0)
    with pytest.raises(ValueError, match="class prompt embeddings"):
        HybridContrastiveLoss(two_class_config())(
            images, images, unit(3, 4, 2), torch.zeros(2, 2), 5.0
        )
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        clip_contrastive_loss(images, unit(3, 4, 2), 5.0)


# --- probabilities for evaluation ----------------------------------------------------------


def test_class_probabilities_match_the_loss_definitions() -> None:
    images = torch.stack([E1, E2])
    prompts = torch.stack([E1, E2])
    bce = class_probabilities(images, prompts, None, 2.0, bias=-1.0, mode="bce")
    s = torch.sigmoid(torch.tensor(1.0)).item()
    torch.testing.assert_close(bce, torch.tensor([[s, 1 - s], [1 - s, s]]))
    negatives = torch.stack([E2, E1])
    paired = class_probabilities(images, prompts, negatives, 2.0, mode="paired")
    p = 1 / (1 + math.exp(-2.0))  # softmax over (0, 2) for a match, (2, 0) otherwise
    torch.testing.assert_close(paired, torch.tensor([[p, 1 - p], [1 - p, p]]))
    with pytest.raises(ValueError, match="negative"):
        class_probabilities(images, prompts, None, 2.0, mode="paired")
