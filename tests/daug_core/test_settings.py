"""Settings objects: each validates its own ranges once, applies to its preset, round-trips."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from daug_core.contrastive.presets import ClipTrainSettings, contrastive_preset
from daug_core.diffusion.config import (
    InferenceConfig,
    TranslationConfig,
    config_from_dict,
    config_to_dict,
)
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import DiffusionTrainSettings, preset
from daug_core.diffusion.targets import TargetError
from daug_core.settings import ConfigError


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"scale": math.nan}, "scale must be a finite number >= 0"),
        ({"scale": -5.0}, "scale must be a finite number >= 0"),
        ({"scale": math.inf}, "scale"),
        ({"steps": 400}, "steps <= level"),  # the tiny preset's level is 300
        ({"level": 1000}, "T-1"),
        ({"steps": 0}, "steps"),
        ({"inversion_refinements": -1}, "inversion_refinements"),
        ({"smoothing_sigma": math.nan}, "smoothing_sigma"),
        ({"smoothing_sigma": 17.0}, "smoothing_sigma"),
        ({"mode": "tanh"}, "mode"),
        ({"difference": "ratio"}, "difference"),
        ({"preset": "huge"}, "preset must be one of .tiny., .paper., .official., got .huge."),
    ],
)
def test_heatmap_settings_refuse_bad_numbers_naming_them(changes, match):
    with pytest.raises(ConfigError, match=match):
        if "preset" in changes:
            HeatmapSettings(**changes)
        else:
            HeatmapSettings.build(translation=changes)


def test_heatmap_settings_apply_only_what_is_given():
    settings = HeatmapSettings.build(translation={"scale": 0.0, "steps": 5})
    tiny = preset("tiny")
    config = settings.config()
    assert config.translation.scale == 0.0  # no guidance is a choice, not a silent default
    assert config.translation.steps == 5
    assert config.translation.level == tiny.translation.level
    assert dataclasses.replace(config, translation=tiny.translation) == tiny
    paper = HeatmapSettings(preset="paper").config()
    assert paper.translation == preset("paper").translation and paper.image_size == 512


def test_targets_are_checked_canonicalised_and_default_to_all_classes():
    names = preset("tiny").class_names
    assert HeatmapSettings().target_names(names) == tuple(f"+{n}" for n in names)
    given = HeatmapSettings(targets=("+no finding", "-Pleural"))
    assert given.target_names(names) == ("+No Finding", "-Pleural")
    with pytest.raises(TargetError, match="unknown class"):
        HeatmapSettings(targets=("+Fracture",))
    with pytest.raises(TargetError, match="repeat"):
        HeatmapSettings(targets=("+Pleural", "+pleural"))
    with pytest.raises(TargetError, match="must start with"):
        HeatmapSettings(targets=("Pleural",))
    assert issubclass(TargetError, ConfigError)  # one clear error line on the CLI


def test_settings_of_a_translation_reproduce_it():
    translation = TranslationConfig(level=200, steps=7, scale=3.5, difference="raw")
    settings = HeatmapSettings(preset="tiny", targets=("+No Finding",), translation=translation)
    assert settings.translation == translation
    assert settings.config().inference == preset("tiny").inference  # not part of the settings


def test_preset_plus_changes_is_one_mechanism_for_python_cli_and_parameters():
    """build (Python, the CLI) and complete (a deployment's JSON parameters, before pydantic
    validates them) both start from the preset's whole translation and replace what is given."""
    from pydantic import TypeAdapter

    built = HeatmapSettings.build(preset="paper", translation={"scale": 30.0})
    expected = dataclasses.replace(preset("paper").translation, scale=30.0)
    assert built.translation == expected
    validated = TypeAdapter(HeatmapSettings).validate_python(
        {"preset": "paper", "translation": {"scale": 30.0}}
    )
    assert validated == built
    assert TypeAdapter(HeatmapSettings).validate_python({"preset": "paper"}).translation == (
        preset("paper").translation
    )
    # the resolved settings travel whole: their JSON form validates back to themselves
    dumped = TypeAdapter(HeatmapSettings).dump_python(built, mode="json")
    assert TypeAdapter(HeatmapSettings).validate_python(dumped) == built
    assert built.changed(translation={"mode": "sigmoid"}).translation == dataclasses.replace(
        expected, mode="sigmoid"
    )
    with pytest.raises(ConfigError, match=r"unknown keys \['scale'\].*translation"):
        HeatmapSettings.complete({"preset": "paper", "scale": 30.0})  # the old flat spelling
    with pytest.raises(
        ConfigError, match=r"HeatmapSettings.translation: unknown fields \['scal'\]"
    ):
        HeatmapSettings.build(translation={"scal": 30.0})
    with pytest.raises(ConfigError, match=r"translation.steps: None given"):
        HeatmapSettings.build(translation={"steps": None})
    with pytest.raises(ConfigError, match=r"steps: null given"):
        HeatmapSettings.complete({"translation": {"steps": None}})


def test_max_batch_is_not_a_translation_number_and_old_configs_still_load():
    config = preset("tiny")
    assert not hasattr(config.translation, "max_batch")
    assert config.inference == InferenceConfig(max_batch=64)
    assert preset("paper").inference.max_batch == 8
    stored = config_to_dict(config)
    assert config_from_dict(json.loads(json.dumps(stored))) == config
    old = json.loads(json.dumps(stored))  # as checkpoints of 2026-12-01 stored it
    old.pop("inference")
    old["translation"]["max_batch"] = 16
    assert config_from_dict(old).inference.max_batch == 16
    with pytest.raises(ConfigError, match="max_batch"):
        InferenceConfig(max_batch=-1)


def test_diffusion_train_settings_set_the_step_counts():
    settings = DiffusionTrainSettings(generator_steps=12, seed=4)
    config = settings.config()
    assert config.generator_training.num_steps == 12
    assert config.classifier_training.num_steps == preset("tiny").classifier_training.num_steps
    with pytest.raises(ConfigError, match="classifier_steps"):
        DiffusionTrainSettings(classifier_steps=0)
    with pytest.raises(ConfigError, match="preset must be one of"):
        DiffusionTrainSettings(preset="huge")  # type: ignore[arg-type]


def test_clip_train_settings_override_the_preset():
    settings = ClipTrainSettings(heatmap_mode="append", weight=1.0, epochs=2, seed=9)
    config = settings.config()
    base = contrastive_preset("tiny")
    assert config.model.heatmap_mode == "append" and config.loss.weight == 1.0
    assert (config.training.epochs, config.training.seed) == (2, 9)
    assert config.training.learning_rate == base.training.learning_rate
    assert ClipTrainSettings().config() == base
    with pytest.raises(ConfigError, match="weight"):
        ClipTrainSettings(weight=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        ClipTrainSettings(batch_size=1)
    with pytest.raises(ConfigError, match="local checkpoint"):
        ClipTrainSettings(pretrained="openai")


def _settings_with_choices() -> list[object]:
    """One instance of every settings class with a ``Literal`` field (the scan in
    tests/test_settings_shape.py finds the classes; this list must name each one)."""
    from daug_core.compute import ComputeSettings
    from storage.release.ingest_config import ReaderConfig
    from storage.synthetic.config import SynthConfig

    tiny = contrastive_preset("tiny")
    return [
        TranslationConfig(),
        DiffusionTrainSettings(),
        HeatmapSettings(),
        ComputeSettings(),
        ClipTrainSettings(),
        tiny.model,
        tiny.loss,
        tiny.training,
        ReaderConfig(),
        SynthConfig(),
    ]


def _choice_fields(settings: object) -> list[str]:
    import typing

    hints = typing.get_type_hints(type(settings))
    return [f.name for f in dataclasses.fields(settings) if "Literal[" in str(hints[f.name])]


@pytest.mark.parametrize("settings", _settings_with_choices(), ids=lambda s: type(s).__name__)
def test_every_choice_field_refuses_a_value_outside_its_choices(settings):
    """A typo in a YAML file, a Prefect parameter or a --flag fails where it is read, with the
    class and the field in the message."""
    names = _choice_fields(settings)
    assert names, type(settings).__name__
    for name in names:
        with pytest.raises(ConfigError, match=rf"{type(settings).__name__}\.{name} must be one of"):
            dataclasses.replace(settings, **{name: "no-such-choice"})
