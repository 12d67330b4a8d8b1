"""The contrastive trainer's pieces on a tiny random model: batch resizing, optimiser groups,
schedule, checkpoint round trip."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from daug_core.checkpoints.contrastive import load_clip_checkpoint, save_clip_checkpoint
from daug_core.compute import Compute
from daug_core.contrastive.model import build_model
from daug_core.contrastive.presets import contrastive_preset
from daug_core.contrastive.training import (
    ClipBatch,
    clamp_logit_scale,
    fit_batch,
    make_optimizer,
    make_scheduler,
)
from daug_core.settings import CheckpointError


def test_fit_batch_resizes_images_and_heatmaps_together():
    image = torch.zeros(2, 1, 128, 128)
    image[:, :, :64] = 1.0  # top half bright
    heat = image.repeat(1, 3, 1, 1)
    batch = ClipBatch(image, heat, torch.zeros(2, 77, dtype=torch.long), torch.zeros(2, 14))
    small = fit_batch(batch, 64)
    assert small.image.shape == (2, 1, 64, 64) and small.heatmaps.shape == (2, 3, 64, 64)
    torch.testing.assert_close(small.heatmaps[:, :1], small.image)
    assert small.image[0, 0, 10, 5].item() == pytest.approx(1.0)
    assert small.image[0, 0, 50, 5].item() == pytest.approx(0.0)
    assert fit_batch(small, 64) is small
    no_maps = batch._replace(heatmaps=torch.zeros(2, 0, 128, 128))
    assert fit_batch(no_maps, 64).heatmaps.shape == (2, 0, 64, 64)


def test_optimizer_spares_biases_norms_and_logit_scale_from_weight_decay():
    config = contrastive_preset("tiny")
    model = build_model(config, ("+No Finding",), seed=0)
    decay, no_decay = make_optimizer(model, config.training).param_groups
    assert decay["weight_decay"] == config.training.weight_decay and no_decay["weight_decay"] == 0
    named = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("bias" in named[id(p)] for p in no_decay["params"])
    assert not any("logit_scale" in named[id(p)] for p in decay["params"])


def test_official_optimizer_decays_embeddings_and_uses_torchs_betas():
    config = contrastive_preset("tiny")
    training = dataclasses.replace(config.training, optimizer="official")
    model = build_model(config, ("+No Finding",), seed=0)
    optimizer = make_optimizer(model, training)
    decay, no_decay = optimizer.param_groups
    assert (decay["betas"], decay["eps"]) == ((0.9, 0.999), 1e-8)
    named = {id(p): n for n, p in model.named_parameters()}
    spared = {named[id(p)] for p in no_decay["params"]}
    decayed = {named[id(p)] for p in decay["params"]}
    assert spared and all(n.endswith("bias") or ".ln_" in f".{n}" for n in spared)
    assert any(n.endswith("ln_1.weight") for n in spared)  # norms: the official intent
    assert any(n.endswith("class_embedding") for n in decayed)  # 1-d, decayed officially
    clip_groups = make_optimizer(model, config.training).param_groups
    assert (clip_groups[0]["betas"], clip_groups[0]["eps"]) == ((0.9, 0.98), 1e-6)
    assert not any(named[id(p)].endswith("class_embedding") for p in clip_groups[0]["params"])


def test_schedule_warms_up_then_decays_to_zero():
    config = contrastive_preset("tiny")
    model = build_model(config, ("+No Finding",), seed=0)
    optimizer = make_optimizer(model, config.training)
    scheduler = make_scheduler(optimizer, config.training, total_steps=40)
    lrs = []
    for _ in range(40):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    peak = config.training.learning_rate
    warmup = config.training.warmup_steps
    assert lrs[0] == 0.0 and lrs[warmup] == pytest.approx(peak)
    assert all(a <= b for a, b in itertools.pairwise(lrs[: warmup + 1]))
    assert lrs[-1] < 0.01 * peak


def test_checkpoint_round_trip_and_refusals(tmp_path):
    config = contrastive_preset("tiny")
    model = build_model(config, ("+No Finding", "+Pleural"), seed=4)
    save_clip_checkpoint(tmp_path / "ckpt", model, config, {"epoch": 2})
    loaded = load_clip_checkpoint(tmp_path / "ckpt")
    assert loaded.heatmap_targets == ("+No Finding", "+Pleural") and loaded.info == {"epoch": 2}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert not list(tmp_path.glob(".ckpt.tmp-*"))  # the atomic write left nothing behind
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in a weight: loads fine without the manifest
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors differs from the file written"):
        load_clip_checkpoint(tmp_path / "ckpt")
    torch.save({"x": 1}, weights)  # a pickle named like the weights
    with pytest.raises(CheckpointError, match=r"model\.safetensors differs"):
        load_clip_checkpoint(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_clip_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "SHA256SUMS.json").unlink()  # a checkpoint from before manifests
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors"):
        load_clip_checkpoint(tmp_path / "ckpt")


def test_a_learned_logit_scale_is_clamped_at_100_and_a_fixed_one_left_alone():
    config = contrastive_preset("tiny")
    model = build_model(config, ("+No Finding",), seed=0)
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.clip.logit_scale.fill_(10.0)  # e^10
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(100.0, rel=1e-5)
    paper_loss = contrastive_preset("paper").loss
    fixed = build_model(dataclasses.replace(config, loss=paper_loss), ("+No Finding",), seed=0)
    with torch.no_grad():
        fixed.clip.logit_scale.fill_(10.0)
    clamp_logit_scale(fixed)
    assert fixed.logit_scale.item() == pytest.approx(math.exp(10.0), rel=1e-5)


def _train_tiny_clip(precision: str, steps: int) -> list[float]:
    """``steps`` optimiser steps of the tiny CLIP on one batch of random pairs (one heatmap
    channel); the per-step losses."""
    from daug_core.contrastive.losses import HybridContrastiveLoss
    from daug_core.contrastive.model import build_tokenizer
    from daug_core.contrastive.training import PromptTokens, train_epoch

    config = contrastive_preset("tiny")
    training = config.training
    model = build_model(config, ("+No Finding",), seed=0)
    optimizer = make_optimizer(model, training)
    scheduler = make_scheduler(optimizer, training, total_steps=steps)
    tokenizer = build_tokenizer(config.model)
    size = config.model.image_size
    rng = torch.Generator().manual_seed(1)
    words = ["effusion", "clear lungs", "cardiomegaly", "pneumonia", "normal", "edema"]
    texts = [f"{words[int(i)]} on the left" for i in torch.randint(0, 6, (8,), generator=rng)]
    batch = ClipBatch(
        torch.rand(8, 1, size, size, generator=rng) * 2 - 1,
        torch.rand(8, 1, size, size, generator=rng),
        tokenizer(texts),
        torch.randint(0, 2, (8, 14), generator=rng).float(),
    )
    batches = [batch] * steps  # one batch again and again: the loss must fall
    prompts = PromptTokens(tokenizer(list(config.loss.class_prompts)), None)
    losses: list[float] = []
    train_epoch(
        model,
        HybridContrastiveLoss(config.loss),
        batches,
        prompts,
        optimizer,
        scheduler,
        on_step=lambda step, loss: losses.append(loss),
        compute=Compute(device=torch.device("cpu"), precision=precision),  # type: ignore[arg-type]
    )
    return losses


def test_bf16_autocast_trains_the_tiny_clip_to_the_fp32_loss():
    # bf16 has no native unit on this CPU (AVX2): a bf16 step costs ~3 s, 10x fp32, so 6 steps
    # (the loss falls from the 5th on; 8 steps measured: within 0.3 % at every step).
    fp32, bf16 = _train_tiny_clip("fp32", 6), _train_tiny_clip("bf16", 6)
    assert fp32[-1] < fp32[0]  # it learns
    for step, (ours, reference) in enumerate(zip(bf16, fp32, strict=True)):
        assert abs(ours - reference) <= 0.05 * reference, (step, bf16, fp32)


@pytest.mark.slow
def test_official_preset_trains_one_step_at_its_real_size():
    from daug_core.contrastive.losses import HybridContrastiveLoss
    from daug_core.contrastive.model import build_tokenizer
    from daug_core.contrastive.training import PromptTokens, train_epoch

    config = contrastive_preset("official")
    model = build_model(config, ("+No Finding",), seed=0)
    assert type(model.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    tokenizer = build_tokenizer(config.model)
    tokens = tokenizer(["no acute process", "small left effusion"])
    assert tokens.shape == (2, 154)
    batch = ClipBatch(
        torch.rand(2, 1, 256, 256), torch.rand(2, 1, 256, 256), tokens, torch.eye(2, 14)
    )
    prompts = PromptTokens(tokenizer(list(config.loss.class_prompts)), None)
    training = dataclasses.replace(config.training, warmup_steps=0)  # lr > 0 at step 0
    optimizer = make_optimizer(model, training)
    scheduler = make_scheduler(optimizer, training, total_steps=10)
    before = model.clip.visual.conv1.weight.detach().clone()
    stats = train_epoch(
        model, HybridContrastiveLoss(config.loss), [batch], prompts, optimizer, scheduler
    )
    assert math.isfinite(stats.loss) and stats.batches == 1
    assert not torch.equal(model.clip.visual.conv1.weight, before)
