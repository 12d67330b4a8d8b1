"""Heatmaps on a 3-node loopback Ray cluster with the store on the loopback S3 server: how busy
each actor is (busy / wall) and how many bytes pass through the driver per item.

A head node and two worker nodes (`ray start`, each 1 CPU and one ``gpu_slot``), 3 actors (one
per node), 64 px store of a synthetic release in the bucket, random tiny checkpoints in the
bucket, the flow's own dispatcher (2 shard tasks in flight per actor). Busy time per actor is
the sum of its shard calls' wall time (measured inside the actor); the driver's bytes are the
pickled tasks it sends and the results it receives, against what the design before this one
shipped per item (the image as float32 and its K heatmaps as float16), at 64 px and at the
paper's 512 px with K = 7.

Usage: .venv/bin/python benchmarks/cluster_dispatch.py [--studies 60] [--shard-items 4]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

from _precompute_setup import save_random_checkpoints  # sets the environment first

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.loopback
import ray

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.ingest import ingest_flow
from flows.precompute import heatmap_provenance, worker_spec
from flows.runtime.actors import start_actors
from flows.runtime.dispatch import dispatch
from flows.runtime.pool import PoolSettings
from storage.release.ingest_config import IngestConfig
from storage.store.heatmap_shards import ShardTask, plan_heatmaps
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location
from storage.synthetic import SynthConfig, write_synthetic_release
from tests.loopback import SLOT, LoopbackCluster, S3Server


def old_bytes_per_item(size: int, k: int) -> int:
    """What the driver shipped per item before: the image out (float32), K heatmaps back
    (float16)."""
    return size * size * 4 + k * size * size * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--shard-items", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cluster_dispatch_"))
    s3 = S3Server().start()
    os.environ.update(s3.environment())
    cluster = LoopbackCluster(root / "ray")
    (root / "ray").mkdir()
    try:
        cluster.start(workers=2, head_slot=True)  # 3 nodes, one actor each
        bucket = Location.of("s3://daug-bench")
        bucket.fs.mkdir("daug-bench")
        release = write_synthetic_release(
            root / "synth", SynthConfig(studies=args.studies, size=64), seed=7
        )
        store = bucket.child("store")
        ingest_flow(
            release=str(release.release_dir),
            store=store.url,
            ingest=IngestConfig(size=64, shard_items=args.shard_items),
        )
        save_random_checkpoints(root / "ckpt")
        bucket.fs.put(str(root / "ckpt"), bucket.child("ckpt").path, recursive=True)
        settings = HeatmapSettings.build(translation={"level": 50, "steps": args.steps})
        pool = PoolSettings(actors=3, cpus_per_actor=1.0, resources=(f"{SLOT}=1",), batch_size=2)
        provenance = heatmap_provenance(settings, bucket.child("ckpt").url)
        images = ImageStore.open(store)
        heat = HeatmapStore.open_or_create(images, provenance, "bench")
        plan = plan_heatmaps(heat, images)
        tasks = [
            ShardTask(store=store.url, heatmap_version="bench", work=w, batch_size=2)
            for w in plan.shards
        ]
        ray.init(address=cluster.address)
        spec = worker_spec(settings, provenance, bucket.child("ckpt").url, pool)
        actors, group = start_actors(spec, 3, 1.0, 0.0, pool.resource_map(), 300)
        nodes = ray.get([a.node.remote() for a in group.ready])
        started = time.perf_counter()
        report = dispatch(tasks, group.ready, group.waiting, in_flight=2)
        wall = time.perf_counter() - started
        actors.shutdown()
        ray.shutdown()
        items = sum(len(t.work.indices) for t in tasks)
        sent = sum(len(pickle.dumps(t)) for t in tasks)
        received = sum(len(pickle.dumps(r)) for r in report.results)
        k = len(provenance.targets)
        print(
            f"{items} items x K={k} in {len(tasks)} shards on {len(set(nodes))} nodes "
            f"({len(group.ready)} actors), store and checkpoints on the loopback S3 server"
        )
        for slot, busy in sorted(report.busy_seconds.items()):
            print(f"  actor {slot}: busy {busy:.1f} s of {wall:.1f} s = {busy / wall:.2f}")
        shares = [b / wall for b in report.busy_seconds.values()]
        print(f"busy / wall per actor: min {min(shares):.2f}, mean {sum(shares) / len(shares):.2f}")
        per_item = (sent + received) / items
        print(
            f"bytes through the driver per item: {per_item:.0f} B (tasks {sent / items:.0f} B, "
            f"results {received / items:.0f} B)"
        )
        for size in (64, 512):
            before = old_bytes_per_item(size, 7)
            print(
                f"  before (pixels out, heatmaps back) at {size} px, K = 7: "
                f"{before / 1024:.0f} KiB per item -> {before / per_item:.0f}x less now"
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        s3.stop()


if __name__ == "__main__":
    main()
