"""The student network and its loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from daug_core.student.config import StudentConfig


class HeatmapStudent(torch.nn.Module):
    """Image in model space (B, 1, S, S), about [-1, 1], to K heatmap logits (B, K, S, S);
    :meth:`heatmaps` gives the heatmaps in the store's [0, 1]. ``targets`` are the teacher
    version's, in its channel order."""

    def __init__(self, config: StudentConfig, targets: tuple[str, ...]) -> None:
        super().__init__()
        if not targets:
            raise ValueError("a student needs at least one target")
        self.config = config
        self.targets = tuple(targets)
        levels = len(config.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=config.image_size,
            in_channels=1,
            out_channels=len(targets),
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=8,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(images.shape[0], device=images.device)
        logits: torch.Tensor = self.unet(images, t).sample  # type: ignore[operator]
        return logits

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, S, S) in [0, 1], float32."""
        return torch.sigmoid(self(images).float())


def student_loss(
    logits: torch.Tensor, teacher: torch.Tensor, spatial_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, l1, spatial) for logits and teacher heatmaps (B, K, S, S) in [0, 1].

    ``l1``: mean |sigmoid(logits) - teacher|. ``spatial``: per map, the KL divergence from the
    teacher map read as a distribution over pixels (heat / its sum) to the softmax of the
    logits over pixels, averaged over maps with any heat; it is scale-free and rewards the
    peak where the teacher's is, what the pointing game and the pixel AUROC score."""
    logits, teacher = logits.float(), teacher.float()
    l1 = (torch.sigmoid(logits) - teacher).abs().mean()
    flat_t = teacher.flatten(2)
    mass = flat_t.sum(-1, keepdim=True)
    p = flat_t / mass.clamp_min(1e-8)
    log_q = F.log_softmax(logits.flatten(2), dim=-1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)
    has_heat = (mass.squeeze(-1) > 0).float()
    spatial = (kl * has_heat).sum() / has_heat.sum().clamp_min(1.0)
    return l1 + spatial_weight * spatial, l1, spatial
