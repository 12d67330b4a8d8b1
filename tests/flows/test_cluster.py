"""Heatmaps on a real multi-node Ray cluster on this host, with the store on the loopback S3
server: `ray start --head` plus two `ray start --address` worker nodes (each its own raylet,
so stopping one is a real node loss), a custom resource standing in for a GPU, started from a
folder without the repository (the nodes import the installed package).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.ingest import ingest_flow
from flows.precompute import heatmap_provenance, precompute_flow, worker_spec
from flows.runtime.pool import PoolSettings
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location
from tests.factories import write_random_checkpoints
from tests.loopback import SLOT, LoopbackCluster, node_processes

pytestmark = pytest.mark.slow

FAST = HeatmapSettings.build(
    targets=("+No Finding", "+Pleural"), translation={"level": 50, "steps": 3}
)
POOL = PoolSettings(
    actors=2, cpus_per_actor=1.0, resources=(f"{SLOT}=1",), batch_size=2, placement_timeout=120
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server) -> Iterator[LoopbackCluster]:
    import ray

    if ray.is_initialized():  # the session's local Ray (other modules): this module has its own
        ray.shutdown()
    handle = LoopbackCluster(tmp_path_factory.mktemp("ray-cluster"))
    handle.start(workers=2)
    try:
        yield handle
    finally:
        if ray.is_initialized():
            ray.shutdown()
        handle.stop()


@pytest.fixture(scope="module")
def s3_setup(cluster, s3_bucket, synthetic_pair, prefect_server, tmp_path_factory) -> dict:
    """A 64 px store ingested into the bucket, random checkpoints uploaded beside it, and a
    local copy of both for the reference run."""
    root = Location.of(f"{s3_bucket}/cluster-{time.time_ns()}")
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=root.child("store").url,
        ingest=IngestConfig(size=64, shard_items=4),
    )
    local = tmp_path_factory.mktemp("cluster-local")
    ckpt = write_random_checkpoints(local / "ckpt")
    for name in ("generator", "classifier"):
        root.fs.put(str(ckpt / name), root.child("ckpt", name).path, recursive=True)
    root.child("store").fs.get(root.child("store").path, str(local / "store"), recursive=True)
    return {"store": root.child("store"), "ckpt": root.child("ckpt"), "local": local}


def test_actors_spread_over_the_worker_nodes(cluster, s3_setup):
    import ray

    from flows.runtime.actors import start_actors

    ray.init(address=cluster.address)
    try:
        provenance = heatmap_provenance(FAST, s3_setup["ckpt"].url)
        spec = worker_spec(FAST, provenance, s3_setup["ckpt"].url, POOL)
        actors, group = start_actors(spec, 2, 1.0, 0.0, POOL.resource_map(), placement_timeout=120)
        nodes = ray.get([a.node.remote() for a in group.ready])
        actors.shutdown()
        head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get(SLOT) is None)
    finally:
        ray.shutdown()
    assert len(set(nodes)) == 2 and head not in nodes


def test_precompute_on_the_cluster_with_the_store_on_s3_equals_a_local_run(
    cluster, s3_setup, monkeypatch
):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    remote = precompute_flow(
        store=s3_setup["store"].url, checkpoints=s3_setup["ckpt"].url, heatmaps=FAST, pool=POOL
    )
    assert remote["done"] > 0 and remote["run_dir"].startswith("s3://")
    assert s3_setup["store"].child("_runs").list()  # the run's outputs went to the bucket
    local = s3_setup["local"]
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    reference = precompute_flow(
        store=str(local / "store"), checkpoints=str(local / "ckpt"), heatmaps=FAST, pool=POOL
    )
    assert reference["done"] == remote["done"]
    on_s3, on_disk = ImageStore.open(s3_setup["store"]), ImageStore.open(local / "store")
    everything = np.arange(len(on_s3))
    np.testing.assert_array_equal(
        HeatmapStore(on_s3).read_heatmaps(everything),
        HeatmapStore(on_disk).read_heatmaps(everything),
    )
    np.testing.assert_array_equal(
        HeatmapStore(on_s3).done_mask(), HeatmapStore(on_disk).done_mask()
    )


def test_a_worker_node_lost_mid_run_loses_only_work_in_flight(cluster, s3_setup, monkeypatch):
    """Kill one worker node (its raylet and workers) once some batches are committed: Ray
    restarts its actor on the node that is left, the run completes, the heatmaps equal the
    uninterrupted run's, and nothing committed before the loss is computed again."""
    import ray

    local = s3_setup["local"]
    store = local / "node-loss"
    shutil.copytree(local / "store", store)
    version = "node-loss"
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    ray.init(address=cluster.address)
    done_path = store / "heatmaps" / version / "heatmaps_done"
    snapshot: dict[str, float] = {}
    victim = next(n for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOT))

    import flows.precompute as precompute_module

    original = precompute_module.dispatch

    def dispatch_then_lose_a_node(tasks, actors, waiting=None, **kwargs):
        committed = 0

        def watch(result, task):
            nonlocal committed
            committed += result.done
            if committed >= 4 and not snapshot:  # two batches in: take the node away
                heat = HeatmapStore(ImageStore.open(store, read_only=True), version)
                for index in np.flatnonzero(heat.done_mask()):  # one chunk file per item
                    chunk = store / "heatmaps" / version / "heatmaps" / "c" / str(index)
                    for path in chunk.rglob("*"):
                        snapshot[str(path)] = path.stat().st_mtime_ns
                for pid in node_processes(victim["NodeManagerPort"]):
                    os.kill(pid, signal.SIGKILL)
            if kwargs.get("on_result"):
                kwargs["on_result"](result, task)

        return original(tasks, actors, waiting, **(kwargs | {"on_result": watch}))

    monkeypatch.setattr(precompute_module, "dispatch", dispatch_then_lose_a_node)
    try:
        run = precompute_flow(
            store=str(store),
            checkpoints=str(local / "ckpt"),
            heatmaps=FAST,
            pool=dataclasses_replace(POOL, in_flight=1),
            heatmap_version=version,
        )
    finally:
        ray.shutdown()
        cluster.add_worker()  # the next test gets two worker nodes again
    assert snapshot, "the node was never killed"
    assert done_path.exists()
    images = ImageStore.open(store)
    everything = np.arange(len(images))
    np.testing.assert_array_equal(
        HeatmapStore(images, version).read_heatmaps(everything),
        HeatmapStore(ImageStore.open(local / "store")).read_heatmaps(everything),
    )
    assert run["done"] + run["already_done"] == int(HeatmapStore(images, version).done_mask().sum())
    rewritten = [p for p, mtime in snapshot.items() if Path(p).stat().st_mtime_ns != mtime]
    assert not rewritten, f"committed heatmaps computed again: {rewritten[:3]}"


def dataclasses_replace(settings: PoolSettings, **changes: object) -> PoolSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
