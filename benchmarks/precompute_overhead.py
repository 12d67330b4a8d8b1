"""Precompute flow overhead: share of the flow's wall time spent in model compute.

A synthetic release (~160 studies, every view) is ingested into a 64 px store; the first
``--images`` items get K = 7 heatmaps from random-weight tiny-preset checkpoints (the same
compute as trained weights) with a shortened translation (plain DDIM inversion, few steps).

Measured, in one process (Ray started once, Prefect's ephemeral server warmed by the ingest):

* with ``--baseline``: one :class:`HeatmapWorker` in this process with the same torch
  thread count, called in a plain loop on the same batches the flow sends (read before
  timing; doubles the run time, so it is off by default);
* ``precompute_flow`` wall time (actor start-up, store IO, Prefect, Ray included) on the
  same items, 1 actor x ``--cpus`` CPUs;
* the time inside the actor's ``HeatmapWorker.__call__`` (``BatchOutcome.seconds``, summed
  over batches and divided by the number of actors), captured by wrapping
  ``precompute_shard`` as the flow's shard task calls it.

Target: compute share >= 90 %.

    .venv/bin/python benchmarks/precompute_overhead.py [--images 256] [--steps 5]
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

import flows.precompute as precompute_module
from daug_core.heatmap_settings import HeatmapSettings
from flows.heatmap_actors import HeatmapWorker
from flows.pool import PoolSettings
from flows.precompute import heatmap_provenance, precompute_flow, worker_spec
from storage.heatmap_store import HeatmapStore
from storage.image_store import ImageStore
from storage.precompute import HeatmapShardResult, plan_heatmaps, shard_batches


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=160)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline", action="store_true", help="also time a plain loop")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the one actor = threads")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="precompute_overhead_"))
    ckpt = root / "ckpt"
    save_random_checkpoints(ckpt)
    t = time.perf_counter()
    store = build_store(root, args.studies, args.images)
    images = ImageStore.open(store)
    print(
        f"store: {int(images.done_mask().sum())} images ingested in {time.perf_counter() - t:.1f} s"
    )

    items = images.items()
    usable = items[images.done_mask()[items["index"].to_numpy()]].sort_values("index")
    chosen = usable["index"].to_numpy()[: args.images]

    settings = HeatmapSettings(level=args.level, steps=args.steps, inversion_refinements=0)
    provenance = heatmap_provenance(settings, ckpt)
    targets = provenance.targets

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)

    # Pre-mark the items beyond --images as done in the flow's version so that the flow
    # computes exactly the chosen items (the flow's own resume logic skips done items).
    heat = HeatmapStore.open_or_create(images, provenance, "bench")
    extra = usable["index"].to_numpy()[args.images :]
    heat.mark_done(extra)
    plan = plan_heatmaps(heat, images)
    assert plan.pending == len(chosen), (plan.pending, len(chosen))
    batches = [b for work in plan.shards for b in shard_batches(images, work, args.batch_size)]

    # Baseline: the same worker in this process, same thread count, same batches.
    pool = PoolSettings(batch_size=args.batch_size, actors=1, cpus_per_actor=float(args.cpus))
    spec = worker_spec(settings, provenance.targets, ckpt, pool)
    load_before = load()
    loop_seconds = 0.0
    if args.baseline:
        worker = HeatmapWorker(spec)
        worker(batches[0])  # warm-up (not timed)
        t = time.perf_counter()
        for batch in batches:
            worker(batch)
        loop_seconds = time.perf_counter() - t
        del worker

    # The flow, with the shard function wrapped to collect the in-actor compute seconds.
    results: list[HeatmapShardResult] = []
    original = precompute_module.precompute_shard

    def recording_shard(*a: object, **kw: object) -> HeatmapShardResult:
        result = original(*a, **kw)  # type: ignore[arg-type]
        results.append(result)
        return result

    precompute_module.precompute_shard = recording_shard  # type: ignore[assignment]
    t = time.perf_counter()
    run = precompute_flow(
        store=str(store),
        checkpoints=str(ckpt),
        heatmaps=settings,
        pool=pool,
        heatmap_version="bench",
        examples=6,
    )
    flow_seconds = time.perf_counter() - t
    load_after = load()
    precompute_module.precompute_shard = original  # type: ignore[assignment]
    ray.shutdown()

    actors = 1
    in_actor = sum(r.compute_seconds for r in results) / actors
    pairs = len(chosen) * len(targets)
    print(
        f"{len(chosen)} images x K={len(targets)}, level {args.level}, {args.steps} steps, "
        f"0 refinements, batch {args.batch_size}, 1 actor x {args.cpus} CPUs / "
        f"{args.cpus} threads; {len(plan.shards)} shards; done by flow: {run['done']}"
    )
    print(f"flow wall time    {flow_seconds:7.1f} s  {pairs / flow_seconds:6.2f} image·class/s")
    print(f"  of which in-actor compute {in_actor:7.1f} s; flow compute phase {run['seconds']} s")
    print(f"compute share (in-actor / flow wall):      {100 * in_actor / flow_seconds:5.1f} %")
    if loop_seconds:
        rate = pairs / loop_seconds
        print(f"in-process loop   {loop_seconds:7.1f} s  {rate:6.2f} image·class/s")
        share = 100 * loop_seconds / flow_seconds
        print(f"compute share (in-process loop / flow wall): {share:5.1f} %")
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}")


if __name__ == "__main__":
    main()
