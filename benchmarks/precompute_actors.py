"""Heatmap actor configurations: 2 actors x 1 CPU vs 1 actor x 2 CPUs vs 1 actor x 1 CPU.

The same ``--images`` random 64 px images (compute does not depend on the content), K = 7,
random-weight tiny-preset checkpoints, shortened translation (plain DDIM inversion, few
steps), sent in batches of ``--batch-size`` to a :class:`RayHeatmapPool` (round-robin).
Actor start-up and one warm-up batch per actor are excluded; configurations are measured in
rotating order over ``--rounds`` rounds in one Ray session, so a load change from another
job hits all of them alike.

    .venv/bin/python benchmarks/precompute_actors.py [--images 64] [--steps 5] [--rounds 1]
"""

from __future__ import annotations

from _precompute_setup import save_random_checkpoints  # sets the environment first

# isort: split
import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from daug_core.heatmap_settings import HeatmapSettings
from flows.heatmap_actors import RayHeatmapPool, WorkerSpec
from flows.pool import PoolSettings
from flows.precompute import worker_spec
from storage.precompute import ImageBatch

CONFIGS = [(2, 1), (1, 2), (1, 1)]  # (actors, CPUs per actor = torch threads)


def measure(
    base: WorkerSpec, actors: int, cpus: int, batches: list[ImageBatch], k: int
) -> tuple[float, float]:
    """(start-up seconds, image·class/s) of one pool configuration."""
    spec = dataclasses.replace(base, torch_threads=cpus)
    t = time.perf_counter()
    pool = RayHeatmapPool(spec, actors, float(cpus), 0.0)
    startup = time.perf_counter() - t
    try:
        warm = ImageBatch(batches[0].indices[:1], batches[0].images[:1])
        list(pool.map_batches([warm] * actors))  # one warm-up call per actor (round-robin)
        t = time.perf_counter()
        outcomes = list(pool.map_batches(batches))
        seconds = time.perf_counter() - t
    finally:
        pool.shutdown()
    done = sum(len(o.indices) for o in outcomes)
    return startup, done * k / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    ckpt = Path(tempfile.mkdtemp(prefix="precompute_actors_")) / "ckpt"
    save_random_checkpoints(ckpt)
    settings = HeatmapSettings(level=args.level, steps=args.steps, inversion_refinements=0)
    targets = settings.target_names(settings.config().class_names)
    base = worker_spec(settings, targets, ckpt, PoolSettings())
    pixels = np.random.default_rng(0).random((args.images, 64, 64)).astype(np.float32)
    batches = [
        ImageBatch(
            np.arange(i, min(i + args.batch_size, args.images)), pixels[i:][: args.batch_size]
        )
        for i in range(0, args.images, args.batch_size)
    ]

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    print(
        f"{args.images} images x K={len(targets)}, level {args.level}, {args.steps} steps, "
        f"0 refinements, batch {args.batch_size}, {args.rounds} round(s)",
        flush=True,
    )
    rates: dict[tuple[int, int], list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        for actors, cpus in order:
            load = os.getloadavg()[0]
            startup, rate = measure(base, actors, cpus, batches, len(targets))
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
