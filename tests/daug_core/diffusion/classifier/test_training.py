"""Noise-aware classifier: masked weighted BCE, training on discs, evaluation per noise level,
determinism, exact resume and checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from daug_core.checkpoints.diffusion import (
    load_classifier,
    load_classifier_checkpoint,
    save_classifier_checkpoint,
)
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.diffusion.classifier.evaluation import evaluate_classifier
from daug_core.diffusion.classifier.loss import masked_bce_with_logits, pos_weight_from_labels
from daug_core.diffusion.classifier.training import init_classifier_state, train_classifier
from daug_core.training import BatchError
from tests.daug_core.helpers import disc_batches, micro_config, same_weights


def test_pos_weight_is_negatives_over_positives_ignoring_nan():
    nan = float("nan")
    labels = np.array([[1, 0, nan, 1], [0, 0, nan, 1], [0, 1, nan, 1], [0, nan, nan, 1]])
    w = pos_weight_from_labels(labels)
    torch.testing.assert_close(w, torch.tensor([3.0, 2.0, 1.0, 1.0]))


def test_masked_bce_ignores_nan_and_weights_positives():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    w = torch.tensor([2.0, 3.0])
    got = masked_bce_with_logits(logits, labels, w)
    terms = [
        -2.0 * math.log(torch.sigmoid(torch.tensor(0.3)).item()),
        -math.log(1 - torch.sigmoid(torch.tensor(2.0)).item()),
        -3.0 * math.log(torch.sigmoid(torch.tensor(0.5)).item()),
    ]
    assert got.item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    all_masked = masked_bce_with_logits(logits, torch.full((2, 2), float("nan")))
    assert all_masked.item() == 0.0
    plain = F.binary_cross_entropy_with_logits(logits[1], labels[1])
    assert masked_bce_with_logits(logits[1:], labels[1:]).item() == pytest.approx(plain.item())


def new_state(seed=0, pos_weight=None):
    return init_classifier_state(
        micro_config(), pos_weight=pos_weight, generator=torch.Generator().manual_seed(seed)
    )


def test_training_lowers_the_loss_and_evaluation_reports_per_level():
    batches = disc_batches(40, 16, 32, seed=1)
    labels = torch.cat([y for _, y in batches])
    state = new_state(pos_weight=pos_weight_from_labels(labels))
    result = train_classifier(state, batches)
    assert result.steps == 40 and all(math.isfinite(x) for x in result.losses)
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.8 * first, (first, last)

    held_out = disc_batches(4, 16, 32, seed=2)
    report = evaluate_classifier(
        state.classifier,
        held_out,
        schedule=state.config.schedule,
        generator=torch.Generator().manual_seed(0),
    )
    assert [lvl.timestep for lvl in report.levels] == [0, 100, 200, 300, 500]
    clean = report.levels[0]
    assert clean.num_images == 64
    assert all(math.isnan(a) for a in clean.auc[3:])  # only masked labels: no AUC
    assert clean.auc[0] > 0.8  # "no disc" is easy to see at t = 0
    assert not math.isnan(clean.mean_auc)
    assert len(report.rows()) == 5 * 7


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    batches = disc_batches(4, 8, 32, seed=3)
    a, b = new_state(seed=5), new_state(seed=5)
    train_classifier(a, batches, until_step=4)
    train_classifier(b, batches, until_step=4)
    assert same_weights(a.classifier, b.classifier)

    c = new_state(seed=5)
    train_classifier(c, batches[:2], until_step=4)
    save_classifier_checkpoint(c, tmp_path / "clf")
    resumed = load_classifier_checkpoint(tmp_path / "clf")
    assert resumed.step == 2
    train_classifier(resumed, batches[2:], until_step=4)
    assert same_weights(resumed.classifier, a.classifier)


def test_checkpoint_round_trip_and_stable_sha(tmp_path):
    state = new_state(pos_weight=torch.arange(1.0, 8.0))
    train_classifier(state, disc_batches(1, 8, 32, seed=4), until_step=1)
    path = save_classifier_checkpoint(state, tmp_path / "clf")
    sha = checkpoint_sha256(path)
    assert checkpoint_sha256(save_classifier_checkpoint(state, tmp_path / "b")) == sha
    # The directory hash covers exactly its weight files: here the single classifier file.
    assert checkpoint_sha256(path / "model.safetensors") == sha
    loaded = load_classifier(path)
    assert same_weights(loaded, state.classifier)
    assert loaded.config == state.classifier.config
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x, 7), state.classifier(x, 7))
    assert torch.equal(load_classifier_checkpoint(path).pos_weight, state.pos_weight)
    assert next(load_classifier(path, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_rejects_bad_labels():
    images, labels = disc_batches(1, 4, 32, seed=5)[0]
    with pytest.raises(BatchError, match="step 1"):
        train_classifier(new_state(), [(images, labels[:, :3])])
    bad = labels.clone()
    bad[0, 0] = 0.5
    with pytest.raises(BatchError, match="0, 1 or NaN"):
        train_classifier(new_state(), [(images, bad)])


def test_the_official_encoder_classifier_trains_resumes_and_loads_like_ours(tmp_path):
    """``ClassifierConfig.encoder``: guided-diffusion's EncoderUNet (attention pooling) in place
    of ours, at 32 px: the loss falls on discs, a resumed run equals an uninterrupted one, and
    the checkpoint loads back as the same network with the same logits."""
    import dataclasses

    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier
    from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig

    base = micro_config()
    encoder = GuidedDiffusionClassifierConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        num_head_channels=32,
    )
    config = dataclasses.replace(
        base, classifier=dataclasses.replace(base.classifier, encoder=encoder)
    )

    def state(seed: int = 0, pos_weight: torch.Tensor | None = None):
        generator = torch.Generator().manual_seed(seed)
        return init_classifier_state(config, pos_weight=pos_weight, generator=generator)

    batches = disc_batches(30, 16, 32, seed=1)
    trained = state(pos_weight=pos_weight_from_labels(torch.cat([y for _, y in batches])))
    assert isinstance(trained.classifier, EncoderClassifier)
    result = train_classifier(trained, batches)
    first, last = sum(result.losses[:6]) / 6, sum(result.losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)

    short = disc_batches(4, 8, 32, seed=3)
    straight, interrupted = state(seed=5), state(seed=5)
    train_classifier(straight, short, until_step=4)
    train_classifier(interrupted, short[:2], until_step=4)
    save_classifier_checkpoint(interrupted, tmp_path / "clf")
    resumed = load_classifier_checkpoint(tmp_path / "clf")
    train_classifier(resumed, short[2:], until_step=4)
    assert same_weights(resumed.classifier, straight.classifier)

    loaded = load_classifier(save_classifier_checkpoint(straight, tmp_path / "done"))
    assert isinstance(loaded, EncoderClassifier) and loaded.config == encoder
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x, 7), straight.classifier(x, 7))


def test_a_linear_learning_rate_anneals_to_zero_and_resumes_exactly(tmp_path):
    """lr_schedule "linear" (the official classifier's anneal_lr): step s of N trains at
    lr * (1 - s / N), a function of the step, so an interrupted run resumes to the same weights;
    "constant" keeps the rate (the default)."""
    import dataclasses

    from daug_core.diffusion.config import TrainingConfig
    from daug_core.settings import ConfigError
    from daug_core.training import set_learning_rate

    base = micro_config()
    linear = dataclasses.replace(
        base.classifier_training, num_steps=4, learning_rate=1e-3, lr_schedule="linear"
    )
    config = dataclasses.replace(base, classifier_training=linear)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = [set_learning_rate(optimizer, linear, step) for step in range(5)]
    assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0])
    assert optimizer.param_groups[0]["lr"] == 0.0
    constant = dataclasses.replace(linear, lr_schedule="constant")
    assert set_learning_rate(optimizer, constant, 3) == 1e-3
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        TrainingConfig(**{**dataclasses.asdict(linear), "lr_schedule": "cosine"})

    def state(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return init_classifier_state(config, pos_weight=None, generator=generator)

    batches = disc_batches(4, 8, 32, seed=3)
    straight, interrupted = state(5), state(5)
    train_classifier(straight, batches)
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # the 4th step's
    train_classifier(interrupted, batches[:2])
    save_classifier_checkpoint(interrupted, tmp_path / "clf")
    resumed = load_classifier_checkpoint(tmp_path / "clf")
    train_classifier(resumed, batches[2:])
    assert same_weights(resumed.classifier, straight.classifier)
    assert not same_weights(straight.classifier, state(5).classifier)  # it did train
