"""Fan-out mechanism for heatmap precompute: our actor pool vs Ray Data ``map_batches``.

Both read the same ``--images`` pending items of an ingested 64 px synthetic store, compute
K = 7 heatmaps with the same :class:`HeatmapWorker` (random-weight tiny checkpoints, plain
DDIM inversion, ``--steps`` steps) on 2 actors x 1 CPU, and write heatmaps and done flags
into a heatmap version of the store:

* ``pool``: what the precompute flow does without Prefect: one thread per shard (2 at a
  time, like the flow's task runner) calling ``precompute_shard`` with a
  :class:`RayHeatmapPool`;
* ``ray-data``: ``ray.data.from_items(indices).map_batches(callable class,
  compute=ActorPoolStrategy(size=2), num_cpus=1, batch_size)``, one block per batch:
  each actor reads its batch from the store and computes; the driver streams the results
  (``iter_batches``) and writes them.

Times include actor start-up and model loading (both start 2 actors). The two run in
alternating order over ``--rounds`` rounds in one Ray session.

    .venv/bin/python benchmarks/precompute_raydata.py [--images 64] [--steps 5] [--rounds 2]
"""

from __future__ import annotations

from _precompute_setup import build_store, save_random_checkpoints  # sets the environment first

# isort: split
import argparse
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray

from daug_core.heatmap_settings import HeatmapSettings
from flows.heatmap_actors import HeatmapWorker, RayHeatmapPool, WorkerSpec
from flows.pool import PoolSettings
from flows.precompute import heatmap_provenance, worker_spec
from storage.heatmap_store import HeatmapProvenance, HeatmapStore
from storage.image_store import ImageStore
from storage.precompute import ImageBatch, plan_heatmaps, precompute_shard


class StoreHeatmapUDF:
    """Ray Data callable class: reads its batch of store items, returns their heatmaps."""

    def __init__(self, spec: WorkerSpec, store: str) -> None:
        self.worker = HeatmapWorker(spec)
        self.images = ImageStore.open(store, read_only=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = batch["index"]
        outcome = self.worker(ImageBatch(indices, self.images.read_images(indices)))
        return {"index": outcome.indices, "heatmaps": outcome.heatmaps}


def fresh_version(
    images: ImageStore, provenance: HeatmapProvenance, name: str, keep: np.ndarray
) -> HeatmapStore:
    """A new version in which every usable item except ``keep`` is already done."""
    if name in HeatmapStore.versions(images):
        HeatmapStore.delete_version(images, name)
    heat = HeatmapStore.create(images, provenance, name)
    others = np.setdiff1d(np.flatnonzero(images.done_mask()), keep)
    heat.mark_done(others)
    return heat


def run_pool(
    images: ImageStore, heat: HeatmapStore, spec: WorkerSpec, batch_size: int
) -> tuple[float, int]:
    start = time.perf_counter()
    pool = RayHeatmapPool(spec, actors=2, cpus_per_actor=1.0, gpus_per_actor=0.0)
    try:
        plan = plan_heatmaps(heat, images)
        with ThreadPoolExecutor(max_workers=2) as threads:
            results = list(
                threads.map(
                    lambda work: precompute_shard(heat, images, work, pool, batch_size),
                    plan.shards,
                )
            )
    finally:
        pool.shutdown()
    return time.perf_counter() - start, sum(r.done for r in results)


def run_ray_data(
    store: Path, heat: HeatmapStore, spec: WorkerSpec, pending: np.ndarray, batch_size: int
) -> tuple[float, int]:
    start = time.perf_counter()
    blocks = max(1, -(-len(pending) // batch_size))  # one block per batch: both actors busy
    items = [{"index": int(i)} for i in pending]
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        StoreHeatmapUDF,
        fn_constructor_kwargs={"spec": spec, "store": str(store)},
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        batch_size=batch_size,
        batch_format="numpy",
    )
    done = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        indices = batch["index"].astype(np.int64)
        heat.write_heatmaps(indices, batch["heatmaps"])
        heat.mark_done(indices)
        done += len(indices)
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="precompute_raydata_"))
    save_random_checkpoints(root / "ckpt")
    store = build_store(root, args.studies, args.images)
    images = ImageStore.open(store)
    chosen = np.flatnonzero(images.done_mask())[: args.images]
    settings = HeatmapSettings(level=args.level, steps=args.steps, inversion_refinements=0)
    provenance = heatmap_provenance(settings, root / "ckpt")
    targets = provenance.targets
    spec = worker_spec(settings, targets, root / "ckpt", PoolSettings())

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    pairs = len(chosen) * len(targets)
    print(
        f"{len(chosen)} images x K={len(targets)}, level {args.level}, {args.steps} steps, "
        f"batch {args.batch_size}, 2 actors x 1 CPU, start-up included",
        flush=True,
    )
    seconds: dict[str, list[float]] = {"pool": [], "ray-data": []}
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name in ("pool", "ray-data") if r % 2 == 0 else ("ray-data", "pool"):
            heat = fresh_version(images, provenance, name, chosen)
            if name == "pool":
                wall, done = run_pool(images, heat, spec, args.batch_size)
            else:
                wall, done = run_ray_data(store, heat, spec, chosen, args.batch_size)
            assert done == len(chosen), (name, done)
            outputs[name] = heat.read_heatmaps(chosen)
            seconds[name].append(wall)
            print(f"  round {r + 1}: {name:8s} {wall:6.1f} s  {pairs / wall:6.2f} image·class/s")
    ray.shutdown()
    mean = {name: float(np.mean(v)) for name, v in seconds.items()}
    for name, wall in mean.items():
        print(f"{name:8s} mean {wall:6.1f} s  {pairs / wall:6.2f} image·class/s")
    print(f"ray-data / pool wall time = {mean['ray-data'] / mean['pool']:.2f}")
    same = np.array_equal(outputs["pool"], outputs["ray-data"], equal_nan=True)
    print(f"identical heatmaps: {same}")


if __name__ == "__main__":
    main()
