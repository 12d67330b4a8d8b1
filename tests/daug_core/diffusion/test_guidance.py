"""Classifier guidance: targets, log p(target | x), the cond_fn gradient in closed form, and the
direction guidance moves the classifier's probability."""

from __future__ import annotations

import pytest
import torch

from daug_core.diffusion.ddim import invert_to_level
from daug_core.diffusion.generator import build_unet
from daug_core.diffusion.guidance import (
    guided_decode,
    make_cond_fn,
    target_log_prob,
    target_probability,
    target_tensors,
)
from daug_core.diffusion.schedule import alphas_cumprod
from daug_core.diffusion.targets import Target, TargetError, all_targets
from daug_core.labels import SUPER_CLASS_NAMES
from tests.daug_core.helpers import LinearPixelClassifier, micro_config

SIZE = 8
P = SIZE * SIZE


def test_target_parse_and_str():
    t = Target.parse("+No Finding")
    assert (t.class_index, t.direction, t.class_name) == (0, 1, "No Finding")
    t = Target.parse(" -pleural ")
    assert (t.class_index, t.direction, t.class_name) == (5, -1, "Pleural")
    assert str(Target.parse("-Atelectasis/Pneumothorax")) == "-Atelectasis/Pneumothorax"
    assert Target.parse("+b", class_names=("a", "b")).class_index == 1
    for bad in ("No Finding", "+", "+Nothing", "*Pleural"):
        with pytest.raises(TargetError):
            Target.parse(bad)
    assert [str(t) for t in all_targets()] == [f"+{n}" for n in SUPER_CLASS_NAMES]


def closed_form_grad(w, logits, c, direction, mode):
    """grad_x log p(target | x) for logits = W x + b (one row)."""
    if mode == "sigmoid":
        s = torch.sigmoid(logits[c])
        return (1 - s) * w[c] if direction > 0 else -s * w[c]
    p = torch.softmax(logits, dim=0)
    centred = w[c] - p @ w  # grad of log softmax_c = W_c - sum_k p_k W_k
    if mode == "official":  # +c for a finding: softmax over classes 1..; -c: -grad log p_c
        if direction < 0:
            return -centred
        if c > 0:
            q = torch.softmax(logits[1:], dim=0)
            return w[c] - q @ w[1:]
        return centred
    return centred if direction > 0 else -(p[c] / (1 - p[c])) * centred


@pytest.mark.parametrize("mode", ["softmax", "sigmoid", "official"])
def test_cond_fn_equals_closed_form_gradient(mode):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, P, generator=g, dtype=torch.float64) / P**0.5
    b = torch.randn(7, generator=g, dtype=torch.float64)
    clf = LinearPixelClassifier(w, b).double()
    targets = [Target(0, 1, "a"), Target(3, -1, "b"), Target(6, 1, "c"), Target(2, -1, "d")]
    x = torch.randn(len(targets), 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    index, sign = target_tensors(targets, "cpu")
    scale = 3.0
    grad = make_cond_fn(clf, index, sign, mode=mode, scale=scale)(x, torch.zeros(4).long())
    assert grad.shape == x.shape and grad.dtype == torch.float32
    logits = clf(x, None).detach()
    for row, target in enumerate(targets):
        expected = scale * closed_form_grad(
            w, logits[row], target.class_index, target.direction, mode
        )
        torch.testing.assert_close(grad[row].flatten().double(), expected, rtol=1e-5, atol=1e-7)


def test_softmax_pulls_competitors_sigmoid_leaves_them():
    # Orthonormal weight rows: moving x along g changes logit j by W_j . g. The formulas say
    # sigmoid(+c) has W_j . g = 0 for j != c, while softmax(+c) gives W_j . g = -s p_j (every
    # other class pulled down) and softmax(-c) gives +s p_j p_c / (1 - p_c).
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(P, 7, generator=g, dtype=torch.float64))
    w = q.T.contiguous()  # (7, P), orthonormal rows
    clf = LinearPixelClassifier(w).double()
    x = torch.randn(1, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    p = torch.softmax(clf(x, None)[0].detach(), dim=0)
    c, scale = 2, 1.0
    others = [j for j in range(7) if j != c]

    def logit_moves(mode, direction):
        index, sign = target_tensors([Target(c, direction, "x")], "cpu")
        grad = make_cond_fn(clf, index, sign, mode=mode, scale=scale)(x, torch.zeros(1).long())
        return w @ grad.flatten().double()

    sig_up, sig_down = logit_moves("sigmoid", 1), logit_moves("sigmoid", -1)
    soft_up, soft_down = logit_moves("softmax", 1), logit_moves("softmax", -1)
    assert sig_up[others].abs().max() < 1e-6 and sig_down[others].abs().max() < 1e-6
    assert sig_up[c] > 0 > sig_down[c]
    torch.testing.assert_close(soft_up[others], -p[others], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        soft_down[others], p[others] * p[c] / (1 - p[c]), atol=1e-6, rtol=1e-5
    )
    assert soft_up[c] > 0 > soft_down[c]


def test_log_not_c_is_stable_when_class_dominates():
    logits = torch.tensor([[60.0, 0.0, 0.0, 0.0]])
    index, sign = target_tensors([Target(0, -1, "a")], "cpu")
    got = target_log_prob(logits, index, sign, "softmax")
    expected = torch.log(torch.tensor(3.0)) - torch.logsumexp(logits[0], dim=0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[0], expected)
    assert torch.isfinite(target_log_prob(logits, index, sign, "sigmoid")).all()


def test_official_probabilities_leave_no_finding_out_of_a_findings_softmax():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 1.0, 0.2, -0.4]])
    targets = [Target(0, 1, "NF"), Target(2, 1, "b"), Target(3, -1, "c")]
    index, sign = target_tensors(targets, "cpu")
    got = target_log_prob(logits[[0, 0, 1]], index, sign, "official").exp()
    p_all, p_findings = torch.softmax(logits, 1), torch.softmax(logits[:, 1:], 1)
    expected = torch.stack([p_all[0, 0], p_findings[0, 1], 1 - p_all[1, 3]])
    torch.testing.assert_close(got, expected)
    # The findings' softmax ignores the No Finding logit entirely.
    moved = logits.clone()
    moved[:, 0] += 5.0
    again = target_log_prob(moved[[0]], index[1:2], sign[1:2], "official")
    torch.testing.assert_close(again.exp(), p_findings[0, 1:2])


def test_official_mode_needs_no_finding_first():
    from dataclasses import replace

    from daug_core.diffusion.config import TranslationConfig
    from daug_core.diffusion.presets import preset
    from daug_core.settings import ConfigError

    config = preset("tiny")
    official = replace(config, translation=TranslationConfig(mode="official"))
    assert official.translation.mode == "official"
    names = ("Pleural", "No Finding")
    with pytest.raises(ConfigError, match="'No Finding' as the classifier's first class"):
        replace(official, classifier=replace(config.classifier, class_names=names))


@pytest.mark.parametrize("mode", ["softmax", "sigmoid", "official"])
def test_guidance_moves_target_probability_in_requested_direction(mode):
    cfg = micro_config()
    g = torch.Generator().manual_seed(2)
    unet = build_unet(cfg.generator, generator=g).eval()
    pixels = cfg.image_size**2
    q, _ = torch.linalg.qr(torch.randn(pixels, 7, generator=g))
    clf = LinearPixelClassifier(q.T.contiguous() * 4.0)
    ab = alphas_cumprod(cfg.schedule)
    x0 = torch.rand(2, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    level, steps = 200, 10
    x_level = invert_to_level(unet, x0, alphas_cumprod=ab, level=level, steps=steps)
    kwargs = dict(mode=mode, alphas_cumprod=ab, level=level, steps=steps)
    for target in (Target(1, 1, "x"), Target(1, -1, "x"), Target(4, 1, "y")):
        plain = guided_decode(unet, clf, x_level, target, scale=0.0, **kwargs)
        guided = guided_decode(unet, clf, x_level, target, scale=20.0, **kwargs)
        p_plain = target_probability(clf, plain, target, mode=mode)
        p_guided = target_probability(clf, guided, target, mode=mode)
        # The target probability is what guidance increases, for +c and -c alike.
        assert (p_guided - p_plain).min() > 0.05, (target, p_plain, p_guided)
        p_class = torch.sigmoid(clf(guided, None)[:, 1]) - torch.sigmoid(clf(plain, None)[:, 1])
        if target.class_index == 1:
            assert (p_class * target.direction).min() > 0


def test_cond_fn_in_bfloat16_matches_float32():
    cfg = micro_config()
    g = torch.Generator().manual_seed(3)
    from daug_core.diffusion.classifier.factory import build_classifier

    clf = build_classifier(cfg.classifier, generator=g).eval()
    x = torch.randn(3, 1, cfg.image_size, cfg.image_size, generator=g)
    t = torch.full((3,), 100)
    index, sign = target_tensors([Target(0, 1, "a"), Target(3, -1, "b"), Target(5, 1, "c")], "cpu")
    g32 = make_cond_fn(clf, index, sign, mode="softmax", scale=1.0)(x, t)
    g16 = make_cond_fn(clf.to(torch.bfloat16), index, sign, mode="softmax", scale=1.0)(x, t)
    assert g16.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(g16.flatten(1), g32.flatten(1), dim=1)
    assert cosine.min() > 0.98


def test_guided_decode_works_under_inference_mode():
    cfg = micro_config()
    g = torch.Generator().manual_seed(5)
    unet = build_unet(cfg.generator, generator=g).eval()
    clf = LinearPixelClassifier(torch.randn(7, cfg.image_size**2, generator=g) / 32)
    x_level = torch.randn(2, 1, cfg.image_size, cfg.image_size, generator=g)
    kwargs = dict(mode="softmax", scale=5.0, alphas_cumprod=alphas_cumprod(cfg.schedule))
    normal = guided_decode(unet, clf, x_level, Target(0, 1, "a"), level=100, steps=3, **kwargs)
    with torch.inference_mode():
        inside = guided_decode(unet, clf, x_level, Target(0, 1, "a"), level=100, steps=3, **kwargs)
    torch.testing.assert_close(inside, normal)
