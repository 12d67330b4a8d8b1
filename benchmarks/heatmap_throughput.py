"""Heatmap throughput: the shared-inversion batched path against the per-class reference path.

Same randomly initialised tiny-preset models, same images, K = 7 targets, tiny preset settings;
both paths measured side by side in one run. Reports image-class heatmaps per second, the
speed-up, the largest difference between the two results, and where the wall time goes (UNet
forward, classifier forward, classifier backward, the rest), measured with timing wrappers.

    .venv/bin/python benchmarks/heatmap_throughput.py [--images 4] [--threads 2] [--plain]

``--plain`` adds a second pair of runs with ``inversion_refinements = 0`` (the official
algorithm: plain DDIM inversion), where the inversion is a smaller share of the work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from daug_core.classifier import build_classifier
from daug_core.config import DiffusionConfig, preset
from daug_core.generator import build_unet
from daug_core.heatmaps import HeatmapResult, compute_heatmaps, compute_heatmaps_reference
from daug_core.targets import all_targets


@dataclass
class Timers:
    unet_forward: float = 0.0
    classifier_forward: float = 0.0
    classifier_backward: float = 0.0
    unet_rows: int = 0
    unet_calls: int = 0
    _backward_started: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.unet_forward = self.classifier_forward = self.classifier_backward = 0.0
        self.unet_rows = self.unet_calls = 0


class TimedUNet(nn.Module):
    """Times each UNet forward (CPU ops are synchronous, so wall time is compute time)."""

    def __init__(self, unet: nn.Module, timers: Timers) -> None:
        super().__init__()
        self.inner = unet
        self.timers = timers

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> object:
        start = time.perf_counter()
        out = self.inner(x, t)
        self.timers.unet_forward += time.perf_counter() - start
        self.timers.unet_rows += x.shape[0]
        self.timers.unet_calls += 1
        return out


class TimedClassifier(nn.Module):
    """Times the forward, and the backward from the logits' gradient to the input's gradient."""

    def __init__(self, classifier: nn.Module, timers: Timers) -> None:
        super().__init__()
        self.inner = classifier
        self.timers = timers

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        logits: torch.Tensor = self.inner(x, t)
        self.timers.classifier_forward += time.perf_counter() - start
        if x.requires_grad and logits.requires_grad:
            timers = self.timers

            def backward_starts(grad: torch.Tensor) -> None:
                timers._backward_started.append(time.perf_counter())

            def backward_ends(grad: torch.Tensor) -> None:
                timers.classifier_backward += time.perf_counter() - timers._backward_started.pop()

            logits.register_hook(backward_starts)
            x.register_hook(backward_ends)
        return logits


def run(name, fn, unet, classifier, x0, targets, cfg, timers) -> tuple[float, HeatmapResult]:
    timers.reset()
    start = time.perf_counter()
    result = fn(unet, classifier, x0, targets, cfg)
    wall = time.perf_counter() - start
    pairs = x0.shape[0] * len(targets)
    rest = wall - timers.unet_forward - timers.classifier_forward - timers.classifier_backward
    print(
        f"  {name:<9} {wall:7.1f} s  {pairs / wall:6.3f} heatmaps/s  "
        f"UNet fwd {100 * timers.unet_forward / wall:4.1f} %  "
        f"clf fwd {100 * timers.classifier_forward / wall:4.1f} %  "
        f"clf bwd {100 * timers.classifier_backward / wall:4.1f} %  "
        f"other {100 * rest / wall:4.1f} %  "
        f"({timers.unet_calls} UNet calls, {timers.unet_rows / timers.unet_calls:.1f} rows/call)"
    )
    return wall, result


def compare(cfg: DiffusionConfig, images: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    timers = Timers()
    unet = TimedUNet(build_unet(cfg.generator, generator=g).eval(), timers)
    classifier = TimedClassifier(build_classifier(cfg.classifier, generator=g).eval(), timers)
    x0 = torch.rand(images, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    targets = all_targets(cfg.class_names)
    tr = cfg.translation
    print(
        f"{cfg.name}: {images} images x K={len(targets)} targets, {cfg.image_size} px, "
        f"L={tr.level}, {tr.steps} steps, {tr.inversion_refinements} inversion refinements, "
        f"scale {tr.scale}, {tr.mode}, max_batch {cfg.inference.max_batch}"
    )
    # Warm-up (allocator, oneDNN kernel selection) on one image and two targets, both paths.
    compute_heatmaps(unet, classifier, x0[:1], targets[:2], cfg)
    compute_heatmaps_reference(unet, classifier, x0[:1], targets[:1], cfg)
    fast_s, fast = run("batched", compute_heatmaps, unet, classifier, x0, targets, cfg, timers)
    ref_s, ref = run(
        "reference", compute_heatmaps_reference, unet, classifier, x0, targets, cfg, timers
    )
    diff = (fast.heatmaps - ref.heatmaps).abs().max().item()
    print(f"  speed-up batched / reference: {ref_s / fast_s:.2f}x   max |heatmap diff| {diff:.1e}")
    return ref_s / fast_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help="also run without refinements")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    cfg = preset("tiny")
    compare(cfg, args.images, args.seed)
    if args.plain:
        plain = dataclasses.replace(
            cfg, translation=dataclasses.replace(cfg.translation, inversion_refinements=0)
        )
        compare(plain, args.images, args.seed)


if __name__ == "__main__":
    main()
