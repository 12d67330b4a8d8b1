"""openai/guided-diffusion ``UNetModel`` checkpoints as diffusers ``UNet2DModel``.

The official DAug generator (and the public diffusion-anomaly CheXpert models) are
guided-diffusion UNets: 1 channel in, ``learn_sigma`` (2 channels out: ε and the variance
interpolation), class-conditional on No Finding (2 classes, decoded with y = 1), attention at
16 px with one head, no scale-shift norm, convolutional up/down-sampling. diffusers'
``UNet2DModel`` expresses that network exactly (the same family diffusers' own
``convert_consistency_to_diffusers.py`` maps): :func:`unet_config` gives its arguments and
:func:`convert_state_dict` renames the weights; :class:`ConditionedEps` makes the result an
ε-model for :mod:`daug_core.diffusion.ddim` (class label fixed, variance channels dropped).

Mapping, per level l of ``channel_mult`` (attention where 2**l is an attention downsample rate):

* ``input_blocks.0.0`` -> ``conv_in``; then per level R ResBlocks (+ attention) and a
  ``Downsample`` (not after the last level) -> ``down_blocks.l.resnets.r`` /
  ``.attentions.r`` / ``.downsamplers.0``;
* ``middle_block.{0,1,2}`` -> ``mid_block.resnets.0``, ``.attentions.0``, ``.resnets.1``;
* per level from the deepest, R + 1 ResBlocks (+ attention) and an ``Upsample`` ->
  ``up_blocks.(L-1-l)``;
* ResBlock ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``, ``skip_connection`` ->
  ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``;
  attention ``norm``, ``qkv`` (a 1x1 conv1d, q/k/v stacked), ``proj_out`` -> ``group_norm``,
  ``to_q/to_k/to_v``, ``to_out.0`` (linear layers);
* ``time_embed.0/2`` -> ``time_embedding.linear_1/2``, ``label_emb`` -> ``class_embedding``,
  ``out.0/2`` -> ``conv_norm_out`` / ``conv_out``.

Timesteps use guided-diffusion's [cos, sin] sinusoid without frequency shift
(``flip_sin_to_cos=True, freq_shift=0``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from daug_core.checkpoints.foreign import load_fitting
from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionConfig, GuidedDiffusionError


def _has_attention(model: GuidedDiffusionConfig, level: int) -> bool:
    return 2**level in model.attention_resolutions


def unet_config(model: GuidedDiffusionConfig) -> dict[str, Any]:
    """diffusers ``UNet2DModel`` arguments of the same network."""
    levels = range(len(model.channel_mult))
    return {
        "sample_size": model.image_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "layers_per_block": model.num_res_blocks,
        "block_out_channels": tuple(model.model_channels * m for m in model.channel_mult),
        "down_block_types": tuple(
            "AttnDownBlock2D" if _has_attention(model, lv) else "DownBlock2D" for lv in levels
        ),
        "up_block_types": tuple(
            "AttnUpBlock2D" if _has_attention(model, lv) else "UpBlock2D" for lv in reversed(levels)
        ),
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "attention_head_dim": None,  # one head of all channels in every attention block
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if model.use_scale_shift_norm else "default",
        "num_class_embeds": model.classes,
        "downsample_padding": 1,
    }


def resblock_names(source: str, target: str, skip: bool = True) -> dict[str, str]:
    """Source -> target names of one guided-diffusion ``ResBlock`` as a diffusers
    ``ResnetBlock2D`` (weights and biases); ``skip`` adds the 1x1 skip convolution, which
    exists only where the width changes (identity skips have no weights)."""
    names = {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
    }
    if skip:
        names["skip_connection"] = "conv_shortcut"
    return {
        f"{source}.{a}.{kind}": f"{target}.{b}.{kind}"
        for a, b in names.items()
        for kind in ("weight", "bias")
    }


def _take(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise GuidedDiffusionError(f"the checkpoint lacks {name!r}") from None


def _conv1x1(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The 1x1 ``conv1d`` weight ``name`` ([out, in, 1]) as a linear layer's [out, in]."""
    weight = _take(state, name)
    if weight.dim() != 3 or weight.shape[-1] != 1:
        raise GuidedDiffusionError(
            f"tensor {name!r} has shape {tuple(weight.shape)}, a 1x1 conv1d weight "
            "[out, in, 1] expected"
        )
    return weight[..., 0]


def _attention(state: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    out = {
        f"{target}.group_norm.weight": _take(state, f"{source}.norm.weight"),
        f"{target}.group_norm.bias": _take(state, f"{source}.norm.bias"),
        f"{target}.to_out.0.weight": _conv1x1(state, f"{source}.proj_out.weight"),
        f"{target}.to_out.0.bias": _take(state, f"{source}.proj_out.bias"),
    }
    weight = _conv1x1(state, f"{source}.qkv.weight")
    bias = _take(state, f"{source}.qkv.bias")
    if weight.shape[0] % 3 or bias.shape != weight.shape[:1]:
        raise GuidedDiffusionError(
            f"tensors '{source}.qkv.weight' / '.bias' have shapes {tuple(weight.shape)} / "
            f"{tuple(bias.shape)}: not q, k and v stacked"
        )
    for name, w, b in zip(("q", "k", "v"), weight.chunk(3), bias.chunk(3), strict=True):
        out[f"{target}.to_{name}.weight"], out[f"{target}.to_{name}.bias"] = w, b
    return out


# The timestep MLP and the first convolution: named alike in guided-diffusion's UNet and
# encoder, and in diffusers' UNet2DModel and our rebuilt encoder.
STEM_RENAMES: dict[str, str] = {
    "time_embed.0.weight": "time_embedding.linear_1.weight",
    "time_embed.0.bias": "time_embedding.linear_1.bias",
    "time_embed.2.weight": "time_embedding.linear_2.weight",
    "time_embed.2.bias": "time_embedding.linear_2.bias",
    "input_blocks.0.0.weight": "conv_in.weight",
    "input_blocks.0.0.bias": "conv_in.bias",
}


def convert_state_dict(
    model: GuidedDiffusionConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The guided-diffusion state dict ``state`` under ``UNet2DModel`` names. Every tensor must
    be used and every expected one present (:class:`GuidedDiffusionError` names the first
    that is not)."""
    state = dict(state)
    renames = {
        **STEM_RENAMES,
        "out.0.weight": "conv_norm_out.weight",
        "out.0.bias": "conv_norm_out.bias",
        "out.2.weight": "conv_out.weight",
        "out.2.bias": "conv_out.bias",
    }
    if model.classes is not None:
        renames["label_emb.weight"] = "class_embedding.weight"
    out: dict[str, torch.Tensor] = {}
    levels = len(model.channel_mult)
    block = 1
    for level in range(levels):
        for r in range(model.num_res_blocks):
            renames |= resblock_names(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{r}")
            if _has_attention(model, level):
                out |= _attention(
                    state, f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{r}"
                )
            block += 1
        if level != levels - 1:
            for kind in ("weight", "bias"):
                renames[f"input_blocks.{block}.0.op.{kind}"] = (
                    f"down_blocks.{level}.downsamplers.0.conv.{kind}"
                )
            block += 1
    renames |= resblock_names("middle_block.0", "mid_block.resnets.0")
    renames |= resblock_names("middle_block.2", "mid_block.resnets.1")
    out |= _attention(state, "middle_block.1", "mid_block.attentions.0")
    block = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(model.num_res_blocks + 1):
            renames |= resblock_names(f"output_blocks.{block}.0", f"up_blocks.{up}.resnets.{i}")
            position = 1
            if _has_attention(model, level):
                out |= _attention(
                    state, f"output_blocks.{block}.1", f"up_blocks.{up}.attentions.{i}"
                )
                position = 2
            if level and i == model.num_res_blocks:
                for kind in ("weight", "bias"):
                    renames[f"output_blocks.{block}.{position}.conv.{kind}"] = (
                        f"up_blocks.{up}.upsamplers.0.conv.{kind}"
                    )
            block += 1
    for source, target in renames.items():
        if source in state:
            out[target] = state.pop(source)
        elif "skip_connection" not in source:  # identity skips have no weights
            raise GuidedDiffusionError(f"the checkpoint lacks {source!r}")
    if state:
        raise GuidedDiffusionError(
            f"{len(state)} tensor(s) not mapped, e.g. {sorted(state)[:3]}: do the settings "
            "match the checkpoint?"
        )
    return out


def convert_unet(model: GuidedDiffusionConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """A diffusers ``UNet2DModel`` carrying the guided-diffusion weights ``state`` (strict; a
    tensor of another shape than the settings give is a one-line
    :class:`~daug_core.checkpoints.foreign.WeightsMismatchError`)."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**unet_config(model))
    module: nn.Module = unet  # type: ignore[assignment]  # diffusers' stubs hide nn.Module
    load_fitting(module, convert_state_dict(model, state))
    return module.eval()


class ConditionedEps(nn.Module):
    """ε_θ(x, t) of a converted class-conditional, learned-sigma UNet, as
    :mod:`daug_core.diffusion.ddim`
    calls it: every row decoded with ``class_label`` (the official code decodes with y = 1),
    the variance channels dropped."""

    def __init__(self, unet: nn.Module, *, channels: int, class_label: int | None) -> None:
        super().__init__()
        self.unet, self.channels, self.class_label = unet, channels, class_label

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = None
        if self.class_label is not None:
            labels = torch.full((x.shape[0],), self.class_label, dtype=torch.long, device=x.device)
        out: torch.Tensor = self.unet(x, t, class_labels=labels).sample
        return out[:, : self.channels]
