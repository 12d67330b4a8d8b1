"""Helpers for the diffusion-core tests (a uniquely named module, imported by the tests): a micro
configuration (same code path as the presets, smaller numbers), synthetic disc images, and models
with known closed forms."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from daug_core.diffusion.config import DiffusionConfig
from daug_core.diffusion.presets import preset

torch.set_num_threads(2)


def micro_config(**translation: object) -> DiffusionConfig:
    """The tiny preset shrunk to 32 px and ~0.1 M-parameter models; translation overridable."""
    base = preset("tiny")
    generator = dataclasses.replace(
        base.generator,
        image_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16,
    )
    classifier = dataclasses.replace(
        base.classifier,
        image_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
    )
    overrides: dict[str, object] = {"steps": 10, **translation}
    max_batch = int(overrides.pop("max_batch", 5))  # type: ignore[call-overload]
    trans = dataclasses.replace(base.translation, **overrides)
    gen_training = dataclasses.replace(base.generator_training, learning_rate=1e-3, num_steps=40)
    clf_training = dataclasses.replace(base.classifier_training, learning_rate=2e-3, num_steps=40)
    return dataclasses.replace(
        base,
        name="micro",
        generator=generator,
        classifier=classifier,
        translation=trans,
        generator_training=gen_training,
        classifier_training=clf_training,
        inference=dataclasses.replace(base.inference, max_batch=max_batch),
    )


def make_models(cfg: DiffusionConfig, seed: int) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """An untrained UNet and classifier of ``cfg`` (eval mode) and 3 images in [-1, 1], all from
    ``seed``."""
    from daug_core.diffusion.classifier.factory import build_classifier
    from daug_core.diffusion.generator import build_unet

    g = torch.Generator().manual_seed(seed)
    unet = build_unet(cfg.generator, generator=g).eval()
    classifier = build_classifier(cfg.classifier, generator=g).eval()
    x0 = torch.rand(3, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    return unet, classifier, x0


def disc_batch(
    batch: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on a dark background, in [-1, 1], with labels over the 7 classes:
    0 = no disc ("No Finding"), 1 = disc centred in the left half, 2 = in the right half,
    3..6 masked (NaN)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.full((batch, 1, size, size), -0.8)
    labels = torch.full((batch, 7), float("nan"))
    for i in range(batch):
        has_disc = bool(torch.rand((), generator=generator) < 0.7)
        cx = float(torch.randint(size // 5, size - size // 5, (), generator=generator))
        cy = float(torch.randint(size // 5, size - size // 5, (), generator=generator))
        radius = float(torch.randint(size // 8, size // 4, (), generator=generator))
        if has_disc:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
            images[i, 0][inside] = 0.8
        left = has_disc and cx < size / 2
        labels[i, 0] = float(not has_disc)
        labels[i, 1] = float(left)
        labels[i, 2] = float(has_disc and not left)
    noise = 0.05 * torch.randn(images.shape, generator=generator)
    return (images + noise).clamp(-1, 1), labels


def disc_batches(
    count: int, batch: int, size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [disc_batch(batch, size, g) for _ in range(count)]


class LinearPixelClassifier(nn.Module):
    """logits = W x_flat + b, ignoring t: grad_x of any log-probability is known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        c = weight.shape[0]
        self.bias = nn.Parameter(torch.zeros(c) if bias is None else bias.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        del t
        return x.flatten(1) @ self.weight.T + self.bias


class GaussianOptimalEps:
    """The exact eps-predictor for data x0 ~ N(mu, sigma^2 I):
    eps*(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t sigma^2 + 1 - a_t), a_t = alpha_bar_t.
    Its DDIM ODE has the closed-form solution
    x_t / sqrt(a_t) = mu + (x0 - mu) sqrt(sigma^2 + (1 - a_t) / a_t) / sigma."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu: float, sigma: float) -> None:
        self.ab = alphas_cumprod.double()
        self.mu = mu
        self.sigma = sigma

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ab[t.cpu()].to(x.device).view(-1, 1, 1, 1)
        xd = x.double()
        eps = (1 - a).sqrt() * (xd - a.sqrt() * self.mu) / (a * self.sigma**2 + 1 - a)
        return eps.to(x.dtype)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Bit-identical state dicts (same keys, equal tensors)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
