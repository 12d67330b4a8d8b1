"""OpenAI CLIP in Hugging Face format (``transformers.CLIPModel``) to an open_clip checkpoint.

The official DAug code starts from ``openai/clip-vit-base-patch32`` as Hugging Face publishes it
(``config.json`` + ``model.safetensors``). open_clip's ``ViT-B-32-quickgelu`` is the same network
with other parameter names; :func:`convert_hf_clip` renames the tensors (no transformers import,
only safetensors), so the result loads with ``--pretrained FILE`` like any open_clip checkpoint,
where open_clip resamples the position embeddings to the preset's 256 px and 154 tokens.

Name map (HF -> open_clip), per tower and per layer i:

* vision: ``embeddings.class_embedding`` -> ``class_embedding``, ``patch_embedding`` ->
  ``conv1``, ``position_embedding.weight`` -> ``positional_embedding``, ``pre_layrnorm`` ->
  ``ln_pre``, ``post_layernorm`` -> ``ln_post``, ``visual_projection.weight``ᵀ -> ``proj``;
* text: ``token_embedding`` -> ``token_embedding``, ``position_embedding.weight`` ->
  ``positional_embedding``, ``final_layer_norm`` -> ``ln_final``, ``text_projection.weight``ᵀ
  -> ``text_projection``;
* layers: ``self_attn.{q,k,v}_proj`` stacked -> ``attn.in_proj_{weight,bias}``,
  ``self_attn.out_proj`` -> ``attn.out_proj``, ``layer_norm1/2`` -> ``ln_1/2``,
  ``mlp.fc1/fc2`` -> ``mlp.c_fc/c_proj``; ``logit_scale`` as is.

:func:`open_clip_architecture` gives the open_clip model config of an HF ``config.json`` (for
OpenAI's ViT-B/32 it equals open_clip's built-in ``ViT-B-32-quickgelu``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from daug_core.checkpoints.foreign import check_fits, convert_foreign_weights
from daug_core.settings import CheckpointError, ConfigError

# Shared by both towers: per-layer HF suffix -> open_clip suffix (q/k/v handled apart).
_LAYER_NAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_VISION_NAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_TEXT_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_PROJECTIONS = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}
# HF buffers with no open_clip counterpart (open_clip builds position ids and masks itself).
_IGNORED_SUFFIXES = ("position_ids",)


class ClipConversionError(ConfigError):
    """The files are not a Hugging Face CLIPModel this converter can map."""


def open_clip_architecture(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``,
    ``quick_gelu``) of a Hugging Face ``CLIPConfig`` dict."""
    try:
        vision, text = hf_config["vision_config"], hf_config["text_config"]
        activations = {vision.get("hidden_act", "quick_gelu"), text.get("hidden_act", "quick_gelu")}
        if len(activations) != 1 or not activations <= {"quick_gelu", "gelu"}:
            raise ClipConversionError(f"unsupported activations {sorted(activations)}")
        return {
            "embed_dim": int(hf_config.get("projection_dim", 512)),
            "quick_gelu": activations == {"quick_gelu"},
            "vision_cfg": {
                "image_size": int(vision["image_size"]),
                "layers": int(vision["num_hidden_layers"]),
                "width": int(vision["hidden_size"]),
                "head_width": int(vision["hidden_size"]) // int(vision["num_attention_heads"]),
                "mlp_ratio": int(vision["intermediate_size"]) / int(vision["hidden_size"]),
                "patch_size": int(vision["patch_size"]),
            },
            "text_cfg": {
                "context_length": int(text["max_position_embeddings"]),
                "vocab_size": int(text["vocab_size"]),
                "width": int(text["hidden_size"]),
                "heads": int(text["num_attention_heads"]),
                "layers": int(text["num_hidden_layers"]),
                "mlp_ratio": int(text["intermediate_size"]) / int(text["hidden_size"]),
            },
        }
    except KeyError as exc:
        raise ClipConversionError(f"CLIP config.json lacks {exc}") from None


def convert_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip names for a Hugging Face CLIPModel state dict; every HF tensor is used
    (an unknown name is an error, never dropped silently)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    fixed = {**_VISION_NAMES, **_TEXT_NAMES}
    for name, tensor in hf.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name in fixed:
            out[fixed[name]] = tensor
        elif name in _PROJECTIONS:
            out[_PROJECTIONS[name]] = tensor.t().contiguous()
        elif ".encoder.layers." in name:
            tower, rest = name.split(".encoder.layers.", 1)
            index, suffix = rest.split(".", 1)
            prefix = {"vision_model": "visual.transformer", "text_model": "transformer"}.get(tower)
            if prefix is None:
                raise ClipConversionError(f"unknown tensor {name!r}")
            block = f"{prefix}.resblocks.{index}"
            if suffix.startswith("self_attn.") and suffix[10:12] in ("q_", "k_", "v_"):
                kind = suffix.rsplit(".", 1)[1]  # weight | bias
                qkv.setdefault((block, kind), {})[suffix[10]] = tensor
            elif suffix in _LAYER_NAMES:
                out[f"{block}.{_LAYER_NAMES[suffix]}"] = tensor
            else:
                raise ClipConversionError(f"unknown tensor {name!r}")
        else:
            raise ClipConversionError(f"unknown tensor {name!r}")
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ClipConversionError(f"{block}: attention {kind} lacks {set('qkv') - set(parts)}")
        out[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _fitting(
    state: dict[str, torch.Tensor], architecture: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """``state`` once it is known to fit open_clip's model of ``architecture`` tensor for
    tensor (built on the meta device: shapes only, no memory)."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.model.CLIP(**architecture)
    check_fits(state, model.state_dict())
    return state


def convert_hf_clip(source: Path, destination: Path) -> dict[str, Any]:
    """Convert the Hugging Face CLIPModel folder ``source`` (``config.json`` and
    ``model.safetensors``; pickled ``.bin`` weights are refused) into the open_clip checkpoint
    ``destination`` (safetensors, written aside then renamed). The weights are read and
    checked as every converter's are (:mod:`daug_core.checkpoints.foreign`: a damaged file,
    NaN, or a tensor open_clip's model of that architecture does not have in that shape is a
    CheckpointError naming the file). Returns the open_clip architecture
    (:func:`open_clip_architecture`)."""
    config_path, weights = source / "config.json", source / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        pickled = (
            " (pytorch_model.bin is a pickle: not loaded)" if any(source.glob("*.bin")) else ""
        )
        raise ClipConversionError(f"{source} needs config.json and model.safetensors{pickled}")
    try:
        hf_config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise CheckpointError(config_path, f"not JSON ({exc})") from None
    architecture = open_clip_architecture(hf_config)
    state = convert_foreign_weights(
        weights, lambda hf: _fitting(convert_state_dict(hf), architecture)
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    save_file(state, str(partial), metadata={"source": "transformers CLIPModel"})
    partial.replace(destination)
    return architecture
