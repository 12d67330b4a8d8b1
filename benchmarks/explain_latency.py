"""daug explain's latency per image, stage by stage, with the heatmap student and with the
teacher, side by side in one run at the tiny preset; the paper preset's FLOPs per image.

    .venv/bin/python benchmarks/explain_latency.py [--inputs 6] [--index-items 16384]
        [--threads 2] [--out benchmarks/results/explain]

Set-up (not timed): a 64 px store of synthetic studies; random-weight tiny teacher checkpoints
and a random-weight tiny student (the same compute as trained weights); for each heatmap
source a version of the store's items made by it and a tiny contrastive model reading that
version, indexed. Timed: ``explain_inputs`` over DICOM files of the release, per image
(process start and model loading excluded: a scheduled flow or a server holds the models):
decode, heatmaps, the model, neighbours (top-k and their records) and the output files. The
top-k is also timed alone over an index of ``--index-items`` random rows (the store's index
is as small as the store), which is what an index of MIMIC-CXR's size adds per query.

Paper preset, FLOPs per image (``heatmap_throughput.FlopCount``): the teacher's as
``student_cost.py`` counts it (extrapolated from two step counts at a reduced size), the
student's at 512 px, and the contrastive model's image tower at its paper size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _precompute_setup  # noqa: F401  (environment before ray/prefect)
import numpy as np
import torch
from heatmap_throughput import FlopCount

from daug_core.checkpoints.contrastive import save_clip_checkpoint
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.checkpoints.student import save_student_checkpoint
from daug_core.contrastive.model import build_model
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.student.config import StudentSettings
from daug_core.student.training import init_student_state

TARGET = "+No Finding"


@dataclass(frozen=True)
class Built:
    release: Path
    store: Path
    sources: dict[str, tuple[Path, Path]]  # source -> (model's best/, the heatmap models)


def build(root: Path, studies: int) -> Built:
    """The store, both heatmap versions, a model per version and its index."""
    from _precompute_setup import save_random_checkpoints

    from flows.explain import EXPLAIN_JSON  # noqa: F401  (fail early if explain is broken)
    from flows.index import index_flow
    from flows.ingest import ingest_flow
    from flows.precompute import heatmap_provenance, student_provenance
    from flows.runtime.heatmap_source import version_worker
    from storage.release.ingest_config import IngestConfig
    from storage.store.heatmap_shards import plan_heatmaps, precompute_shard
    from storage.store.heatmaps import HeatmapStore
    from storage.store.image import ImageStore
    from storage.synthetic import SynthConfig, write_synthetic_release

    release = write_synthetic_release(root / "synth", SynthConfig(studies=studies, size=64), 11)
    store = root / "store"
    ingest_flow(release=str(release.release_dir), store=str(store), ingest=IngestConfig(size=64))
    images = ImageStore.open(store)
    teacher_dir = root / "teacher"
    save_random_checkpoints(teacher_dir)
    teacher = heatmap_provenance(HeatmapSettings(preset="tiny", targets=(TARGET,)), teacher_dir)
    student_config = StudentSettings(preset="tiny").config()
    state = init_student_state(student_config, (TARGET,), 0, torch.device("cpu"))
    student_dir = save_student_checkpoint(
        state, root / "student", teacher_version="teacher", teacher=teacher.as_dict()
    )
    sources = {"student": student_dir, "teacher": teacher_dir}
    built = Built(release.release_dir, store, {})
    for name, models in sources.items():
        provenance = student_provenance(models) if name == "student" else teacher
        version = HeatmapStore.create(images, provenance, name)
        worker = version_worker(provenance, models, version=name, torch_threads=1)
        for work in plan_heatmaps(version, images).shards:
            precompute_shard(version, images, work, worker, batch_size=8)
        config = ClipTrainSettings(heatmap_mode="channel").config()
        model = build_model(config, (TARGET,), seed=len(built.sources))  # one model each
        info = {"heatmap_version": name, "heatmap_provenance": provenance.as_dict()}
        best = save_clip_checkpoint(root / f"model-{name}" / "best", model, config, info)
        index_flow(model=str(best), store=str(store))
        built.sources[name] = (best, Path(models))
    return built


def explain_stages(built: Built, source: str, files: list[str], out: Path) -> dict[str, object]:
    """Loading apart, then the mean seconds per input of each stage over ``files``."""
    from flows.explain import Explainer, explain_inputs

    best, models = built.sources[source]
    where = str(built.store)
    start = time.perf_counter()
    Explainer(str(best), where, str(models))
    loading = time.perf_counter() - start
    explain_inputs(files[:1], str(best), where, str(out / "warm"), str(models))  # warm-up
    summary = explain_inputs(files, str(best), where, str(out / source), str(models))
    stages: dict[str, float] = summary["mean_seconds"]
    return {"loading_s": loading, "mean_s": stages, "total_s": sum(stages.values())}


def topk_seconds(built: Built, rows: int, dim: int, repeats: int = 5) -> tuple[float, float]:
    """One query's exact top-5 over an index of ``rows`` random unit rows: the first (which
    reads the index into memory) and the median of the next ``repeats``."""
    import pandas as pd

    from storage.store.embedding_index import EmbeddingIndex

    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {
            "index": np.arange(rows),
            "dicom_id": [f"d{i}" for i in range(rows)],
            "study_id": [f"s{i}" for i in range(rows)],
            "split": "train",
        }
    )
    index = EmbeddingIndex.create_or_open(built.store, "f" * 64, None, dim, items)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    index.write(np.arange(rows), vectors, vectors)
    query = rng.standard_normal((1, dim)).astype(np.float32)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        index.top_k(query, 5)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def paper_flops(size: int) -> dict[str, float]:
    """FLOPs per image at the paper preset (K = 7 heatmaps): the teacher's and the student's
    as student_cost.py counts them, and the contrastive model's image tower."""
    from student_cost import paper_teacher_flops, student_cost

    clip_config = ClipTrainSettings(preset="paper", heatmap_mode="channel").config()
    clip = build_model(clip_config, (TARGET,), seed=0).eval()
    s = clip.image_size
    with FlopCount() as counter, torch.no_grad():
        clip.encode_image(torch.zeros(1, 1, s, s), torch.zeros(1, 1, s, s))
    return {
        "teacher": paper_teacher_flops(size),
        "student": student_cost("paper", 7, 1)[0],
        "clip_image": float(counter.total),
    }


def is_frontal(path: Path) -> bool:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).ViewPosition) in ("PA", "AP")


def cpu_flags() -> str:
    found = os.popen("lscpu | grep -o 'amx\\w*\\|avx512_bf16' | sort -u | tr '\\n' ' '").read()
    model = os.popen("lscpu | grep 'Model name' | cut -d: -f2").read().strip()
    return f"{model} ({found.strip() or 'AVX2 only'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--index-items", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="daug-explain-bench-") as tmp:
        root = Path(tmp)
        built = build(root, args.studies)
        frontal = [p for p in sorted(built.release.rglob("*.dcm")) if is_frontal(p)]
        files = [str(p) for p in frontal[: args.inputs]]
        result = {
            source: explain_stages(built, source, files, root / "out")
            for source in ("student", "teacher")
        }
        best, _ = built.sources["student"]
        from storage.store.embedding_index import EmbeddingIndex
        from storage.store.image import ImageStore

        index = EmbeddingIndex.open(ImageStore.open(built.store), checkpoint_sha256(best))
        dim = index.dim
        first_topk, topk = topk_seconds(built, args.index_items, dim)
    flops = paper_flops(args.paper_size)
    report = {
        "cpu": cpu_flags(),
        "inputs": len(files),
        "threads": args.threads,
        "index_items_topk": args.index_items,
        "embedding_dim": dim,
        "topk_first_s": first_topk,
        "topk_s": topk,
        "tiny": result,
        "paper_flops_per_image": flops,
        "paper_ratio_teacher_to_student": (flops["teacher"] + flops["clip_image"])
        / (flops["student"] + flops["clip_image"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{report['cpu']}, {args.threads} torch threads, {len(files)} inputs, mean per input\n",
        "| source | decode | heatmaps | model | neighbours | outputs | total | + top-k over "
        f"{args.index_items:,} items (dim {dim}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, r in result.items():
        m = r["mean_s"]
        lines.append(
            f"| {source} | "
            + " | ".join(
                f"{m.get(k, float('nan')) * 1000:.0f} ms"
                for k in ("decode", "heatmaps", "model", "neighbours", "outputs")
            )
            + f" | {r['total_s']:.3f} s | {(r['total_s'] + topk):.3f} s |"
        )
    lines.append(
        f"\npaper preset, FLOPs per image: teacher heatmaps {flops['teacher']:.3g}, student "
        f"{flops['student']:.3g}, model image tower {flops['clip_image']:.3g}"
    )
    (args.out / "explain_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
