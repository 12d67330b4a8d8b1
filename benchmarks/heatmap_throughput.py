"""Heatmap throughput against the machine's limit: the fast path's variants side by side with
the official-style loop, their counted FLOPs, and the peak FLOP/s measured in the same run.

    .venv/bin/python benchmarks/heatmap_throughput.py [--images 2] [--threads 2]
        [--compile] [--bf16] [--paper-size 128] [--no-paper]

* **Peak**: the best FLOP/s of several GEMM sizes and of a wide 3x3 convolution, per dtype
  (fp32 always, bf16 with ``--bf16``), measured first, in this process.
* **Paths** (random models of the preset's architecture; the same images, K = 7 targets):
  the official-style loop (:func:`compute_heatmaps_reference`: fp32, batch 1, invert and
  decode per (image, class)), and the fast path (:func:`compute_heatmaps`: one inversion and
  one first-step eps per image, B*K decode rows in chunks of ``max_batch``) in fp32
  contiguous, fp32 channels-last, with ``--compile`` channels-last + ``torch.compile``, with
  ``--bf16`` bf16 channels-last. Each prints image*class/s, its "speed-up" over the loop, the
  FLOPs it does (every aten op, forward and backward, counted with torch's FLOP formulas on
  one image in eager mode, and scaled), the achieved FLOP/s as a share of its dtype's peak,
  and the largest heatmap difference to the fp32 fast path.
* **Batch knee**: UNet ms per row at growing batch sizes (fp32, channels-last).
* The same for the **paper architecture** at a reduced input size (``--paper-size``, 2 DDIM
  steps), so its channel widths are measured in minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from daug_core.compute import precision_dtype
from daug_core.diffusion.classifier.factory import build_classifier
from daug_core.diffusion.config import DiffusionConfig, InferenceConfig, Precision
from daug_core.diffusion.generator import build_unet
from daug_core.diffusion.heatmaps import (
    HeatmapResult,
    compute_heatmaps,
    compute_heatmaps_reference,
    prepare_model,
)
from daug_core.diffusion.presets import preset
from daug_core.diffusion.targets import all_targets

HeatmapFn = Callable[..., HeatmapResult]


def _best_rate(fn: Callable[[], object], flops: float, repeats: int = 3) -> float:
    start = time.perf_counter()
    fn()  # warm-up: kernel selection, allocation
    if time.perf_counter() - start > 1.0:
        repeats = 1  # a slow path (bf16 without bf16 units): one more call is enough
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best


def measure_peak(dtype: torch.dtype) -> float:
    """The best FLOP/s of this process for ``dtype``: GEMMs of several sizes and a wide 3x3
    convolution (channels-last), whichever is fastest."""
    rates = []
    with torch.inference_mode():
        for n in (512, 1024, 2048):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            rates.append(_best_rate(lambda a=a, b=b: a @ b, 2.0 * n**3))
        conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(dtype)
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(8, 256, 32, 32, dtype=dtype).to(memory_format=torch.channels_last)
        rates.append(_best_rate(lambda: conv(x), 2.0 * 8 * 256 * 256 * 9 * 32 * 32))
    return max(rates)


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs of every aten op with torch's own formulas (``flop_registry``, what
    ``FlopCounterMode`` uses), forward and backward. ``FlopCounterMode`` itself cannot be
    used: its module tracker's backward hooks break ``autograd.grad`` on a leaf input, which
    is how the guidance gradient is taken."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:
            # Under inference_mode composite ops (aten.conv2d, aten.linear) arrive here
            # undecomposed: decompose them so that their aten.convolution / aten.mm count.
            with self:  # the mode is off inside its own handler: count the parts too
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: HeatmapFn, unet, classifier, x0, targets, cfg) -> float:
    with FlopCount() as counter:
        fn(unet, classifier, x0, targets, cfg)
    return float(counter.total)


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    fast: bool = True
    precision: Precision = "fp32"
    max_batch: int = 0  # 0: the preset's
    inference: InferenceConfig = dataclasses.field(
        default_factory=lambda: InferenceConfig(channels_last=False)
    )


def variants(args: argparse.Namespace) -> list[Variant]:
    found = [
        Variant(name="official-style loop (fp32, batch 1)", fast=False),
        Variant(name="fast, fp32"),
        Variant(name="fast, fp32, channels-last", inference=InferenceConfig(channels_last=True)),
        Variant(
            name="fast, fp32, channels-last, max_batch 8",
            max_batch=8,
            inference=InferenceConfig(channels_last=True),
        ),
    ]
    if args.compile:
        found.append(
            Variant(
                name="fast, fp32, channels-last, compiled",
                inference=InferenceConfig(channels_last=True, compile=True),
            )
        )
    if args.bf16:
        found.append(
            Variant(
                name="fast, bf16, channels-last",
                precision="bf16",
                inference=InferenceConfig(channels_last=True),
            )
        )
    return found


def at_size(cfg: DiffusionConfig, size: int, steps: int) -> DiffusionConfig:
    """``cfg``'s architecture at ``size`` px with ``steps`` DDIM steps (to measure in minutes)."""
    return dataclasses.replace(
        cfg,
        generator=dataclasses.replace(cfg.generator, image_size=size),
        classifier=dataclasses.replace(cfg.classifier, image_size=size),
        translation=dataclasses.replace(cfg.translation, steps=steps),
    )


def compare(cfg: DiffusionConfig, images: int, peaks: dict[str, float], args) -> None:
    g = torch.Generator().manual_seed(args.seed)
    unet = build_unet(cfg.generator, generator=g).eval()
    classifier = build_classifier(cfg.classifier, generator=g).eval()
    x0 = torch.rand(images, 1, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    targets = all_targets(cfg.class_names)
    tr = cfg.translation
    pairs = images * len(targets)
    print(
        f"\n{cfg.name} architecture at {cfg.image_size} px: {images} images x K={len(targets)}, "
        f"L={tr.level}, {tr.steps} steps, {tr.inversion_refinements} refinements, "
        f"max_batch {cfg.inference.max_batch}"
    )
    print(
        f"  {'path':<40} {'s':>7} {'img*cls/s':>9} {'speed-up':>8} {'GFLOP':>8} "
        f"{'GFLOP/s':>8} {'of peak':>7} {'max|diff|':>9}"
    )
    loop_seconds, reference = 0.0, None
    for variant in variants(args):
        config = dataclasses.replace(
            cfg,
            translation=dataclasses.replace(tr, precision=variant.precision),
            inference=dataclasses.replace(
                cfg.inference,
                max_batch=variant.max_batch or cfg.inference.max_batch,
                **_inference_fields(variant.inference),
            ),
        )
        fn: HeatmapFn = compute_heatmaps if variant.fast else compute_heatmaps_reference
        eager = [prepare_model(m, variant.precision, InferenceConfig(channels_last=False))
                 for m in (unet, classifier)]  # fmt: skip
        flops = count_flops(fn, *eager, x0[:1], targets, config) * images
        models = [
            prepare_model(m, variant.precision, variant.inference) for m in (unet, classifier)
        ]
        # Warm-up (kernel selection; compilation for the shapes of the timed run).
        fn(*models, *((x0, targets) if variant.fast else (x0[:1], targets[:2])), config)
        start = time.perf_counter()
        result = fn(*models, x0, targets, config)
        seconds = time.perf_counter() - start
        if not variant.fast:
            loop_seconds = seconds
        elif reference is None:
            reference = result
        diff = (result.heatmaps - reference.heatmaps).abs().max().item() if reference else 0.0
        rate = flops / seconds
        peak = peaks[variant.precision]
        print(
            f"  {variant.name:<40} {seconds:7.1f} {pairs / seconds:9.3f} "
            f"{loop_seconds / seconds:7.2f}x {flops / 1e9:8.1f} {rate / 1e9:8.1f} "
            f"{100 * rate / peak:6.1f}% {diff:9.1e}",
            flush=True,
        )
        if variant.fast:
            print(f"    speed-up vs the official-style loop: {loop_seconds / seconds:.2f}x")


def _inference_fields(inference: InferenceConfig) -> dict[str, bool]:
    return {"channels_last": inference.channels_last, "compile": inference.compile}


def batch_knee(cfg: DiffusionConfig, sizes: tuple[int, ...], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    unet = prepare_model(build_unet(cfg.generator, generator=g).eval(), "fp32", InferenceConfig())
    cells = []
    with torch.inference_mode():
        for rows in sizes:
            x = torch.randn(rows, 1, cfg.image_size, cfg.image_size, generator=g)
            t = torch.full((rows,), 100)
            rate = _best_rate(lambda x=x, t=t: unet(x, t), float(rows), repeats=2)
            cells.append(f"{rows}: {1e3 / rate:.1f}")
    print(f"  UNet ms per row by batch (fp32, channels-last): {', '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--bf16", action="store_true", help="add bf16 variants")
    parser.add_argument("--paper-size", type=int, default=128)
    parser.add_argument("--no-paper", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    peaks = {"fp32": measure_peak(torch.float32)}
    if args.bf16:
        peaks["bf16"] = measure_peak(precision_dtype("bf16"))
    print("peak FLOP/s: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    tiny = preset("tiny")
    compare(tiny, args.images, peaks, args)
    batch_knee(tiny, (1, 4, 8, 14, 28, 56), args.seed)
    if not args.no_paper:
        paper = at_size(preset("paper"), args.paper_size, steps=2)
        compare(paper, 1, peaks, args)
        batch_knee(paper, (1, 2, 4, 7), args.seed)


if __name__ == "__main__":
    main()
