"""The one checkpoint layout: save_pretrained / load_pretrained round trips, refusals that name
the directory and the reason, and every first-layout checkpoint (one header file per kind)
still loading as the same model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from daug_core.checkpoints.contrastive import load_clip_checkpoint, save_clip_checkpoint
from daug_core.checkpoints.diffusion import (
    load_classifier,
    load_classifier_checkpoint,
    save_classifier_checkpoint,
)
from daug_core.checkpoints.layout import (
    FORMAT_VERSION,
    flat_weights,
    load_pretrained,
    save_pretrained,
    trainer_step,
)
from daug_core.checkpoints.names import MANIFEST, MODEL_JSON, MODEL_WEIGHTS
from daug_core.contrastive.model import build_model
from daug_core.contrastive.presets import contrastive_preset
from daug_core.diffusion.classifier.training import init_classifier_state
from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionClassifierConfig
from daug_core.settings import CheckpointError
from tests.daug_core.helpers import micro_config, same_weights


def test_save_and_load_pretrained_round_trip(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    path = save_pretrained(
        tmp_path / "m", kind="clip", header={"config": {"a": 1}}, weights=weights
    )
    header = json.loads((path / MODEL_JSON).read_text())
    assert header == {"config": {"a": 1}, "format_version": FORMAT_VERSION, "kind": "clip"}
    assert sorted(p.name for p in path.iterdir()) == sorted([MODEL_JSON, MODEL_WEIGHTS, MANIFEST])
    found = load_pretrained(path, ("clip",))
    assert found.kind == "clip" and found.header == {"config": {"a": 1}}
    assert found.weights == path / MODEL_WEIGHTS
    assert trainer_step(path) is None
    with pytest.raises(CheckpointError, match=r"holds a clip checkpoint, not classifier"):
        load_pretrained(path, ("classifier",))
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        save_pretrained(tmp_path / "x", kind="mystery", header={})  # type: ignore[arg-type]


def test_an_unknown_format_version_or_kind_is_refused(tmp_path):
    path = save_pretrained(tmp_path / "m", kind="clip", header={}, weights={"w": torch.ones(1)})
    (path / MANIFEST).unlink()
    (path / MODEL_JSON).write_text(json.dumps({"format_version": 9, "kind": "clip"}))
    with pytest.raises(CheckpointError, match="format_version 9"):
        load_pretrained(path, ("clip",))
    (path / MODEL_JSON).write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": "x"}))
    with pytest.raises(CheckpointError, match="unknown kind 'x'"):
        load_pretrained(path, ("clip",))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "none", ("clip",))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"holds no model\.json"):
        load_pretrained(empty, ("clip",))


def _to_first_layout(path: Path, header_name: str, weights_name: str, header: dict) -> None:
    """Rewrite a checkpoint as the first layout wrote it: its own header file, its own weights
    name, no manifest (written before manifests existed)."""
    (path / MODEL_JSON).unlink()
    (path / MANIFEST).unlink()
    if weights_name != MODEL_WEIGHTS:
        (path / MODEL_WEIGHTS).rename(path / weights_name)
    (path / header_name).write_text(json.dumps(header))


def test_a_first_layout_classifier_resumes_and_loads(tmp_path):
    state = init_classifier_state(
        micro_config(),
        pos_weight=torch.arange(1.0, 8.0),
        generator=torch.Generator().manual_seed(3),
    )
    path = save_classifier_checkpoint(state, tmp_path / "clf")
    header = json.loads((path / MODEL_JSON).read_text())
    first = {
        "format_version": 1,
        "classifier": header["config"],
        "pos_weight": header["pos_weight"],
    }
    _to_first_layout(path, "classifier.json", "classifier.safetensors", first)
    assert same_weights(load_classifier(path), state.classifier)
    resumed = load_classifier_checkpoint(path)
    assert torch.equal(resumed.pos_weight, state.pos_weight) and resumed.step == state.step


def test_a_first_layout_converted_classifier_loads(tmp_path):
    model = GuidedDiffusionClassifierConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        num_head_channels=32,
    )
    from daug_core.diffusion.classifier.guided_diffusion import EncoderClassifier

    torch.manual_seed(0)
    source = EncoderClassifier(model)
    # What convert_guided_diffusion_classifier writes after converting a guided-diffusion file.
    header = {"config": dataclasses.asdict(model), "sources": {"weights": "ab" * 32}}
    path = save_pretrained(
        tmp_path / "enc",
        kind="guided_diffusion_classifier",
        header=header,
        weights=flat_weights(source),
    )
    assert load_pretrained(path, ("guided_diffusion_classifier",)).header["sources"]
    header = json.loads((path / MODEL_JSON).read_text())
    first = {"format": 1, "guided_diffusion": header["config"], "sources": header["sources"]}
    _to_first_layout(path, "encoder.json", "encoder.safetensors", first)
    loaded = load_classifier(path)
    assert same_weights(loaded, source)
    with pytest.raises(CheckpointError, match="cannot resume training"):
        load_classifier_checkpoint(path)


def test_a_first_layout_clip_checkpoint_loads(tmp_path):
    config = contrastive_preset("tiny")
    model = build_model(config, ("+No Finding",), seed=2)
    path = save_clip_checkpoint(tmp_path / "clip", model, config, {"epoch": 3})
    header = json.loads((path / MODEL_JSON).read_text())
    first = {k: header[k] for k in ("config", "heatmap_targets", "info")} | {"format_version": 1}
    # The first layout named the weights model.safetensors too.
    _to_first_layout(path, "clip.json", MODEL_WEIGHTS, first)
    loaded = load_clip_checkpoint(path)
    assert loaded.info == {"epoch": 3} and loaded.heatmap_targets == ("+No Finding",)
    assert same_weights(loaded.model, model)


def test_first_layout_converted_generator_and_trained_generator_headers(tmp_path):
    eps = tmp_path / "eps"
    (eps / "unet").mkdir(parents=True)
    gd = {"image_size": 32}
    (eps / "eps.json").write_text(
        json.dumps({"format": 1, "class_label": 0, "eps_channels": 1, "guided_diffusion": gd})
    )
    found = load_pretrained(eps, ("generator", "guided_diffusion_generator"))
    assert found.kind == "guided_diffusion_generator"
    assert found.header == {"config": gd, "class_label": 0, "eps_channels": 1, "sources": {}}
    trained = tmp_path / "gen"
    (trained / "unet").mkdir(parents=True)
    (trained / "trainer_state.json").write_text(json.dumps({"config": {"x": 1}, "step": 7}))
    found = load_pretrained(trained, ("generator",))
    assert found.kind == "generator" and found.header == {"config": {"x": 1}}
    assert trainer_step(trained) == 7
