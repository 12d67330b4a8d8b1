"""Heatmap actor configurations: 2 actors x 1 CPU vs 1 actor x 2 CPUs vs 1 actor x 1 CPU.

The first ``--images`` usable items of an ingested synthetic 64 px store, K = 7, random-weight
tiny-preset checkpoints, shortened translation (plain DDIM inversion, few steps), run by the
flow's own actors and dispatcher (workers read their shards from the store and write the
heatmaps themselves), each configuration into its own heatmap version. Actor start-up (model
load) is excluded; configurations are measured in rotating order over ``--rounds`` rounds in
one Ray session, so a load change from another job hits all of them alike.

    .venv/bin/python benchmarks/precompute_actors.py [--images 64] [--steps 5] [--rounds 1]
"""

from __future__ import annotations

from _precompute_setup import build_store, save_random_checkpoints  # sets the environment first

# isort: split
import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.precompute import heatmap_provenance, worker_spec
from flows.runtime.actors import WorkerSpec, start_actors
from flows.runtime.dispatch import dispatch
from flows.runtime.pool import PoolSettings
from storage.store.heatmap_shards import ShardTask, plan_heatmaps
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore

CONFIGS = [(2, 1), (1, 2), (1, 1)]  # (actors, CPUs per actor = torch threads)


def measure(
    store: Path,
    provenance: HeatmapProvenance,
    version: str,
    base: WorkerSpec,
    chosen: np.ndarray,
    actors: int,
    cpus: int,
    batch_size: int,
) -> tuple[float, float]:
    """(start-up seconds, image·class/s) of one actor configuration on a new version."""
    images = ImageStore.open(store)
    heat = HeatmapStore.open_or_create(images, provenance, version)
    heat.mark_done(np.setdiff1d(images.usable_mask().nonzero()[0], chosen))
    tasks = [
        ShardTask(store=str(store), heatmap_version=version, work=w, batch_size=batch_size)
        for w in plan_heatmaps(heat, images).shards
    ]
    spec = dataclasses.replace(base, torch_threads=cpus)
    t = time.perf_counter()
    pool, group = start_actors(spec, actors, float(cpus), 0.0, None, 300)
    startup = time.perf_counter() - t
    try:
        t = time.perf_counter()
        report = dispatch(tasks, group.ready, group.waiting, in_flight=2)
        seconds = time.perf_counter() - t
    finally:
        pool.shutdown()
    done = sum(r.done for r in report.results)
    return startup, done * len(provenance.targets) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="precompute_actors_"))
    save_random_checkpoints(root / "ckpt")
    store = build_store(root, args.studies, args.images)
    chosen = ImageStore.open(store).usable_mask().nonzero()[0][: args.images]
    settings = HeatmapSettings.build(
        translation={"level": args.level, "steps": args.steps, "inversion_refinements": 0}
    )
    provenance = heatmap_provenance(settings, root / "ckpt")
    base = worker_spec(settings, provenance, root / "ckpt", PoolSettings())

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    print(
        f"{len(chosen)} images x K={len(provenance.targets)}, level {args.level}, "
        f"{args.steps} steps, 0 refinements, batch {args.batch_size}, {args.rounds} round(s)",
        flush=True,
    )
    rates: dict[tuple[int, int], list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        for actors, cpus in order:
            load = os.getloadavg()[0]
            version = f"r{r}-{actors}x{cpus}"
            startup, rate = measure(
                store, provenance, version, base, chosen, actors, cpus, args.batch_size
            )
            rates[(actors, cpus)].append(rate)
            print(
                f"  round {r + 1}: {actors} actor(s) x {cpus} CPU  {rate:6.2f} image·class/s "
                f"(start-up {startup:.1f} s, load avg {load:.2f})",
                flush=True,
            )
    ray.shutdown()
    mean = {c: float(np.mean(v)) for c, v in rates.items()}
    for (actors, cpus), rate in mean.items():
        print(f"{actors} actor(s) x {cpus} CPU: {rate:6.2f} image·class/s (mean)")
    print(f"2x1 / 1x2 = {mean[(2, 1)] / mean[(1, 2)]:.2f}")
    print(f"2x1 / 1x1 = {mean[(2, 1)] / mean[(1, 1)]:.2f}")
    print(f"1x2 / 1x1 = {mean[(1, 2)] / mean[(1, 1)]:.2f}")
    best = max(mean, key=lambda c: mean[c])
    print(f"best on this machine: {best[0]} actor(s) x {best[1]} CPU")


if __name__ == "__main__":
    main()
