"""openai/guided-diffusion ``EncoderUNetModel`` checkpoints (the official DAug noise-aware
classifier) as a module of diffusers and open_clip blocks.

The official classifier (``diffusion_anomaly/scripts/train_classifier.sh`` of the DAug code,
guided-diffusion's ``create_classifier``) is an ``EncoderUNetModel`` at 512 px: 1 channel in,
width 32 (``classifier_width``), 4 residual blocks per level (``classifier_depth``), channel
multipliers (1, 1, 2, 2, 4, 4), attention with 64-channel heads at 32 and 16 px, scale-shift
norm, residual down-sampling, attention pooling, 7 logits (No Finding and the 6 finding
super-classes). :class:`GuidedDiffusionClassifierConfig` holds those settings,
:class:`EncoderClassifier` is the same network, :func:`convert_classifier_state_dict` renames
the weights (strictly: every tensor used, every expected one present, every shape checked) and
:func:`convert_classifier` returns the loaded module. A checkpoint of the official training
script is a dict whose ``"state_dict"`` entry is the state dict converted here.

Blocks, per level l of ``channel_mult`` (width C_l = model_channels * mult; attention where 2**l
is an attention downsample rate; R = ``num_res_blocks``):

* ``time_embed.0/2`` -> ``time_embedding.linear_1/2`` (diffusers ``TimestepEmbedding``), fed by
  diffusers ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``: guided-diffusion's
  [cos, sin] sinusoid without frequency shift;
* ``input_blocks.0.0`` -> ``conv_in``; then per level R ``ResBlock`` s (+ ``AttentionBlock``)
  and, except after the last level, a down-sampler -> diffusers ``get_down_block``:
  ``AttnDownBlock2D`` at attention levels, else ``ResnetDownsampleBlock2D`` (residual
  down-sampling) or ``DownBlock2D`` (strided 3x3 convolution); ``down_blocks.l.resnets.r`` /
  ``.attentions.r`` / ``.downsamplers.0`` (a ``ResnetBlock2D(down=True)``, whose 2x2 average
  pooling of both paths after the first norm and SiLU is guided-diffusion's ``h_upd``/``x_upd``,
  or a ``Downsample2D`` convolution: ``op`` -> ``conv``);
* ``middle_block.{0,1,2}`` -> ``mid_block.resnets.0``, ``.attentions.0``, ``.resnets.1``
  (diffusers ``UNetMidBlock2D``; its attention GroupNorm is asked for explicitly, diffusers
  leaves it out by default under scale-shift norm);
* ResBlock ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3``, ``skip_connection`` (a 1x1
  convolution where the width changes) -> ``ResnetBlock2D`` ``norm1``, ``conv1``,
  ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``; ``time_embedding_norm``
  ``"scale_shift"`` is guided-diffusion's ``norm(h) * (1 + scale) + shift``, ``"default"`` its
  ``h + emb`` before the norm;
* ``AttentionBlock`` ``norm``, ``qkv`` (a 1x1 conv1d), ``proj_out`` -> diffusers ``Attention``
  ``group_norm``, ``to_q/to_k/to_v``, ``to_out.0`` (linear layers), C_l // num_head_channels
  heads. guided-diffusion's blocks use ``QKVAttentionLegacy`` (``use_new_attention_order`` is
  False in ``create_classifier``): the ``qkv`` rows are grouped per head, [q_h, k_h, v_h] for
  head h, so q is rows ``h * 3d + [0, d)`` of every head (d = head channels), k and v the next
  d rows each; diffusers' heads are contiguous slices of q, k and v;
* ``out.0`` -> ``norm_out`` (then SiLU); the pooling head:

  - ``pool="attention"``: ``out.2`` (guided-diffusion's CLIP-derived ``AttentionPool2d``) ->
    ``attention_pool``, open_clip's ``modified_resnet.AttentionPool2d``: the same math (mean
    token prepended, positional embedding added, multi-head attention of all tokens with
    scale d**-0.5, output of token 0 through ``c_proj``) with C // num_head_channels heads.
    guided-diffusion's pool uses ``QKVAttention`` (q, k, v chunked first, then heads), which
    is the order of ``torch``'s multi-head attention: ``qkv_proj`` is cut in three thirds ->
    ``q_proj``, ``k_proj``, ``v_proj``; ``positional_embedding`` (C, T) is transposed to
    (T, C); the 1x1 conv1d ``c_proj`` becomes a linear layer;
  - ``pool="adaptive"``: ``out.3`` (a 1x1 convolution after global average pooling) ->
    ``head``, a linear layer applied to the spatial mean.

Hand-written here: only the composition (``forward``) and the adaptive head (a mean and a
``nn.Linear``: no library block is the bare average-pool-then-linear head). guided-diffusion's
``GroupNorm32`` computes in float32 whatever the input dtype, diffusers' and torch's GroupNorm
in the input's: in float32, the converted module's precision, both are the same 32-group,
eps 1e-5 norm (tested equal to openai's model within 1e-5).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

from daug_core.diffusion.classifier.embedding import embed_timesteps
from daug_core.diffusion.guided_diffusion_config import (
    NORM_EPS,
    NORM_GROUPS,
    GuidedDiffusionClassifierConfig,
    GuidedDiffusionClassifierError,
)
from daug_core.diffusion.guided_diffusion_convert import STEM_RENAMES, resblock_names


class EncoderClassifier(nn.Module):
    """guided-diffusion's ``EncoderUNetModel`` of diffusers and open_clip blocks:
    ``forward(x (N, in_channels, S, S), t (N,) or scalar) -> logits (N, out_channels)``.

    Module names: ``time_proj``, ``time_embedding``, ``conv_in``, ``down_blocks``,
    ``mid_block``, ``norm_out``, then ``attention_pool`` (``pool="attention"``) or ``head``
    (``pool="adaptive"``); the module docstring maps them onto guided-diffusion's."""

    def __init__(self, config: GuidedDiffusionClassifierConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        temb = config.time_embed_dim
        time_shift = "scale_shift" if config.use_scale_shift_norm else "default"
        self.time_proj = Timesteps(
            config.model_channels, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        self.time_embedding = TimestepEmbedding(config.model_channels, temb)
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        blocks = []
        in_channels = widths[0]
        for level, width in enumerate(widths):
            if config.has_attention(level):
                kind = "AttnDownBlock2D"
            elif config.resblock_updown:
                kind = "ResnetDownsampleBlock2D"
            else:
                kind = "DownBlock2D"
            blocks.append(
                get_down_block(
                    kind,
                    num_layers=config.num_res_blocks,
                    in_channels=in_channels,
                    out_channels=width,
                    temb_channels=temb,
                    add_downsample=level < len(widths) - 1,
                    resnet_eps=NORM_EPS,
                    resnet_act_fn="silu",
                    resnet_groups=NORM_GROUPS,
                    attention_head_dim=config.num_head_channels,
                    downsample_padding=1,
                    downsample_type="resnet" if config.resblock_updown else "conv",
                    resnet_time_scale_shift=time_shift,
                )
            )
            in_channels = width
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(
            in_channels=in_channels,
            temb_channels=temb,
            resnet_eps=NORM_EPS,
            resnet_time_scale_shift=time_shift,
            resnet_act_fn="silu",
            resnet_groups=NORM_GROUPS,
            attn_groups=NORM_GROUPS,
            attention_head_dim=config.num_head_channels,
        )
        self.norm_out = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS)
        self.act = nn.SiLU()
        # One of the two heads exists, by config.pool (their names differ in the state dict).
        if config.pool == "attention":
            self.attention_pool = AttentionPool2d(
                config.pool_size, in_channels, config.heads(in_channels), config.out_channels
            )
        else:
            self.head = nn.Linear(in_channels, config.out_channels)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class of each logit, in order."""
        return self.config.class_names

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        temb = embed_timesteps(self.time_proj, self.time_embedding, t, x, self.conv_in.weight.dtype)
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, temb)
        h = self.mid_block(h, temb)
        h = self.act(self.norm_out(h))
        if self.config.pool == "attention":
            logits: torch.Tensor = self.attention_pool(h)
            return logits
        return self.head(h.mean(dim=(2, 3)))


def _take(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise GuidedDiffusionClassifierError(
            f"the checkpoint lacks {name!r}: do the settings match the checkpoint?"
        ) from None


def _expect_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(tensor.shape) != shape:
        raise GuidedDiffusionClassifierError(
            f"{name!r} has shape {tuple(tensor.shape)}, the settings expect {shape}: do the "
            "settings match the checkpoint?"
        )
    return tensor


def _attention(
    state: dict[str, torch.Tensor], source: str, target: str, channels: int, heads: int
) -> dict[str, tuple[str, torch.Tensor]]:
    """One ``AttentionBlock`` (``QKVAttentionLegacy``: q, k, v rows grouped per head) as a
    diffusers ``Attention`` (contiguous heads in each of ``to_q``, ``to_k``, ``to_v``)."""
    out = {}
    for kind in ("weight", "bias"):
        norm, proj = f"{source}.norm.{kind}", f"{source}.proj_out.{kind}"
        out[f"{target}.group_norm.{kind}"] = (norm, _take(state, norm))
        tensor = _take(state, proj)  # a 1x1 conv1d: (C, C, 1) -> linear (C, C)
        out[f"{target}.to_out.0.{kind}"] = (proj, tensor[..., 0] if kind == "weight" else tensor)
    weight_name, bias_name = f"{source}.qkv.weight", f"{source}.qkv.bias"
    weight = _expect_shape(weight_name, _take(state, weight_name), (3 * channels, channels, 1))
    bias = _expect_shape(bias_name, _take(state, bias_name), (3 * channels,))
    per_head = channels // heads
    weight = weight[..., 0].reshape(heads, 3, per_head, channels)
    bias = bias.reshape(heads, 3, per_head)
    for i, name in enumerate(("q", "k", "v")):
        out[f"{target}.to_{name}.weight"] = (weight_name, weight[:, i].reshape(channels, channels))
        out[f"{target}.to_{name}.bias"] = (bias_name, bias[:, i].reshape(channels))
    return out


def _attention_pool(
    state: dict[str, torch.Tensor], config: GuidedDiffusionClassifierConfig, channels: int
) -> dict[str, tuple[str, torch.Tensor]]:
    """guided-diffusion's ``AttentionPool2d`` (``QKVAttention``: q, k, v chunked first, then
    heads) as open_clip's (separate q, k, v projections, torch's head order)."""
    tokens = config.pool_size**2 + 1
    position = "out.2.positional_embedding"
    out = {
        "attention_pool.positional_embedding": (
            position,
            _expect_shape(position, _take(state, position), (channels, tokens)).t(),
        ),
    }
    weight_name, bias_name = "out.2.qkv_proj.weight", "out.2.qkv_proj.bias"
    weight = _expect_shape(weight_name, _take(state, weight_name), (3 * channels, channels, 1))
    bias = _expect_shape(bias_name, _take(state, bias_name), (3 * channels,))
    for name, w, b in zip(("q", "k", "v"), weight[..., 0].chunk(3), bias.chunk(3), strict=True):
        out[f"attention_pool.{name}_proj.weight"] = (weight_name, w)
        out[f"attention_pool.{name}_proj.bias"] = (bias_name, b)
    out["attention_pool.c_proj.weight"] = (
        "out.2.c_proj.weight",
        _take(state, "out.2.c_proj.weight")[..., 0],
    )
    out["attention_pool.c_proj.bias"] = ("out.2.c_proj.bias", _take(state, "out.2.c_proj.bias"))
    return out


def _expected_shapes(config: GuidedDiffusionClassifierConfig) -> dict[str, torch.Size]:
    """Name -> shape of :class:`EncoderClassifier`'s state dict (built on the meta device:
    nothing allocated)."""
    with torch.device("meta"):
        module = EncoderClassifier(config)
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def convert_classifier_state_dict(
    config: GuidedDiffusionClassifierConfig, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The ``EncoderUNetModel`` state dict ``state`` under :class:`EncoderClassifier`'s names.
    Every tensor must be used, every expected one present and of the shape ``config``
    implies (:class:`GuidedDiffusionClassifierError` names the first that is not); ``state``
    itself is left unchanged."""
    state = dict(state)
    widths = config.widths
    renames = {
        **STEM_RENAMES,
        "out.0.weight": "norm_out.weight",
        "out.0.bias": "norm_out.bias",
    }
    # target name -> (source name, tensor) of the tensors reshaped, cut or transposed on the
    # way (their values are copied below: no views into ``state``, each its own storage).
    derived: dict[str, tuple[str, torch.Tensor]] = {}
    block, in_channels = 1, widths[0]
    for level, width in enumerate(widths):
        for r in range(config.num_res_blocks):
            source, target = f"input_blocks.{block}", f"down_blocks.{level}"
            renames |= resblock_names(f"{source}.0", f"{target}.resnets.{r}", in_channels != width)
            if config.has_attention(level):
                derived |= _attention(
                    state, f"{source}.1", f"{target}.attentions.{r}", width, config.heads(width)
                )
            block, in_channels = block + 1, width
        if level != len(widths) - 1:
            source, target = f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0"
            if config.resblock_updown:
                renames |= resblock_names(source, target, skip=False)
            else:
                renames |= {f"{source}.op.{k}": f"{target}.conv.{k}" for k in ("weight", "bias")}
            block += 1
    deepest = widths[-1]
    renames |= resblock_names("middle_block.0", "mid_block.resnets.0", skip=False)
    renames |= resblock_names("middle_block.2", "mid_block.resnets.1", skip=False)
    derived |= _attention(
        state, "middle_block.1", "mid_block.attentions.0", deepest, config.heads(deepest)
    )
    if config.pool == "attention":
        derived |= _attention_pool(state, config, deepest)
    else:
        derived["head.weight"] = ("out.3.weight", _take(state, "out.3.weight")[..., 0, 0])
        derived["head.bias"] = ("out.3.bias", _take(state, "out.3.bias"))
    derived = {
        target: (source, tensor.clone(memory_format=torch.contiguous_format))
        for target, (source, tensor) in derived.items()
    }
    for source, target in renames.items():
        derived[target] = (source, _take(state, source))
    if state:
        raise GuidedDiffusionClassifierError(
            f"{len(state)} tensor(s) not mapped, e.g. {sorted(state)[:3]}: do the settings "
            "match the checkpoint?"
        )
    expected = _expected_shapes(config)
    for target in expected:
        if target not in derived:  # a gap in this mapping, not in the checkpoint
            raise GuidedDiffusionClassifierError(f"no checkpoint tensor maps to {target!r}")
    out: dict[str, torch.Tensor] = {}
    for target, (source, tensor) in derived.items():
        if target not in expected:
            raise GuidedDiffusionClassifierError(f"{source!r} maps to unknown {target!r}")
        if tensor.shape != expected[target]:
            raise GuidedDiffusionClassifierError(
                f"{source!r} gives {target!r} of shape {tuple(tensor.shape)}, the settings "
                f"expect {tuple(expected[target])}: do the settings match the checkpoint?"
            )
        out[target] = tensor
    return out


def convert_classifier(
    config: GuidedDiffusionClassifierConfig, state: dict[str, torch.Tensor]
) -> EncoderClassifier:
    """An :class:`EncoderClassifier` carrying the ``EncoderUNetModel`` weights ``state``
    (strict), in eval mode, float32 on the CPU."""
    module = EncoderClassifier(config)
    module.load_state_dict(convert_classifier_state_dict(config, state), strict=True)
    return module.eval()
