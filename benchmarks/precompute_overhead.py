"""Precompute flow overhead: share of the flow's wall time spent in model compute.

A synthetic release (~160 studies, every view) is ingested into a 64 px store; the first
``--images`` items get K = 7 heatmaps from random-weight tiny-preset checkpoints (the same
compute as trained weights) with a shortened translation (plain DDIM inversion, few steps).

Measured in one process (Ray started once, Prefect's ephemeral server warmed by the ingest):
``precompute_flow``'s wall time (actor start-up, store IO in the workers, Prefect, Ray, the
example plot and artifacts included) against the model time inside the workers that the flow
records (``worker_compute_seconds``: the batches' compute, summed over shards), divided by the
number of actors. Target: compute share >= 90 %.

    .venv/bin/python benchmarks/precompute_overhead.py [--images 256] [--steps 5] [--actors 2]
"""

from __future__ import annotations

from _precompute_setup import build_store, save_random_checkpoints  # sets the environment first

# isort: split
import argparse
import os
import tempfile
import time
from pathlib import Path

import ray

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.precompute import heatmap_provenance, precompute_flow
from flows.runtime.pool import PoolSettings
from storage.store.heatmap_shards import plan_heatmaps
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=160)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2, help="actors of 1 CPU (1 thread) each")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="precompute_overhead_"))
    ckpt = root / "ckpt"
    save_random_checkpoints(ckpt)
    t = time.perf_counter()
    store = build_store(root, args.studies, args.images)
    images = ImageStore.open(store)
    ingested = int(images.done_mask().sum())
    print(f"store: {ingested} images ingested in {time.perf_counter() - t:.1f} s")

    settings = HeatmapSettings.build(
        translation={"level": args.level, "steps": args.steps, "inversion_refinements": 0}
    )
    provenance = heatmap_provenance(settings, ckpt)
    # Mark the items beyond --images done in the flow's version: the flow's own resume logic
    # then computes exactly the first --images usable items.
    heat = HeatmapStore.open_or_create(images, provenance, "bench")
    usable = images.usable_mask().nonzero()[0]
    heat.mark_done(usable[args.images :])
    chosen = plan_heatmaps(heat, images).pending

    ray.init(num_cpus=args.actors, include_dashboard=False, object_store_memory=256 * 1024**2)
    pool = PoolSettings(batch_size=args.batch_size, actors=args.actors, cpus_per_actor=1.0)
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    run = precompute_flow(
        store=str(store), checkpoints=str(ckpt), heatmaps=settings, pool=pool,
        heatmap_version="bench", examples=6,
    )  # fmt: skip
    flow_seconds = time.perf_counter() - t
    load_after = os.getloadavg()[0]
    ray.shutdown()

    in_workers = run["worker_compute_seconds"] / run["actors"]
    pairs = chosen * len(provenance.targets)
    print(
        f"{chosen} images x K={len(provenance.targets)}, level {args.level}, {args.steps} steps, "
        f"0 refinements, batch {args.batch_size}, {run['actors']} actor(s) x 1 CPU; "
        f"done by the flow: {run['done']}"
    )
    print(f"flow wall time    {flow_seconds:7.1f} s  {pairs / flow_seconds:6.2f} image·class/s")
    print(f"  model time in the workers per actor {in_workers:7.1f} s; dispatch {run['seconds']} s")
    print(f"compute share (in-worker / flow wall): {100 * in_workers / flow_seconds:5.1f} %")
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")


if __name__ == "__main__":
    main()
