"""The heatmap student: it learns a known heatmap rule, its loss has the values its
definition gives, its checkpoint round-trips and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch

from daug_core.checkpoints.student import (
    load_student,
    load_student_state,
    save_student_checkpoint,
)
from daug_core.settings import ConfigError
from daug_core.student.config import StudentConfig, StudentSettings, student_preset
from daug_core.student.model import HeatmapStudent, student_loss
from daug_core.student.training import TeacherBatch, init_student_state, train_student
from tests.factories import PROVENANCE

TARGETS = ("+No Finding", "+Pleural")


def small(steps: int) -> StudentConfig:
    config = StudentSettings(steps=steps).config()
    training = dataclasses.replace(config.training, batch_size=8)
    return dataclasses.replace(
        config, image_size=16, block_out_channels=(16, 32), training=training
    )


def rule(x: torch.Tensor) -> torch.Tensor:
    """The known rule: channel 0 is the bright square, channel 1 its brightness squared."""
    bright = (x + 1) / 2
    return torch.cat([(bright > 0.9).float(), bright**2], dim=1)


def batches(seed: int, start: int = 0) -> Iterator[TeacherBatch]:
    """Images with one bright 3 px square on a dark background; batch n from (seed, n)."""
    step = start
    while True:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        x = torch.rand((8, 1, 16, 16), generator=g) * 0.4 - 1
        for b in range(8):
            r, c = torch.randint(0, 13, (2,), generator=g).tolist()
            x[b, 0, r : r + 3, c : c + 3] = 1.0
        yield TeacherBatch(x, rule(x))
        step += 1


def test_the_student_learns_a_known_heatmap_rule():
    state = init_student_state(small(150), TARGETS, seed=0)
    result = train_student(state, batches(0))
    assert result.steps == 150 and result.losses[-1] < 0.2 * result.losses[0]
    held_out = next(batches(7))
    heat = state.student.heatmaps(held_out.images)
    assert heat.shape == (8, 2, 16, 16) and heat.min() >= 0 and heat.max() <= 1
    assert (heat - held_out.heatmaps).abs().mean() < 0.03
    # The student's peak lies on the square in every image.
    peak = heat[:, 0].flatten(1).argmax(1)
    assert held_out.heatmaps[:, 0].flatten(1).gather(1, peak[:, None]).min() == 1.0


def test_the_loss_is_l1_plus_the_spatial_kl_divergence():
    teacher = torch.zeros(1, 1, 4, 4)
    teacher[0, 0, 1, 2] = 1.0
    teacher[0, 0, 3, 3] = 1.0
    logits = torch.zeros(1, 1, 4, 4)
    total, l1, spatial = student_loss(logits, teacher, spatial_weight=2.0)
    # sigmoid(0) = 0.5 everywhere: |0.5 - 1| twice and |0.5 - 0| 14 times, over 16 pixels
    assert l1.item() == pytest.approx(0.5)
    # p: 1/2 on two pixels; q uniform 1/16: KL = log(1/2) - log(1/16) = log 8
    assert spatial.item() == pytest.approx(math.log(8.0))
    assert total.item() == pytest.approx(0.5 + 2 * math.log(8.0))
    peaked = torch.full((1, 1, 4, 4), -30.0)
    peaked[0, 0, 1, 2] = peaked[0, 0, 3, 3] = 30.0
    assert student_loss(peaked, teacher, 1.0)[2].item() == pytest.approx(0.0, abs=1e-6)
    # a map without heat counts in L1 and not in the spatial mean
    assert student_loss(logits, torch.zeros(1, 1, 4, 4), 1.0)[2].item() == 0.0


def test_a_resumed_run_equals_an_uninterrupted_one_and_the_checkpoint_round_trips(tmp_path):
    whole = init_student_state(small(6), TARGETS, seed=3)
    train_student(whole, batches(1))
    part = init_student_state(small(6), TARGETS, seed=3)
    train_student(part, batches(1), until_step=3)
    save_student_checkpoint(part, tmp_path / "student", "v1", PROVENANCE.as_dict())
    resumed = load_student_state(tmp_path / "student")
    assert resumed.step == 3 and resumed.config == part.config
    train_student(resumed, batches(1, start=3))
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=0)
    loaded = load_student(tmp_path / "student")
    assert (loaded.teacher_version, loaded.teacher) == ("v1", PROVENANCE.as_dict())
    assert loaded.student.targets == TARGETS and not loaded.student.training


def test_the_paper_student_maps_a_512_px_image_to_its_heatmaps():
    config = student_preset("paper")
    student = HeatmapStudent(config, TARGETS).eval()
    with torch.no_grad():
        heat = student.heatmaps(torch.zeros(1, 1, 512, 512))
    assert heat.shape == (1, 2, 512, 512) and bool(torch.isfinite(heat).all())


def test_bad_student_settings_are_refused():
    with pytest.raises(ConfigError, match="not divisible"):
        dataclasses.replace(small(1), image_size=17)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        StudentSettings(steps=0)
    with pytest.raises(ConfigError, match="spatial_weight"):
        StudentSettings(spatial_weight=-1.0).config()
