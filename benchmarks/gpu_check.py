"""Every GPU path of ``daug_core``, timed, in one process: the check a lent GPU machine runs
(``benchmarks/gpu_check.sh``). Without CUDA it is a dry run of the same steps on the CPU at the
tiny preset (``make test`` runs it), so the script itself is known to work before GPU time is
spent on it.

Steps: generator, classifier and student training steps (bf16 autocast on CUDA); teacher
heatmaps, fast path and official-style loop; student heatmaps (paper preset, 512 px, on CUDA);
the CLIP with heatmap channels, forward and backward in bf16; a one-process NCCL (gloo on the
CPU) group through ``daug_core.distributed``. Each step's seconds, FLOPs where counted, and
image*class/s go to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch

Row = dict[str, Any]


def timed(rows: list[Row], name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
    """Run one step; its seconds (CUDA synchronised) and extra numbers, or its error."""
    start = time.perf_counter()
    try:
        extra = fn() or {}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rows.append({"step": name, "ok": True, "seconds": time.perf_counter() - start, **extra})
    except Exception as exc:  # a failing step is a result: the others still run
        rows.append(
            {
                "step": name,
                "ok": False,
                "seconds": time.perf_counter() - start,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=6),
            }
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")))
    args = parser.parse_args()
    from daug_core.compute import ComputeSettings
    from daug_core.diffusion.classifier.training import init_classifier_state, train_classifier
    from daug_core.diffusion.generator import init_generator_state, train_generator
    from daug_core.diffusion.heatmaps import compute_heatmaps, compute_heatmaps_reference
    from daug_core.diffusion.presets import preset
    from daug_core.diffusion.targets import all_targets
    from daug_core.student.config import student_preset
    from daug_core.student.model import HeatmapStudent
    from daug_core.student.training import TeacherBatch, init_student_state, train_student

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    amp = ComputeSettings(device=device, precision="bf16" if cuda else "fp32").resolve()
    name = "paper" if cuda else "tiny"
    cfg = preset(name)
    if not cuda:  # the dry run: the tiny preset, 2 DDIM steps
        cfg = dataclasses.replace(cfg, translation=dataclasses.replace(cfg.translation, steps=2))
    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)
    s = cfg.image_size
    images = torch.rand(2, 1, s, s, generator=g) * 2 - 1
    labels = (torch.rand(2, len(cfg.class_names), generator=g) > 0.5).float()
    state: dict[str, Any] = {}

    def generator_step() -> None:
        gen = init_generator_state(cfg, generator=torch.Generator().manual_seed(0), device=device)
        train_generator(gen, [images] * 2, until_step=2, compute=amp)
        state["unet"] = gen.ema.shadow if hasattr(gen.ema, "shadow") else gen.unet

    def classifier_step() -> None:
        cls = init_classifier_state(
            cfg, pos_weight=None, generator=torch.Generator().manual_seed(1), device=device
        )
        train_classifier(cls, [(images, labels)] * 2, until_step=2, compute=amp)
        state["classifier"] = cls.classifier

    targets = all_targets(cfg.class_names)
    names = tuple(f"+{t.class_name}" for t in targets)

    def teacher(fn: Callable[..., Any]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            unet = state["unet"].eval() if "unet" in state else None
            if unet is None:
                raise RuntimeError("the generator step failed")
            x = images[:1].to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
                fn(unet, state["classifier"].eval(), x, targets, cfg)
            return {}

        return run

    def student_step() -> dict[str, Any]:
        scfg = student_preset(name)
        st = init_student_state(scfg, names, seed=0, device=device)
        x = torch.rand(2, 1, scfg.image_size, scfg.image_size) * 2 - 1
        heat = torch.rand(2, len(targets), scfg.image_size, scfg.image_size)
        train_student(st, [TeacherBatch(x, heat)] * 2, until_step=2, compute=amp)
        return {}

    def student_heatmaps() -> dict[str, Any]:
        scfg = student_preset(name)
        student = HeatmapStudent(scfg, names).to(device).eval()
        x = torch.rand(8, 1, scfg.image_size, scfg.image_size, device=device) * 2 - 1
        with torch.inference_mode(), amp.autocast():
            student(x)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            student(x)
            if cuda:
                torch.cuda.synchronize()
        rate = 8 * len(targets) / (time.perf_counter() - start)
        return {"image_class_per_second": round(rate, 1)}

    def distributed_group() -> dict[str, Any]:
        import torch.distributed as dist

        from daug_core.distributed import Ranks

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, rank=0, world_size=1)
        try:
            ranks = Ranks.current()
            value = ranks.mean(torch.ones((), device=device))
        finally:
            dist.destroy_process_group()
        return {"backend": backend, "mean": value}

    timed(rows, f"generator training, 2 steps ({name})", generator_step)
    timed(rows, f"classifier training, 2 steps ({name})", classifier_step)
    timed(rows, f"student training, 2 steps ({name})", student_step)
    timed(rows, "teacher heatmaps, fast path, 1 image", teacher(compute_heatmaps))
    timed(
        rows, "teacher heatmaps, official-style loop, 1 image", teacher(compute_heatmaps_reference)
    )
    timed(rows, f"student heatmaps, 8 images ({name})", student_heatmaps)
    timed(rows, "one-process group through daug_core.distributed", distributed_group)
    try:
        import open_clip  # noqa: F401

        from daug_core.contrastive.presets import ClipTrainSettings

        def clip_step() -> dict[str, Any]:
            from daug_core.contrastive.model import build_model

            config = ClipTrainSettings(preset=name, heatmap_mode="channel").config()
            model = build_model(config, ("+No Finding",), seed=0).to(device)
            size = config.model.image_size
            image = torch.rand(2, 1, size, size, device=device)
            heat = torch.rand(2, 1, size, size, device=device)
            with amp.autocast():
                model.encode_image(image, heat).sum().backward()
            return {}

        timed(rows, f"CLIP with heatmap channels, forward + backward ({name})", clip_step)
    except ImportError:
        rows.append({"step": "CLIP", "ok": False, "error": "open_clip is not installed"})

    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor()})",
        "torch": torch.__version__,
        "preset": name,
        "dry_run": not cuda,
        "rows": rows,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str))
    lines = [f"# GPU check: {record['device']}, preset {name}", "", "| step | ok | s | notes |"]
    lines.append("|---|---|---|---|")
    for row in rows:
        notes = row.get("error") or ", ".join(
            f"{k} {v}" for k, v in row.items() if k not in ("step", "ok", "seconds", "traceback")
        )
        lines.append(f"| {row['step']} | {row['ok']} | {row.get('seconds', 0):.2f} | {notes} |")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not cuda:
        print("no CUDA device here: this was the CPU dry run at the tiny preset")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
