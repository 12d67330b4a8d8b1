"""Contrastive-model configuration: presets, validation, JSON round trip, label order."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from daug_core.contrastive.config import (
    DEFAULT_CLASS_PROMPTS,
    DEFAULT_NEGATIVE_PROMPTS,
    ClipArchitecture,
    ClipModelConfig,
    ContrastiveConfig,
    ContrastiveTrainingConfig,
    HybridLossConfig,
    contrastive_config_from_dict,
    contrastive_config_to_dict,
)
from daug_core.contrastive.presets import ClipTrainSettings, contrastive_preset
from daug_core.labels import CHEXPERT_LABELS
from daug_core.settings import ConfigError


def test_default_prompts_follow_the_label_order_and_pattern() -> None:
    assert len(DEFAULT_CLASS_PROMPTS) == len(DEFAULT_NEGATIVE_PROMPTS) == len(CHEXPERT_LABELS)
    for label, prompt, negative in zip(
        CHEXPERT_LABELS, DEFAULT_CLASS_PROMPTS, DEFAULT_NEGATIVE_PROMPTS, strict=True
    ):
        if label == "No Finding":
            assert prompt == "A chest x-ray image with no findings."
            assert negative == "A chest x-ray image with abnormal findings."
        elif label == "Pleural Other":
            assert "pleural" in prompt and "no other pleural" in negative
        else:
            assert prompt == f"A chest x-ray image of {label.lower()}."
            assert negative == f"A chest x-ray image with no {label.lower()}."


def test_paper_preset_follows_the_official_run() -> None:
    cfg = contrastive_preset("paper")
    assert cfg.model.model_name == "ViT-B-32" and cfg.model.architecture is None
    assert (cfg.model.image_size, cfg.model.context_length) == (256, 154)
    assert cfg.model.heatmap_mode == "channel" and cfg.model.channel_target == "+No Finding"
    assert cfg.loss.weight == 0.7 and cfg.loss.class_loss == "bce"
    assert cfg.loss.logit_scale == 100.0 and not cfg.loss.learn_logit_scale
    assert cfg.loss.class_logit_bias == 0.0
    t = cfg.training
    assert (t.learning_rate, t.epochs, t.batch_size, t.weight_decay) == (2e-5, 10, 256, 0.01)
    assert (t.crop_scale_min, t.rotation_degrees) == (1.0, 0.0)  # official: resize only


def test_tiny_preset_is_a_small_custom_architecture() -> None:
    cfg = contrastive_preset("tiny")
    assert cfg.model.architecture is not None
    assert cfg.model.image_size == 64 and cfg.model.architecture.vision_patch_size == 8
    assert cfg.model.context_length <= 77
    assert cfg.model.pretrained is None
    assert cfg.training.batch_size == 32
    # Trained from scratch: CLIP's learned temperature from 0.07, not the fine-tuning s = 100.
    assert cfg.loss.learn_logit_scale and cfg.loss.logit_scale == pytest.approx(1 / 0.07)


def test_official_preset_is_paper_with_the_official_codes_switches() -> None:
    paper, official = contrastive_preset("paper"), contrastive_preset("official")
    assert official.model.quick_gelu and not paper.model.quick_gelu
    t = official.training
    assert (t.train_splits, t.model_selection, t.optimizer, t.keep_epochs) == (
        "train+validate",
        "last",
        "official",
        (1, 6, 10),  # the epochs the official run tests
    )
    assert paper.training.optimizer == "clip"
    prompts = dict(zip(official.loss.class_names, official.loss.class_prompts, strict=True))
    assert prompts["No Finding"] == "A healthy chest-xray image with no findings."
    assert prompts["Pleural Other"] == "A chest-xray image of other pleural diseases"
    assert prompts["Fracture"] == "A chest-xray image of rib fracture"
    # Everything else as the paper preset.
    assert (
        dataclasses.replace(
            official,
            name="paper",
            model=paper.model,
            loss=paper.loss,
            training=dataclasses.replace(
                t,
                train_splits="train",
                model_selection="validate",
                optimizer="clip",
                keep_epochs=(),
            ),
        )
        == paper
    )


def test_a_config_stored_before_the_official_switches_still_loads() -> None:
    data = contrastive_config_to_dict(contrastive_preset("paper"))
    del data["model"]["quick_gelu"], data["training"]["optimizer"]
    assert contrastive_config_from_dict(data) == contrastive_preset("paper")


@pytest.mark.parametrize("name", ["tiny", "paper", "official"])
def test_json_round_trip(name: str) -> None:
    cfg = contrastive_preset(name)
    text = json.dumps(contrastive_config_to_dict(cfg))
    assert contrastive_config_from_dict(json.loads(text)) == cfg


def test_round_trip_keeps_a_pretrained_path_and_paired_loss() -> None:
    base = contrastive_preset("tiny")
    cfg = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, pretrained="/ckpt/tiny.safetensors"),
        loss=dataclasses.replace(base.loss, class_loss="paired", class_logit_bias=-10.0),
    )
    assert (
        contrastive_config_from_dict(json.loads(json.dumps(contrastive_config_to_dict(cfg)))) == cfg
    )


def test_unknown_keys_and_presets_are_refused() -> None:
    data = contrastive_config_to_dict(contrastive_preset("tiny"))
    data["model"]["colour"] = "blue"
    with pytest.raises(ConfigError, match="colour"):
        contrastive_config_from_dict(data)
    with pytest.raises(ConfigError, match="huge"):
        contrastive_preset("huge")


@pytest.mark.parametrize("tag", ["openai", "laion2b_s34b_b79k", "hf-hub:org/model"])
def test_hub_tags_are_refused_at_once(tag: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="offline") as info:
        ClipModelConfig(model_name="ViT-B-32", image_size=256, context_length=154, pretrained=tag)
    assert tag in str(info.value)
    assert time.perf_counter() - start < 1.0


def test_local_checkpoint_names_are_accepted_without_the_file() -> None:
    for name in ("w.pt", "w.pth", "/x/open_clip_model.safetensors", "pytorch_model.bin"):
        ClipModelConfig(model_name="ViT-B-32", image_size=256, context_length=154, pretrained=name)


@pytest.mark.parametrize(
    ("build", "field_name"),
    [
        (lambda: HybridLossConfig(weight=1.5), "weight"),
        (lambda: HybridLossConfig(class_loss="focal"), "class_loss"),  # type: ignore[arg-type]
        (lambda: HybridLossConfig(logit_scale=0.0), "logit_scale"),
        (lambda: HybridLossConfig(class_prompts=("a",)), "class_prompts"),
        (
            lambda: HybridLossConfig(class_loss="paired", negative_prompts=("a", "b")),
            "negative_prompts",
        ),
        (
            lambda: ClipModelConfig(
                model_name="x", image_size=64, context_length=77, heatmap_mode="stack"
            ),  # type: ignore[arg-type]
            "heatmap_mode",
        ),
        (lambda: ClipModelConfig(model_name="x", image_size=0, context_length=77), "image_size"),
        (
            lambda: ClipModelConfig(
                model_name="x",
                image_size=60,
                context_length=77,
                architecture=contrastive_preset("tiny").model.architecture,
            ),
            "image_size",
        ),
        (
            lambda: dataclasses.replace(
                contrastive_preset("tiny").model.architecture, vision_head_width=48
            ),
            "vision_head_width",
        ),
        (
            lambda: dataclasses.replace(contrastive_preset("tiny").training, batch_size=1),
            "batch_size",
        ),
        (
            lambda: dataclasses.replace(contrastive_preset("tiny").training, crop_scale_min=0.0),
            "crop_scale_min",
        ),
        (
            lambda: dataclasses.replace(contrastive_preset("tiny"), format_version=2),
            "format_version",
        ),
    ],
)
def test_invalid_values_name_the_field(build, field_name: str) -> None:
    with pytest.raises(ConfigError, match=field_name):
        build()


def test_paired_loss_accepts_default_negatives_and_bce_ignores_them() -> None:
    assert HybridLossConfig(class_loss="paired").negative_prompts == DEFAULT_NEGATIVE_PROMPTS
    assert HybridLossConfig(class_loss="bce", negative_prompts=()).num_classes == 14


def test_types_are_frozen() -> None:
    def parts(config: Any) -> list[Any]:
        """``config`` and the configs nested in it."""
        nested = [getattr(config, f.name) for f in dataclasses.fields(config)]
        return [config, *(p for v in nested if dataclasses.is_dataclass(v) for p in parts(v))]

    found = parts(contrastive_preset("tiny"))
    assert {type(p) for p in found} >= {
        ContrastiveConfig,
        ClipModelConfig,
        ClipArchitecture,
        ContrastiveTrainingConfig,
        HybridLossConfig,
    }
    for part in found:
        name = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, name, getattr(part, name))


def test_training_on_validate_needs_the_last_epoch_rule() -> None:
    official = ClipTrainSettings(train_splits="train+validate", model_selection="last").config()
    assert official.training.train_split_names == ("train", "validate")
    with pytest.raises(ConfigError, match="no held-out split"):
        ClipTrainSettings(train_splits="train+validate")


def test_kept_epochs_are_increasing_epoch_numbers_and_the_cli_overrides_them() -> None:
    from daug_core.contrastive.presets import ClipTrainSettings

    training = contrastive_preset("tiny").training
    for bad in ((0,), (6, 1), (1, 1)):
        with pytest.raises(ConfigError, match="keep_epochs must be increasing"):
            dataclasses.replace(training, keep_epochs=bad)
    settings = ClipTrainSettings(preset="official", keep_epochs=(2, 4))
    assert settings.config().training.keep_epochs == (2, 4)
    assert ClipTrainSettings(preset="official").config().training.keep_epochs == (1, 6, 10)
