"""Weights written elsewhere (guided-diffusion's .pt, a .safetensors, Hugging Face CLIP) go
through one reading path for every converter: an empty file, a truncated one, a tensor with NaN
and a tensor of the wrong shape are each a CheckpointError naming the file and the fault (and
the tensor), and nothing is written. Tiny random models of openai's own networks
(guided-diffusion-sdk) and a tiny transformers CLIPModel give the valid files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daug_core.diffusion.guided_diffusion_config import (
    GuidedDiffusionClassifierConfig,
    GuidedDiffusionConfig,
)
from daug_core.settings import CheckpointError

unet_module = pytest.importorskip("guided_diffusion.unet")
transformers = pytest.importorskip("transformers")

GENERATOR = GuidedDiffusionConfig(
    image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,),
)  # fmt: skip
CLASSIFIER = GuidedDiffusionClassifierConfig(
    image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,), num_head_channels=32,
)  # fmt: skip
# The command-line spelling of the two settings above.
GENERATOR_OPTIONS = (
    *("--image-size", "32", "--model-channels", "32", "--num-res-blocks", "1"),
    *("--channel-mult", "1", "--channel-mult", "2", "--attention-resolutions", "2"),
)
CLASSIFIER_OPTIONS = (*GENERATOR_OPTIONS, "--num-head-channels", "32")
# A tensor of each model, to damage: a normalisation weight (one dimension).
TENSOR = {
    "generator": "out.0.weight",
    "classifier": "out.0.weight",
    "clip": "text_model.final_layer_norm.weight",
}
FAULTS = {
    "empty": r"is empty \(0 bytes\)",
    "truncated": r"truncated or unreadable",
    "nan": r"tensor '{tensor}' holds 1 non-finite value",
    "shape": r"shape \(7,\), the (model expects|settings expect) \(\d+,\)",
}


def generator_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return unet_module.UNetModel(
        image_size=32, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
        attention_resolutions=(2,), channel_mult=(1, 2), num_classes=2,
    ).state_dict()  # fmt: skip


def classifier_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return unet_module.EncoderUNetModel(
        image_size=32, in_channels=1, model_channels=32, out_channels=7, num_res_blocks=1,
        attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention",
    ).state_dict()  # fmt: skip


def clip_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny Hugging Face CLIPModel's config.json in ``folder``; returns its weights."""
    config = transformers.CLIPConfig(
        projection_dim=32,
        vision_config={
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": 32, "patch_size": 16,
        },
        text_config={
            "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 77, "vocab_size": 49408,
        },
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    torch.manual_seed(0)
    return transformers.CLIPModel(config).state_dict()


def write_faulty(state: dict[str, torch.Tensor], path: Path, fault: str, tensor: str) -> Path:
    """``state`` written to ``path`` (``.pt`` by torch.save, else safetensors) with ``fault``:
    empty, truncated to half, one NaN in ``tensor``, or ``tensor`` of shape (7,)."""
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fault == "empty":
        path.write_bytes(b"")
        return path
    if fault == "nan":
        state[tensor].view(-1)[0] = float("nan")
    elif fault == "shape":
        state[tensor] = torch.ones(7)
    if path.suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    if fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def faulty_source(kind: str, fault: str, where: Path) -> Path:
    """The file (or, for CLIP, folder) a converter of ``kind`` reads, damaged by ``fault``: a
    0-byte .pt, a truncated .safetensors, a NaN or a wrongly shaped tensor in a .pt."""
    if kind == "clip":
        state = clip_folder(where / "hf")
        write_faulty(state, where / "hf" / "model.safetensors", fault, TENSOR[kind])
        return where / "hf"
    state = generator_state() if kind == "generator" else classifier_state()
    suffix = ".safetensors" if fault == "truncated" else ".pt"
    return write_faulty(state, where / f"model{suffix}", fault, TENSOR[kind])


def weights_file(kind: str, source: Path) -> Path:
    return source / "model.safetensors" if kind == "clip" else source


def _convert(kind: str) -> Callable[[Path, Path], object]:
    from daug_core.checkpoints.diffusion import (
        convert_guided_diffusion,
        convert_guided_diffusion_classifier,
    )
    from daug_core.contrastive.convert import convert_hf_clip

    if kind == "generator":
        return lambda source, out: convert_guided_diffusion(GENERATOR, source, out)
    if kind == "classifier":
        return lambda source, out: convert_guided_diffusion_classifier(CLASSIFIER, source, out)
    return lambda source, out: convert_hf_clip(source, out / "clip.safetensors")


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kind", sorted(TENSOR))
def test_every_converter_refuses_a_damaged_weights_file_naming_it_and_the_fault(
    tmp_path, kind, fault
):
    source = faulty_source(kind, fault, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as refused:
        _convert(kind)(source, out)
    message = str(refused.value)
    assert str(weights_file(kind, source)) in message, message
    assert refused.value.reason.count("\n") == 0
    pattern = FAULTS[fault].format(tensor=TENSOR[kind].replace(".", r"\."))
    assert re.search(pattern, message), message
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(TENSOR))
def test_every_converter_converts_the_undamaged_file(tmp_path, kind):
    if kind == "clip":
        source = tmp_path / "hf"
        save_file(clip_folder(source), str(source / "model.safetensors"))
    else:
        source = tmp_path / "model.pt"
        torch.save(generator_state() if kind == "generator" else classifier_state(), source)
    _convert(kind)(source, tmp_path / "out")
    assert any((tmp_path / "out").iterdir())
