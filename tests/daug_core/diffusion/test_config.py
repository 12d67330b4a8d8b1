"""Presets and their JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from daug_core.diffusion.config import TranslationConfig, config_from_dict, config_to_dict
from daug_core.diffusion.presets import PRESET_NAMES, preset
from daug_core.labels import SUPER_CLASS_NAMES
from daug_core.settings import ConfigError


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    assert cfg.name == name and cfg.class_names == SUPER_CLASS_NAMES
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_paper_numbers():
    cfg = preset("paper")
    assert cfg.image_size == 512
    assert cfg.schedule.num_train_timesteps == 1000
    assert (cfg.translation.level, cfg.translation.steps, cfg.translation.scale) == (500, 500, 100)
    tiny = preset("tiny")
    assert tiny.image_size == 64
    tr = tiny.translation
    assert (tr.level, tr.steps, tr.scale, tr.difference, tr.smoothing_sigma) == (
        300,
        10,
        10,
        "raw",
        1.5,
    )
    # The paper preset keeps the official heatmap definition.
    assert (cfg.translation.difference, cfg.translation.smoothing_sigma) == ("minmax", 0.0)


def test_invalid_values_raise_config_error():
    with pytest.raises(ConfigError):
        preset("huge")
    with pytest.raises(ConfigError):
        TranslationConfig(level=10, steps=20)
    with pytest.raises(ConfigError):
        TranslationConfig(mode="argmax")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="difference"):
        TranslationConfig(difference="ratio")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="smoothing_sigma"):
        TranslationConfig(smoothing_sigma=-1.0)
    cfg = preset("tiny")
    with pytest.raises(ConfigError):
        dataclasses.replace(cfg, translation=TranslationConfig(level=1000, steps=10))
    data = config_to_dict(cfg)
    data["translation"]["unknown"] = 1
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", math.nan),
        ("weight_decay", math.nan),
        ("weight_decay", -0.1),
        ("grad_clip_norm", math.inf),
        ("grad_clip_norm", -1.0),
    ],
)
def test_training_numbers_are_finite_and_not_negative(field, value):
    with pytest.raises(ConfigError, match=f"TrainingConfig.{field} must be a finite number"):
        dataclasses.replace(preset("tiny").generator_training, **{field: value})


def test_official_preset_sets_the_official_translation_and_generator_layout():
    official, paper = preset("official"), preset("paper")
    tr = official.translation
    assert (tr.mode, tr.clip_denoised, tr.generator_ema, tr.input_range) == (
        "official",
        True,
        False,
        "minmax",
    )
    assert paper.translation.input_range == "signed"
    assert (tr.level, tr.steps, tr.scale, tr.difference) == (500, 500, 100.0, "minmax")
    assert official.classifier_training.learning_rate == 1e-4
    assert official.classifier_training.weight_decay == 0.0
    from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig

    # The classifier is the official EncoderUNet (its defaults are the official settings).
    assert official.classifier.encoder == GuidedDiffusionClassifierConfig()
    assert dataclasses.replace(official.classifier, encoder=None) == paper.classifier
    assert official.schedule == paper.schedule


def test_official_generator_layout_is_the_converted_guided_diffusion_unet():
    # Our UNet at the official preset's layout and a converted official checkpoint are the same
    # network but for the class embedding and the learned-variance output channel.
    import torch
    from diffusers import UNet2DModel

    from daug_core.diffusion.generator import build_unet
    from daug_core.diffusion.guided_diffusion_convert import GuidedDiffusionConfig, unet_config

    seed = torch.Generator()
    with torch.device("meta"):
        ours = build_unet(preset("official").generator, generator=seed)
        theirs = UNet2DModel(
            **unet_config(GuidedDiffusionConfig(class_cond=False, learn_sigma=False))
        )
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
