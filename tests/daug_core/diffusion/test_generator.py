"""Generator training: loss goes down on discs, determinism, exact resume from a checkpoint."""

from __future__ import annotations

import torch

from daug_core.checkpoints.diffusion import (
    load_generator_checkpoint,
    load_unet,
    save_generator_checkpoint,
)
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.diffusion.generator import ema_unet, init_generator_state, train_generator
from daug_core.training import BatchError, StepReport
from tests.daug_core.helpers import disc_batches, micro_config, same_weights


def images_only(count, seed, batch=8):
    return [images for images, _ in disc_batches(count, batch, 32, seed)]


def new_state(seed=0):
    return init_generator_state(micro_config(), generator=torch.Generator().manual_seed(seed))


def test_training_lowers_the_loss_on_discs():
    state = new_state()
    reports: list[StepReport] = []
    result = train_generator(state, images_only(40, seed=1), on_step=reports.append)
    assert result.steps == 40 == state.step and result.stop_reason == "reached_num_steps"
    assert len(result.losses) == 40 and [r.step for r in reports] == list(range(1, 41))
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    batches = images_only(4, seed=2)
    a, b = new_state(seed=5), new_state(seed=5)
    train_generator(a, batches, until_step=4)
    train_generator(b, batches, until_step=4)
    assert same_weights(a.unet, b.unet) and same_weights(ema_unet(a), ema_unet(b))
    assert not same_weights(a.unet, new_state(seed=6).unet)

    # Interrupted after 2 steps, checkpointed, reloaded, continued: identical to 4 in one go.
    c = new_state(seed=5)
    train_generator(c, batches[:2], until_step=4)
    assert c.step == 2
    save_generator_checkpoint(c, tmp_path / "gen")
    resumed = load_generator_checkpoint(tmp_path / "gen")
    assert resumed.step == 2 and resumed.config == c.config
    result = train_generator(resumed, batches[2:], until_step=4)
    assert (result.start_step, result.end_step) == (2, 4)
    assert same_weights(resumed.unet, a.unet)
    assert same_weights(ema_unet(resumed), ema_unet(a))


def test_checkpoint_round_trip_and_stable_sha(tmp_path):
    state = new_state()
    train_generator(state, images_only(2, seed=3), until_step=2)
    path = save_generator_checkpoint(state, tmp_path / "gen")
    sha = checkpoint_sha256(path)
    assert len(sha) == 64
    assert checkpoint_sha256(save_generator_checkpoint(state, tmp_path / "again")) == sha
    assert checkpoint_sha256(save_generator_checkpoint(state, path)) == sha  # replaced in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    ema = load_unet(path)
    assert same_weights(ema, ema_unet(state))
    raw = load_unet(path, use_ema=False, dtype=torch.bfloat16)
    assert next(raw.parameters()).dtype == torch.bfloat16
    assert checkpoint_sha256(path / "unet_ema") != checkpoint_sha256(path / "unet")
    train_generator(state, images_only(1, seed=4), until_step=3)
    assert checkpoint_sha256(save_generator_checkpoint(state, path)) != sha


def test_stops_on_callback_and_exhausted_data_and_rejects_bad_batches():
    state = new_state()
    result = train_generator(state, images_only(5, seed=5), on_step=lambda r: r.step >= 2)
    assert (result.end_step, result.stop_reason) == (2, "callback")
    result = train_generator(state, images_only(1, seed=6))
    assert (result.end_step, result.stop_reason) == (3, "data_exhausted")
    bad = torch.full((2, 1, 32, 32), 3.0)
    try:
        train_generator(state, [bad])
    except BatchError as exc:
        assert exc.step == 4 and "[-1, 1]" in exc.reason
    else:
        raise AssertionError("out-of-range batch accepted")
