"""Hugging Face CLIPModel -> open_clip: a randomly initialised transformers.CLIPModel and the
converted open_clip model give the same image and text embeddings; OpenAI's ViT-B/32 maps onto
open_clip's ViT-B-32-quickgelu name for name and shape; bad inputs are refused by name."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from daug_core.contrastive.convert import (
    ClipConversionError,
    convert_hf_clip,
    convert_state_dict,
    open_clip_architecture,
)

transformers = pytest.importorskip("transformers")


def _tiny_hf_config():
    return transformers.CLIPConfig(
        projection_dim=32,
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 48,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
        },
    )


def test_converted_model_embeds_images_and_texts_as_the_hf_model(tmp_path):
    torch.manual_seed(0)
    hf = transformers.CLIPModel(_tiny_hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")  # config.json + model.safetensors
    architecture = convert_hf_clip(tmp_path / "hf", tmp_path / "open_clip.safetensors")
    assert architecture["quick_gelu"] is True and architecture["vision_cfg"]["patch_size"] == 8

    model = open_clip.model.CLIP(**architecture).eval()
    model.load_state_dict(load_file(str(tmp_path / "open_clip.safetensors")), strict=True)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.tokenizer.tokenize(
        ["a chest x-ray image of pleural effusion.", "no findings", "cardiomegaly"]
    )
    with torch.no_grad():
        expected = hf(input_ids=tokens, pixel_values=pixels)
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(image, expected.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, expected.text_embeds, atol=1e-5, rtol=1e-5)
    assert model.logit_scale.item() == pytest.approx(hf.logit_scale.item())
    assert image.abs().max() > 0.01  # not a degenerate all-zero comparison


def test_openai_vit_b32_maps_onto_open_clips_quickgelu_model_name_for_name():
    with torch.device("meta"):  # shapes only: no 600 MB of random weights
        hf = transformers.CLIPModel(transformers.CLIPConfig())
        reference = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-32-quickgelu"))
    converted = convert_state_dict(hf.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    architecture = open_clip_architecture(hf.config.to_dict())
    builtin = open_clip.get_model_config("ViT-B-32-quickgelu")
    assert architecture["quick_gelu"] and architecture["embed_dim"] == builtin["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        assert builtin[tower].items() <= architecture[tower].items()


def test_pickled_weights_and_unknown_tensors_are_refused(tmp_path):
    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(_tiny_hf_config().to_dict()))
    (source / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ClipConversionError, match="pickle: not loaded"):
        convert_hf_clip(source, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ClipConversionError, match=r"unknown tensor 'vision_model\.extra'"):
        convert_state_dict({"vision_model.extra": torch.zeros(1)})
    with pytest.raises(ClipConversionError, match="lacks"):
        convert_state_dict(
            {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)}
        )
    with pytest.raises(ClipConversionError, match="lacks 'text_config'"):
        open_clip_architecture({"vision_config": {}})


def test_the_cli_converts_a_folder_and_refuses_a_missing_one(tmp_path):
    from tests.factories import run_daug

    transformers.CLIPModel(_tiny_hf_config()).save_pretrained(tmp_path / "hf")
    out = tmp_path / "clip.safetensors"
    done = run_daug("convert-clip", str(tmp_path / "hf"), str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "QuickGELU" in done.stdout + done.stderr and out.is_file()
    missing = run_daug("convert-clip", str(tmp_path / "none"), str(tmp_path / "x.safetensors"))
    assert missing.returncode == 2 and "needs config.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_converted_weights_load_through_build_clip_model_only_right_with_quick_gelu(tmp_path):
    from daug_core.contrastive.config import ClipArchitecture, ClipModelConfig
    from daug_core.contrastive.model import build_clip_model

    torch.manual_seed(2)
    hf = transformers.CLIPModel(_tiny_hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    convert_hf_clip(tmp_path / "hf", tmp_path / "clip.safetensors")
    architecture = ClipArchitecture(
        embed_dim=32,
        vision_width=64,
        vision_layers=2,
        vision_patch_size=8,
        vision_head_width=16,
        text_width=48,
        text_layers=2,
        text_heads=4,
    )
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=pixels).pooler_output

    def image_features(quick_gelu: bool, context_length: int = 77) -> torch.Tensor:
        config = ClipModelConfig(
            model_name="hf-tiny-test",
            image_size=32,
            context_length=context_length,
            architecture=architecture,
            pretrained=str(tmp_path / "clip.safetensors"),
            heatmap_mode="none",
            quick_gelu=quick_gelu,
        )
        model = build_clip_model(config, generator=torch.Generator().manual_seed(0)).eval()
        assert model.clip.positional_embedding.shape[0] == context_length
        with torch.no_grad():
            return model.clip.encode_image(pixels)

    torch.testing.assert_close(image_features(True), expected, atol=1e-5, rtol=1e-5)
    # 77 -> 154 text positions, as the paper preset resamples them; the image tower is untouched.
    torch.testing.assert_close(image_features(True, 154), expected, atol=1e-5, rtol=1e-5)
    assert (image_features(False) - expected).abs().max() > 1e-3  # GELU is another network
