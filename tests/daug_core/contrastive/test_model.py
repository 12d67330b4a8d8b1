"""HeatmapClip: the four heatmap modes, the append initialisation, checkpoints, tokenizer.

All on the tiny preset's random-init model (~8 M parameters, builds in ~0.3 s); the paper model
(ViT-B/32 at 256 px, context 154) gets one slow shape test.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from daug_core.contrastive.config import ClipModelConfig, HeatmapMode
from daug_core.contrastive.model import (
    HeatmapClip,
    HeatmapInputError,
    ModelLoadError,
    build_clip_model,
    build_tokenizer,
    resolve_checkpoint,
    widen_patch_embedding,
)
from daug_core.contrastive.presets import contrastive_preset

TARGETS = ("+No Finding", "+Cardiomediastinal", "+Lung Lesion")
SIZE = 64


def tiny_model_config(**changes: object) -> ClipModelConfig:
    return dataclasses.replace(contrastive_preset("tiny").model, **changes)


def build(mode: HeatmapMode, seed: int = 0, targets=TARGETS, **changes: object) -> HeatmapClip:
    config = tiny_model_config(heatmap_mode=mode, **changes)
    model = build_clip_model(config, targets, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def batch(seed: int = 1, n: int = 3, k: int = len(TARGETS)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIZE, SIZE, generator=g), torch.rand(n, k, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("mode", ["none", "channel", "add", "append"])
def test_every_mode_gives_unit_embeddings_of_the_configured_size(mode: HeatmapMode) -> None:
    model = build(mode)
    image, heatmaps = batch()
    tokens = build_tokenizer(model.config)(["no acute findings", "small effusion", "x"])
    out = model(image, heatmaps, tokens)
    assert out.image.shape == out.text.shape == (3, model.embed_dim) == (3, 128)
    torch.testing.assert_close(out.image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text.norm(dim=-1), torch.ones(3))


def test_equal_generators_build_equal_weights_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build("none", seed=4), build("none", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    c = build("none", seed=5)
    assert not torch.equal(a.clip.visual.conv1.weight, c.clip.visual.conv1.weight)


def test_none_mode_ignores_heatmaps() -> None:
    model = build("none")
    image, heatmaps = batch()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image, heatmaps), model.encode_image(image))


def test_logit_scale_is_the_configured_scale_fixed_or_learned() -> None:
    fixed = build("none")
    assert fixed.logit_scale.item() == pytest.approx(100.0)
    assert not fixed.clip.logit_scale.requires_grad
    config = tiny_model_config(heatmap_mode="none")
    learned = build_clip_model(
        config, generator=torch.Generator(), logit_scale=20.0, learn_logit_scale=True
    )
    assert learned.logit_scale.item() == pytest.approx(20.0)
    assert learned.clip.logit_scale.requires_grad


# --- append: widened patch embedding -------------------------------------------------------


def test_widened_patch_embedding_reproduces_the_rgb_response_to_a_grey_image() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=4, stride=4, bias=False)
    mean = torch.tensor([0.48, 0.46, 0.41])
    std = torch.tensor([0.27, 0.26, 0.28])
    wide = widen_patch_embedding(conv, 5, mean, std)
    assert wide.in_channels == 6 and wide.bias is not None
    assert torch.count_nonzero(wide.weight[:, 1:]) == 0
    grey = torch.rand(2, 1, 16, 16)
    heat = torch.rand(2, 5, 16, 16)
    rgb = (grey.expand(-1, 3, -1, -1) - mean[None, :, None, None]) / std[None, :, None, None]
    stacked = (torch.cat([grey, heat], dim=1) - mean.mean()) / std.mean()
    with torch.no_grad():
        torch.testing.assert_close(wide(stacked), conv(rgb), rtol=1e-5, atol=1e-5)


def test_append_starts_as_the_plain_model_whatever_the_heatmaps() -> None:
    plain, appended = build("none", seed=3), build("append", seed=3)
    image, heatmaps = batch()
    _, other = batch(seed=9)
    with torch.no_grad():
        reference = plain.encode_image(image)
        torch.testing.assert_close(
            appended.encode_image(image, heatmaps), reference, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            appended.encode_image(image, other), reference, atol=1e-5, rtol=1e-5
        )


def test_append_heatmap_kernels_start_at_zero_and_receive_gradient() -> None:
    model = build("append").train()
    conv = model.clip.visual.conv1
    assert tuple(conv.weight.shape) == (128, 1 + len(TARGETS), 8, 8)
    assert torch.count_nonzero(conv.weight[:, 1:]) == 0
    image, heatmaps = batch()
    target = F.normalize(torch.randn(3, model.embed_dim, generator=torch.Generator()), dim=-1)
    loss = -(model.encode_image(image, heatmaps) * target).sum()
    loss.backward()
    assert conv.weight.grad is not None
    grad = conv.weight.grad[:, 1:]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert conv.bias is not None and conv.bias.grad is not None


def test_append_needs_heatmap_targets() -> None:
    with pytest.raises(HeatmapInputError, match="append"):
        build("append", targets=())


# --- channel: the target heatmap replaces channel 0 ------------------------------------------


def test_channel_mode_reads_only_the_target_channel() -> None:
    target = "+Cardiomediastinal"
    index = TARGETS.index(target)
    plain = build("none", seed=2)
    model = build("channel", seed=2, channel_target=target)
    assert model.target_index == index
    image, noise = batch()
    only_target = torch.zeros_like(noise)
    only_target[:, index] = noise[:, index]
    others_changed = torch.rand_like(noise)
    others_changed[:, index] = noise[:, index]
    with torch.no_grad():
        embedding = model.encode_image(image, only_target)
        assert (embedding - plain.encode_image(image)).abs().max() > 1e-3
        torch.testing.assert_close(model.encode_image(image, others_changed), embedding)


def test_channel_mode_with_the_image_as_heatmap_is_the_plain_model() -> None:
    # Channel 0 of the normalised grey image is (g - mean_0) / std_0: the same as the heatmap
    # normalisation, so a heatmap equal to the image leaves the input unchanged.
    plain = build("none", seed=2)
    model = build("channel", seed=2, rescale_heatmaps=False)
    image, heatmaps = batch()
    heatmaps[:, TARGETS.index("+No Finding")] = image[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image, heatmaps), plain.encode_image(image))


def test_heatmaps_are_min_max_rescaled_per_image_when_configured() -> None:
    model = build("channel")
    image, heatmaps = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(image, 0.2 * heatmaps + 0.1), model.encode_image(image, heatmaps)
        )
        flat = torch.full_like(heatmaps, 0.3)  # constant maps become zeros, not NaN
        assert torch.isfinite(model.encode_image(image, flat)).all()


def test_channel_target_missing_from_the_stored_targets_is_refused() -> None:
    with pytest.raises(HeatmapInputError, match=r"\+Pleural"):
        build("channel", channel_target="+Pleural")
    with pytest.raises(HeatmapInputError, match="repeat"):
        build("none", targets=("+a", "+a"))


# --- add: a second tower sees the heatmap -----------------------------------------------------


def test_add_mode_averages_the_two_towers() -> None:
    model = build("add", channel_target="+Lung Lesion", rescale_heatmaps=False)
    assert model.heatmap_visual is not None
    # Separate parameters (same initial values, as the official code loads both from one file).
    assert model.heatmap_visual.conv1.weight is not model.clip.visual.conv1.weight
    with torch.no_grad():
        model.heatmap_visual.proj.mul_(-0.5)  # make the towers differ
        image, heatmaps = batch()
        heat = heatmaps[:, TARGETS.index("+Lung Lesion") :][:, :1]
        grey_features = model.clip.visual(model.normalise_rgb(image.expand(-1, 3, -1, -1)))
        heat_features = model.heatmap_visual(model.normalise_rgb(heat.expand(-1, 3, -1, -1)))
        expected = F.normalize((grey_features + heat_features) / 2, dim=-1)
        torch.testing.assert_close(model.encode_image(image, heatmaps), expected)
    n_visual = sum(p.numel() for p in model.clip.visual.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    assert n_total == n_visual + sum(p.numel() for p in model.clip.parameters())


# --- inputs -----------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_shapes() -> None:
    model = build("append")
    image, heatmaps = batch()
    with pytest.raises(HeatmapInputError, match="None"):
        model.encode_image(image)
    with pytest.raises(HeatmapInputError, match="heatmaps must be"):
        model.encode_image(image, heatmaps[:, :2])
    with pytest.raises(HeatmapInputError, match="image must be"):
        model.encode_image(image.expand(-1, 3, -1, -1), heatmaps)
    broken = heatmaps.clone()
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(HeatmapInputError, match="non-finite"):
        model.encode_image(image, broken)
    with pytest.raises(HeatmapInputError, match="tokens"):
        model.encode_text(torch.zeros(2, 10, dtype=torch.long))


def test_tokenizer_uses_the_configured_context_length() -> None:
    tokens = build_tokenizer(tiny_model_config())(["a", "b"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    short = tiny_model_config(context_length=32, heatmap_mode="none")
    assert build_tokenizer(short)(["a " * 100]).shape == (1, 32)
    model = build_clip_model(short, generator=torch.Generator())
    assert model.encode_text(build_tokenizer(short)(["a", "b"])).shape == (2, 128)


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["openai", "laion2b_s34b_b79k"])
def test_hub_tags_are_refused_fast_without_a_lookup(tag: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="offline"):
        resolve_checkpoint(tag)
    assert time.perf_counter() - start < 1.0


def test_a_missing_checkpoint_file_fails_before_building(tmp_path: Path) -> None:
    config = tiny_model_config(pretrained=str(tmp_path / "missing.safetensors"))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not an existing file"):
        build_clip_model(config, TARGETS, generator=torch.Generator())
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_round_trip(tmp_path: Path, suffix: str) -> None:
    source = build("none", seed=11)
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.clip.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    image, heatmaps = batch()
    tokenizer = build_tokenizer(source.config)
    tokens = tokenizer(["left lower lobe opacity", "normal chest", "x"])
    loaded = build("none", seed=99, pretrained=str(path))
    appended = build("append", seed=99, pretrained=str(path))
    with torch.no_grad():
        expected = source(image, None, tokens)
        got = loaded(image, None, tokens)
        torch.testing.assert_close(got.image, expected.image)
        torch.testing.assert_close(got.text, expected.text)
        # append: the 3-channel weights are loaded, then widened (heatmap kernels still zero).
        torch.testing.assert_close(
            appended.encode_image(image, heatmaps), expected.image, atol=1e-5, rtol=1e-5
        )
    # The configured scale wins over the checkpoint's (open_clip's init is 1 / 0.07).
    assert loaded.logit_scale.item() == pytest.approx(100.0)


def test_checkpoint_position_embeddings_are_resized_to_the_configured_sizes(
    tmp_path: Path,
) -> None:
    # The paper loads ViT-B/32 (224 px, 77 tokens) at 256 px / 154 tokens; same mechanism.
    path = tmp_path / "tiny.safetensors"
    source = build("none", seed=1)
    save_file({k: v.contiguous() for k, v in source.clip.state_dict().items()}, str(path))
    bigger = build("none", pretrained=str(path), image_size=96, context_length=100)
    assert tuple(bigger.clip.visual.positional_embedding.shape) == ((96 // 8) ** 2 + 1, 128)
    assert tuple(bigger.clip.positional_embedding.shape) == (100, 128)
    image = torch.rand(2, 1, 96, 96)
    assert bigger.encode_image(image).shape == (2, 128)


def test_a_checkpoint_of_another_architecture_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(4, 3, 8, 8)}, str(path))
    with pytest.raises(ModelLoadError, match=str(path)):
        build("none", pretrained=str(path))


def test_a_custom_architecture_cannot_take_a_builtin_name() -> None:
    config = tiny_model_config(model_name="ViT-B-32", heatmap_mode="none")
    with pytest.raises(ModelLoadError, match="already an open_clip model"):
        build_clip_model(config, generator=torch.Generator())


def test_an_unknown_builtin_name_is_a_load_error() -> None:
    config = ClipModelConfig(
        model_name="ViT-Q-99", image_size=64, context_length=77, heatmap_mode="none"
    )
    with pytest.raises(ModelLoadError, match="ViT-Q-99"):
        build_clip_model(config, generator=torch.Generator())


@pytest.mark.slow
def test_paper_model_shapes() -> None:
    config = dataclasses.replace(contrastive_preset("paper").model, heatmap_mode="append")
    targets = ("+No Finding", "+a", "+b", "+c", "+d", "+e", "+f")
    model = build_clip_model(config, targets, generator=torch.Generator().manual_seed(0)).eval()
    tokens = build_tokenizer(config)(["no acute cardiopulmonary process", "effusion"])
    assert tokens.shape == (2, 154)
    assert tuple(model.clip.visual.positional_embedding.shape) == ((256 // 32) ** 2 + 1, 768)
    assert tuple(model.clip.visual.conv1.weight.shape) == (768, 8, 32, 32)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 256, 256), torch.rand(2, 7, 256, 256), tokens)
    assert out.image.shape == out.text.shape == (2, 512)
