"""The heatmap student's cost against the teacher's, side by side in one run: FLOPs per image
(every aten op counted with torch's formulas, ``heatmap_throughput.FlopCount``) and measured
wall time per image, at the tiny preset (both measured whole) and at the paper preset.

    .venv/bin/python benchmarks/student_cost.py [--images 4] [--threads 2] [--paper-size 64]

The paper teacher cannot run at 512 px with 500 DDIM steps on a CPU in minutes: its FLOPs per
image are counted at ``--paper-size`` px with 2 and 4 DDIM steps, which gives the per-step
and fixed parts exactly (the count is linear in the steps), extrapolated to the preset's 500
steps and scaled by (512 / size)^2. Convolutions scale with the pixel count exactly; the
attention layers grow faster than that, so the teacher's figure is a lower bound and the
ratio conservative. The paper student is counted at 512 px directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from heatmap_throughput import FlopCount, at_size

from daug_core.diffusion.classifier.factory import build_classifier
from daug_core.diffusion.config import DiffusionConfig
from daug_core.diffusion.generator import build_unet
from daug_core.diffusion.heatmaps import compute_heatmaps
from daug_core.diffusion.presets import preset
from daug_core.diffusion.targets import all_targets
from daug_core.student.config import student_preset
from daug_core.student.model import HeatmapStudent


def teacher_flops(cfg: DiffusionConfig, images: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(0)
    unet = build_unet(cfg.generator, generator=g).eval()
    classifier = build_classifier(cfg.classifier, generator=g).eval()
    targets = all_targets(cfg.class_names)
    with FlopCount() as counter:
        compute_heatmaps(unet, classifier, images, targets, cfg)
    return counter.total / images.shape[0]


def teacher_seconds(cfg: DiffusionConfig, images: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(0)
    unet = build_unet(cfg.generator, generator=g).eval()
    classifier = build_classifier(cfg.classifier, generator=g).eval()
    targets = all_targets(cfg.class_names)
    compute_heatmaps(unet, classifier, images[:1], targets, cfg)  # warm-up
    start = time.perf_counter()
    compute_heatmaps(unet, classifier, images, targets, cfg)
    return (time.perf_counter() - start) / images.shape[0]


def paper_teacher_flops(size: int) -> float:
    """The paper teacher's FLOPs per image (K = 7), counted at ``size`` px with 2 and 4 DDIM
    steps and extrapolated (see the module docstring)."""
    paper = preset("paper")
    xs = torch.rand(1, 1, size, size) * 2 - 1
    two, four = (teacher_flops(at_size(paper, size, steps), xs) for steps in (2, 4))
    per_step, fixed = (four - two) / 2, two - 2 * (four - two) / 2
    scale = (paper.image_size / size) ** 2
    return (fixed + per_step * paper.translation.steps) * scale


def student_cost(name: str, k: int, images: int) -> tuple[float, float]:
    """(FLOPs, seconds) per image of the ``name`` student's forward pass."""
    config = student_preset(name)
    student = HeatmapStudent(config, tuple(f"+c{i}" for i in range(k))).eval()
    x = torch.rand(images, 1, config.image_size, config.image_size) * 2 - 1
    with torch.inference_mode():
        with FlopCount() as counter:
            student(x[:1])
        student(x)  # warm-up
        start = time.perf_counter()
        student(x)
        seconds = (time.perf_counter() - start) / images
    return float(counter.total), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    tiny = preset("tiny")
    x = torch.rand(args.images, 1, tiny.image_size, tiny.image_size) * 2 - 1
    t_flops, t_seconds = teacher_flops(tiny, x[:1]), teacher_seconds(tiny, x)
    s_flops, s_seconds = student_cost("tiny", len(tiny.class_names), args.images)
    rows.append(("tiny", t_flops, t_seconds, s_flops, s_seconds))

    paper = preset("paper")
    t_paper = paper_teacher_flops(args.paper_size)
    s_flops, s_seconds = student_cost("paper", len(paper.class_names), 1)
    rows.append(("paper", t_paper, float("nan"), s_flops, s_seconds))

    cpu = os.popen("lscpu | grep -o 'amx\\w*\\|avx512_bf16' | sort -u | tr '\\n' ' '").read()
    print(f"CPU flags: {cpu.strip() or 'AVX2 only'}; torch threads {args.threads}")
    print(
        "| preset | teacher GFLOP/img | teacher s/img | student GFLOP/img | student s/img "
        "| FLOP ratio | time ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, tf, ts, sf, ss in rows:
        ratio_t = f"{ts / ss:,.0f}x" if ts == ts else "n/a (not run at 512 px on a CPU)"
        ts_text = f"{ts:.3f}" if ts == ts else "n/a"
        print(
            f"| {name} | {tf / 1e9:,.1f} | {ts_text} | {sf / 1e9:.2f} | {ss:.4f} "
            f"| {tf / sf:,.0f}x | {ratio_t} |"
        )
    if args.json:
        keys = ("preset", "teacher_flops", "teacher_seconds", "student_flops", "student_seconds")
        args.json.write_text(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))


if __name__ == "__main__":
    main()
