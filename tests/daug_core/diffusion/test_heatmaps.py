"""Heatmaps: the definition, the batched shared-inversion path against the per-class reference,
bfloat16 on CPU, and one guided step of the paper preset at 512 px."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from daug_core.diffusion.classifier.factory import build_classifier
from daug_core.diffusion.config import InferenceConfig
from daug_core.diffusion.generator import build_unet
from daug_core.diffusion.guidance import guided_decode, target_probability
from daug_core.diffusion.heatmaps import (
    compute_heatmaps,
    compute_heatmaps_reference,
    heatmap,
    minmax,
    prepare_model,
    signed_difference,
    smooth,
)
from daug_core.diffusion.presets import preset
from daug_core.diffusion.schedule import alphas_cumprod
from daug_core.diffusion.targets import Target, all_targets
from tests.daug_core.helpers import make_models, micro_config


def test_heatmap_definition():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    # minmax makes the heatmap blind to a global brightness/contrast change of the counterfactual.
    assert heatmap(signed_difference(x0, 3.0 * x0 + 0.5)).abs().max() < 1e-6
    assert torch.allclose(minmax(x0).amin(dim=(-2, -1)), torch.zeros(2, 1))
    assert torch.allclose(minmax(x0).amax(dim=(-2, -1)), torch.ones(2, 1))
    x_cf = x0.clone()
    x_cf[:, :, 2, 3] += 0.5  # brighter pixel, the image's range otherwise unchanged
    x_cf[:, :, 0, 0] = x0.amin() - 1.0  # and a new minimum
    signed = signed_difference(x0, x_cf)
    assert torch.equal(heatmap(signed), signed.abs())
    assert (heatmap(signed) >= 0).all() and (heatmap(signed) <= 1).all()
    flat = torch.zeros(1, 1, 4, 4)
    assert torch.equal(minmax(flat), flat)  # no contrast: zeros, not NaN


def test_raw_difference_is_the_change_in_pixel_units():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    # A global brightening by 0.2 in [-1, 1] space is 0.1 in store pixels, everywhere: minmax
    # hides it (0), raw shows it as it is.
    raw = heatmap(signed_difference(x0, x0 + 0.2, "raw"))
    torch.testing.assert_close(raw, torch.full_like(x0, 0.1))
    x_cf = x0.clone()
    x_cf[:, :, 2, 3] -= 0.6
    signed = signed_difference(x0, x_cf, "raw")
    assert signed[:, :, 2, 3].allclose(torch.tensor(-0.3)) and signed.abs().sum() == 0.6
    assert (
        heatmap(signed_difference(-torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), "raw")).max()
        == 1
    )
    with pytest.raises(ValueError, match="difference"):
        signed_difference(x0, x_cf, "ratio")  # type: ignore[arg-type]


def test_smoothing_spreads_a_spike_symmetrically_and_keeps_its_mass():
    spike = torch.zeros(1, 1, 15, 15)
    spike[..., 7, 7] = 1.0
    assert torch.equal(smooth(spike, 0.0), spike)
    blurred = smooth(spike, 1.5)
    assert blurred.argmax() == spike.argmax()  # the peak stays where it was
    assert blurred[..., 7, 7] < 0.1  # 1 / (2 pi 1.5^2) = 0.071 for a Gaussian
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(blurred, blurred.flip(-1).flip(-2))
    torch.testing.assert_close(blurred, blurred.transpose(-1, -2))
    # Blur of the absolute change: a moved edge (+ beside -) does not cancel out.
    edge = torch.zeros(1, 1, 15, 15)
    edge[..., 7, 6], edge[..., 7, 8] = 0.5, -0.5
    assert (
        heatmap(signed_difference(torch.zeros_like(edge), 2 * edge, "raw"), 1.5)[..., 7, 7] > 0.05
    )


def test_compute_heatmaps_applies_the_configured_definition():
    # Same counterfactuals under both definitions (the translation is the same); only the
    # comparison with x0 differs, as the config says.
    cfg_raw = micro_config(scale=10.0, difference="raw", smoothing_sigma=1.0)
    cfg_official = micro_config(scale=10.0, difference="minmax", smoothing_sigma=0.0)
    unet, classifier, x0 = make_models(cfg_raw, seed=5)
    targets = all_targets()[:2]
    raw = compute_heatmaps(unet, classifier, x0, targets, cfg_raw)
    official = compute_heatmaps(unet, classifier, x0, targets, cfg_official)
    torch.testing.assert_close(raw.counterfactuals, official.counterfactuals)
    expected = smooth(((raw.counterfactuals - x0) / 2).abs(), 1.0)
    torch.testing.assert_close(raw.heatmaps, expected)
    official_heat = heatmap(signed_difference(x0, official.counterfactuals))
    torch.testing.assert_close(official.heatmaps, official_heat)
    assert raw.heatmaps.min() >= 0 and raw.heatmaps.max() <= 1


@pytest.mark.parametrize(
    ("mode", "targets"),
    [
        ("softmax", all_targets()),
        ("sigmoid", (Target.parse("+No Finding"), Target.parse("-Pleural"))),
    ],
)
def test_batched_path_equals_reference_path(mode, targets):
    # Same math, different batching: rows of 5 cut across images (B = 3, K = 7 -> 21 rows).
    # Only float summation order differs (oneDNN kernels per batch size), measured ~7e-6 on the
    # counterfactuals after 20 UNet and 10 guided classifier calls at the paper's scale 100.
    cfg = micro_config(mode=mode, scale=100.0, max_batch=5, inversion_refinements=1)
    unet, classifier, x0 = make_models(cfg, seed=1)
    fast = compute_heatmaps(unet, classifier, x0, targets, cfg)
    ref = compute_heatmaps_reference(unet, classifier, x0, targets, cfg)
    k = len(targets)
    assert fast.heatmaps.shape == (3, k, cfg.image_size, cfg.image_size)
    assert fast.prob_before.shape == fast.prob_after.shape == (3, k)
    assert fast.targets == tuple(targets)
    for name in ("heatmaps", "signed", "counterfactuals", "prob_before", "prob_after"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(ref, name), atol=1e-4, rtol=0, msg=name
        )
    # Guidance changed the images (the heatmaps are not just reconstruction error).
    assert fast.heatmaps.mean() > 0.01


class CountingUNet(torch.nn.Module):
    """The UNet, counting the image rows it is called on."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.unet(x, t)


def test_unguided_heatmaps_decode_once_per_image_and_equal_the_reference():
    # scale 0: no classifier gradient, so all K decodings of an image are one DDIM decode.
    cfg = micro_config(scale=0.0, max_batch=5, inversion_refinements=1)
    unet, classifier, x0 = make_models(cfg, seed=3)
    targets = all_targets()
    counting = CountingUNet(unet)
    fast = compute_heatmaps(counting, classifier, x0, targets, cfg)
    ref = compute_heatmaps_reference(unet, classifier, x0, targets, cfg)
    for name in ("heatmaps", "signed", "counterfactuals", "prob_before", "prob_after"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(ref, name), atol=1e-4, rtol=0, msg=name
        )
    # Every target's map of an image is the same, and the targets' probabilities differ.
    assert torch.equal(fast.heatmaps[:, :1].expand_as(fast.heatmaps), fast.heatmaps)
    assert fast.prob_after[0].unique().numel() > 1
    # Inversion (steps, refinement) and decoding of 3 images, not of 3 x 7 rows.
    guided = CountingUNet(unet)
    compute_heatmaps(guided, classifier, x0, targets, dataclasses.replace(
        cfg, translation=dataclasses.replace(cfg.translation, scale=1.0)
    ))  # fmt: skip
    steps = cfg.translation.steps
    decode_rows = guided.rows - counting.rows
    assert decode_rows == 3 * (len(targets) - 1) * (steps - 1), (guided.rows, counting.rows)


def test_the_reconstruction_reference_leaves_only_the_guidance_s_change():
    # The same counterfactuals, compared with the unguided decoding of the same x_L instead of
    # x0: one more decoding per image (shared by its targets), equal to the per-pair path; with
    # no guidance there is nothing left.
    targets = all_targets()[:3]
    cfg = micro_config(scale=10.0, difference="raw", max_batch=5, inversion_refinements=1)
    recon_cfg = micro_config(
        scale=10.0,
        difference="raw",
        max_batch=5,
        inversion_refinements=1,
        reference="reconstruction",
    )
    unet, classifier, x0 = make_models(cfg, seed=4)
    plain_unet, recon_unet = CountingUNet(unet), CountingUNet(unet)
    plain = compute_heatmaps(plain_unet, classifier, x0, targets, cfg)
    recon = compute_heatmaps(recon_unet, classifier, x0, targets, recon_cfg)
    torch.testing.assert_close(recon.counterfactuals, plain.counterfactuals)
    for name in ("prob_before", "prob_after"):
        torch.testing.assert_close(getattr(recon, name), getattr(plain, name))
    unguided_cfg = micro_config(scale=0.0, max_batch=5, inversion_refinements=1)
    unguided = compute_heatmaps(unet, classifier, x0, targets, unguided_cfg).counterfactuals
    torch.testing.assert_close(recon.signed, (recon.counterfactuals - unguided) / 2)
    assert 1e-3 < recon.heatmaps.mean() < plain.heatmaps.mean()
    assert recon_unet.rows - plain_unet.rows == 3 * (cfg.translation.steps - 1)
    ref = compute_heatmaps_reference(unet, classifier, x0, targets, recon_cfg)
    for name in ("heatmaps", "signed", "counterfactuals", "prob_before", "prob_after"):
        torch.testing.assert_close(
            getattr(recon, name), getattr(ref, name), atol=1e-4, rtol=0, msg=name
        )
    nothing_cfg = micro_config(scale=0.0, max_batch=5, reference="reconstruction")
    assert compute_heatmaps(unet, classifier, x0, targets, nothing_cfg).heatmaps.max() == 0


def test_heatmaps_in_bfloat16_stay_close_to_float32():
    cfg = micro_config(scale=10.0, inversion_refinements=1)
    cfg16 = dataclasses.replace(
        cfg, translation=dataclasses.replace(cfg.translation, precision="bf16")
    )
    unet, classifier, x0 = make_models(cfg, seed=2)
    targets = all_targets()[:3]
    ref32 = compute_heatmaps(unet, classifier, x0, targets, cfg)
    with pytest.raises(ValueError, match="precision is bf16: pass prepare_model"):
        compute_heatmaps(unet, classifier, x0, targets, cfg16)
    plain = InferenceConfig(channels_last=False)
    unet16, classifier16 = (prepare_model(m, "bf16", plain) for m in (unet, classifier))
    assert prepare_model(unet16, "bf16", plain) is unet16  # nothing to change: no copy
    assert next(unet.parameters()).dtype == torch.float32  # the original is untouched
    res16 = compute_heatmaps(unet16, classifier16, x0, targets, cfg16)
    for name in ("heatmaps", "counterfactuals", "prob_after"):
        assert getattr(res16, name).dtype == torch.float32
    assert res16.heatmaps.min() >= 0 and res16.heatmaps.max() <= 1
    # bf16 keeps 8 bits of mantissa: the heatmaps differ by ~1e-3 on average, not more.
    difference = (res16.heatmaps - ref32.heatmaps).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1, difference
    assert difference.mean() > 0  # the passes did run in bf16
    with pytest.raises(ValueError, match="fp16 heatmaps need a CUDA device"):
        prepare_model(unet, "fp16", plain)
    # A worker keeps the source weights where they were loaded and prepares a copy on its
    # device ("meta" stands in for a GPU); on the same device in fp32 nothing is copied.
    assert prepare_model(unet, "fp32", plain, "cpu") is unet
    moved = prepare_model(classifier, "bf16", plain, "meta")
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert {p.dtype for p in moved.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in classifier.parameters()} == {"cpu"}


@pytest.mark.parametrize(
    "inference",
    [InferenceConfig(channels_last=True), InferenceConfig(channels_last=True, compile=True)],
    ids=["channels_last", "compiled"],
)
def test_channels_last_and_compiled_models_give_the_same_heatmaps(inference, monkeypatch):
    # Compiled with dynamo's eager backend: the graph capture of every pass (inference mode,
    # the classifier's input gradient) without inductor's minutes of C++ builds; inductor's
    # results are compared with the eager ones by benchmarks/heatmap_throughput.py --compile.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = micro_config(scale=10.0, steps=2, level=40)
    unet, classifier, x0 = make_models(cfg, seed=4)
    targets = all_targets()[:2]
    plain = compute_heatmaps(unet, classifier, x0, targets, cfg)
    fast_unet, fast_classifier = (prepare_model(m, "fp32", inference) for m in (unet, classifier))
    assert fast_unet is not unet and next(unet.parameters()).is_contiguous()
    fast = compute_heatmaps(fast_unet, fast_classifier, x0, targets, cfg)
    for name in ("heatmaps", "counterfactuals", "prob_after"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name), atol=1e-4, rtol=0, msg=name
        )


def test_input_validation():
    cfg = micro_config()
    unet, classifier, _ = make_models(cfg, seed=3)
    with pytest.raises(ValueError, match="x0 must be"):
        compute_heatmaps(unet, classifier, torch.zeros(1, 1, 16, 16), all_targets(), cfg)
    with pytest.raises(ValueError, match="outside"):
        compute_heatmaps(unet, classifier, torch.zeros(1, 1, 32, 32), [Target(9, 1, "nine")], cfg)


@pytest.mark.parametrize("name", ["paper", "official"])
def test_paper_preset_runs_one_guided_step_at_512px(name):
    # The real paper sizes (~112 M-parameter UNet, ~9 M classifier; official: its generator
    # layout and guided-diffusion's EncoderUNet classifier with its switches), batch 1, one
    # DDIM step from L = 500 to x0 with guidance, in float32: ~15 s for the UNet on 2 cores.
    # (bfloat16 is no shortcut on a CPU without native bf16: on an AVX2-only EPYC one 3x3 conv
    # at 128 px, 128 channels took 19.7 s in bf16 (NCHW) against 64 ms in float32.)
    cfg = preset(name)
    assert cfg.image_size == 512 and cfg.translation.level == 500
    assert cfg.schedule.num_train_timesteps == 1000 and cfg.translation.scale == 100.0
    g = torch.Generator().manual_seed(4)
    unet = build_unet(cfg.generator, generator=g).eval()
    classifier = build_classifier(cfg.classifier, generator=g).eval()
    assert sum(p.numel() for p in unet.parameters()) > 50_000_000
    x_level = torch.randn(1, 1, 512, 512, generator=g)
    target = Target.parse("+No Finding", cfg.class_names)
    tr = cfg.translation
    x_cf = guided_decode(
        unet,
        classifier,
        x_level,
        target,
        mode=tr.mode,
        scale=tr.scale,
        alphas_cumprod=alphas_cumprod(cfg.schedule),
        level=tr.level,
        steps=1,
        clip_denoised=tr.clip_denoised,
    )
    assert x_cf.shape == (1, 1, 512, 512) and torch.isfinite(x_cf).all()
    p = target_probability(classifier, x_cf, target, mode=tr.mode)
    assert p.shape == (1,) and 0 <= float(p) <= 1


def config_leaves(config: object, path: str = "") -> dict[str, object]:
    """A nested config's values by dotted field path."""
    if not dataclasses.is_dataclass(config):
        return {path: config}
    found: dict[str, object] = {}
    for field in dataclasses.fields(config):
        found |= config_leaves(getattr(config, field.name), f"{path}.{field.name}".lstrip("."))
    return found


def numeric(value: object) -> bool:
    if isinstance(value, tuple):
        return all(numeric(v) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_presets_differ_in_numbers_and_named_choices_only():
    # One code path: the same fields holding values of the same types; apart from numbers
    # (sizes, counts, rates) only the name, the UNets' block layouts and the tiny preset's raw
    # heatmap difference (presets._tiny) differ.
    tiny, paper = config_leaves(preset("tiny")), config_leaves(preset("paper"))
    assert tiny.keys() == paper.keys()
    assert [k for k in tiny if type(tiny[k]) is not type(paper[k])] == []
    not_numbers = {
        k for k in tiny if tiny[k] != paper[k] and not (numeric(tiny[k]) and numeric(paper[k]))
    }
    assert not_numbers == {
        "name",
        "generator.down_block_types",
        "generator.up_block_types",
        "classifier.down_block_types",
        "translation.difference",
    }
    assert preset("tiny").class_names == preset("paper").class_names
    assert tiny["translation.mode"] == paper["translation.mode"] == "softmax"
