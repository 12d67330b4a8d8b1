"""The noise-aware classifier p(y | x_t, t): the encoder half of a UNet with a timestep embedding.

Built from diffusers' own blocks (``Timesteps`` + ``TimestepEmbedding``, ``get_down_block`` with
ResNet blocks whose GroupNorm is modulated by the timestep: ``scale_shift``, as in
guided-diffusion's ``EncoderUNetModel`` with ``use_scale_shift_norm``), then GroupNorm, SiLU,
global average pooling and one linear layer giving one logit per class.

Normalisation matters: on phantoms a plain conv net without it stayed at chance even at t = 0,
while the same net with GroupNorm reached 99 % (t = 0) and 85 % (t = 200) accuracy.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import get_down_block
from torch import nn

from daug_core.diffusion.classifier.embedding import embed_timesteps
from daug_core.diffusion.config import ClassifierConfig


class NoiseAwareClassifier(nn.Module):
    """``forward(x_t (B, 1, S, S), t (B,) or scalar) -> logits (B, C)``."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.config = cfg
        ch0 = cfg.block_out_channels[0]
        temb_dim = 4 * ch0
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, temb_dim)
        self.conv_in = nn.Conv2d(1, ch0, kernel_size=3, padding=1)
        blocks = []
        in_ch = ch0
        last = len(cfg.block_out_channels) - 1
        for i, (block_type, out_ch) in enumerate(
            zip(cfg.down_block_types, cfg.block_out_channels, strict=True)
        ):
            blocks.append(
                get_down_block(
                    block_type,
                    num_layers=cfg.layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=temb_dim,
                    add_downsample=i < last,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=cfg.norm_num_groups,
                    attention_head_dim=cfg.attention_head_dim,
                    downsample_padding=1,
                    resnet_time_scale_shift="scale_shift",
                )
            )
            in_ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(cfg.norm_num_groups, in_ch)
        self.act = nn.SiLU()
        self.head = nn.Linear(in_ch, cfg.num_classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class of each logit, in order."""
        return self.config.class_names

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        temb = embed_timesteps(self.time_proj, self.time_embedding, t, x, self.head.weight.dtype)
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, temb)
        h = self.act(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)
