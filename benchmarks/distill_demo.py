"""The heatmap student against its teacher on the demo's release: localisation against the
ground-truth lesion masks on held-out images (test + validate), with paired intervals, and the
cost of each source, in one run.

    .venv/bin/python benchmarks/distill_demo.py [--work /tmp/daug-distill] [--fractions 0.25 1.0]
        [--steps 800] [--studies 300] [--out benchmarks/results/distill]

The demo's pieces: its 300-study synthetic release at 64 px, the shipped tiny generator and
classifier (its teacher heatmaps score pointing game ~0.97), ``+No Finding`` heatmaps of every
item (the teacher, version ``v1``). For each teacher fraction of the train split
(label-stratified), a tiny student is trained on those teacher heatmaps and writes every
item's heatmaps into its own version; teacher and students are scored on the same held-out
images (never trained on). The work folder is reused: finished stages are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
from prefect import flow

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import DiffusionTrainSettings
from daug_core.student.config import StudentSettings
from flows.demo import ingest_store, synthesise
from flows.demo_checkpoints import DEMO_CHECKPOINTS, seed_checkpoints
from flows.precompute import precompute_flow
from flows.quality.scoring import (
    paired_comparison,
    scorable_indices,
    score_heatmap_version,
    summarise_scores,
)
from flows.runtime.pool import PoolSettings
from flows.train_generator import train_generator_flow
from flows.train_student import train_student_flow
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic import SynthConfig
from storage.synthetic.ground_truth import GroundTruthMasks

TEACHER = "v1"
HELD_OUT = ["test", "validate"]


def timed(seconds: dict[str, float], name: str, fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    seconds[name] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "daug-distill")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument(
        "--studies",
        type=int,
        default=300,
        help="synthetic studies (the demo's 300; 2000: the study's size)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/distill"))
    run(parser.parse_args())


@flow(name="distill-benchmark")
def run(args: argparse.Namespace) -> None:
    """The whole comparison (a flow: the demo's stages log to their run)."""
    root = args.work
    seconds: dict[str, float] = {}
    release, truth_dir = synthesise(root, SynthConfig(studies=args.studies, size=128), 0, "distill")
    store = ingest_store(release, root)
    checkpoints = root / "checkpoints"
    if args.studies == 300:  # the demo's release: its shipped checkpoints, trained to the preset
        seed_checkpoints(ImageStore.open(store, read_only=True), checkpoints)
        train_generator_flow(
            store=str(store), out=str(checkpoints), training=DiffusionTrainSettings(preset="tiny")
        )
    elif not checkpoints.exists():  # another release of the same synthetic distribution: the
        shutil.copytree(DEMO_CHECKPOINTS, checkpoints)  # shipped teacher as it is
    pool = PoolSettings(actors=2, cpus_per_actor=1.0)
    teacher_run = timed(
        seconds,
        "teacher heatmaps, every item",
        lambda: precompute_flow(
            store=str(store),
            checkpoints=str(checkpoints),
            heatmaps=HeatmapSettings.build(preset="tiny", targets=("+No Finding",)),
            pool=pool,
            heatmap_version=TEACHER,
        ),
    )
    images = ImageStore.open(store, read_only=True)
    truth = GroundTruthMasks.open(truth_dir)
    held_out = scorable_indices(images, HeatmapStore(images, TEACHER), HELD_OUT)
    scored = {
        "teacher": score_heatmap_version(images, HeatmapStore(images, TEACHER), truth, held_out)
    }
    rows = []
    for fraction in args.fractions:
        name = f"student-{fraction:g}"
        run = root / name
        summary = timed(
            seconds,
            f"{name}: training",
            lambda run=run, fraction=fraction: train_student_flow(
                store=str(store),
                out=str(run),
                teacher_version=TEACHER,
                student=StudentSettings(steps=args.steps),
                fraction=fraction,
            ),
        )
        timed(
            seconds,
            f"{name}: heatmaps, every item",
            lambda run=run, name=name: precompute_flow(
                store=str(store), student=str(run / "student"), pool=pool, heatmap_version=name
            ),
        )
        scored[name] = score_heatmap_version(images, HeatmapStore(images, name), truth, held_out)
        rows.append(
            {"source": name, "teacher_items": summary["train_items"], **summary["validation"]}
        )
    summaries = pd.concat([summarise_scores(s).assign(source=n) for n, s in scored.items()])
    paired = pd.concat(
        [
            paired_comparison(scored[n], scored["teacher"], (n, "teacher"))
            for n in scored
            if n != "teacher"
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    summaries.to_csv(args.out / "quality.csv", index=False)
    paired.to_csv(args.out / "paired.csv", index=False)
    (args.out / "run.json").write_text(
        json.dumps(
            {
                "held_out_images": len(held_out),
                "teacher_items": int(teacher_run["done"] + teacher_run["already_done"]),
                "seconds": seconds,
                "students": rows,
                "steps": args.steps,
                "studies": args.studies,
                "cpu": os.popen("lscpu | grep -o 'amx\\w*\\|avx512_bf16' | sort -u").read().split(),
            },
            indent=2,
        )
    )
    print(summaries.to_string(index=False))
    print(paired.to_string(index=False))
    print(json.dumps(seconds, indent=2))
    plot_fraction_curve(args.out)


def plot_fraction_curve(out: Path) -> Path:
    """Quality against the teacher fraction (student - teacher, paired 95 % intervals, per
    metric) and the plan's cost against teacher-on-everything, from a finished run's
    ``paired.csv`` and ``run.json``: ``OUT/fraction_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = pd.read_csv(out / "paired.csv")
    run_info = json.loads((out / "run.json").read_text())
    seconds = run_info["seconds"]
    teacher_all = seconds["teacher heatmaps, every item"]
    per_image = teacher_all / run_info["teacher_items"]
    figure, (quality, cost) = plt.subplots(1, 2, figsize=(10, 3.8))
    for metric, margin in (("pixel_auroc", -0.02), ("pointing_game", -0.05)):
        rows = paired[paired["metric"] == metric].copy()
        rows["fraction"] = rows["first"].str.removeprefix("student-").astype(float)
        rows = rows.sort_values("fraction")
        quality.errorbar(
            rows["fraction"],
            rows["difference"],
            yerr=[rows["difference"] - rows["low"], rows["high"] - rows["difference"]],
            marker="o",
            capsize=3,
            label=f"{metric} (margin {margin})",
        )
        quality.axhline(margin, linestyle=":", linewidth=1, color=quality.lines[-1].get_color())
    quality.axhline(0.0, color="black", linewidth=0.8)
    quality.set_xscale("log")
    quality.set_xlabel("teacher fraction of the train split")
    quality.set_ylabel("student - teacher (95 % CI)")
    quality.legend(fontsize=8)
    fractions, ratios = [], []
    for student in run_info["students"]:
        name = student["source"]
        plan = (
            student["teacher_items"] * per_image
            + seconds[f"{name}: training"]
            + seconds[f"{name}: heatmaps, every item"]
        )
        fractions.append(float(name.removeprefix("student-")))
        ratios.append(plan / teacher_all)
    cost.plot(fractions, ratios, marker="o")
    cost.set_xscale("log")
    cost.set_xlabel("teacher fraction of the train split")
    cost.set_ylabel("plan cost / teacher on every item")
    cost.set_ylim(0, max(1.05, max(ratios) * 1.1))
    figure.suptitle(f"heatmap student, {run_info['teacher_items']} images", fontsize=10)
    figure.tight_layout()
    path = out / "fraction_curve.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
