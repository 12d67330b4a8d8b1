"""The precompute flow end to end: tiny random models, Ray actors, a 64 px synthetic store.

Heatmaps are deterministic (DDIM with eta = 0, the same batches, one torch thread per actor),
so a resumed run must equal an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.settings import ConfigError
from flows.ingest import ingest_flow
from flows.precompute import check_sizes, heatmap_provenance, precompute_flow, worker_spec
from flows.runtime.actors import HeatmapWorker, PlacementError, WorkerSpec, start_actors
from flows.runtime.dispatch import dispatch
from flows.runtime.pool import PoolSettings, actor_count
from storage.errors import StoreFormatError
from storage.release.ingest_config import IngestConfig
from storage.store.heatmap_shards import ImageBatch, ShardTask, plan_heatmaps
from storage.store.heatmaps import HeatmapStore, ProvenanceMismatchError
from storage.store.image import ImageStore
from storage.store.lease import LeaseLostError, StoreLease
from tests.factories import write_random_checkpoints

pytestmark = pytest.mark.slow

TARGETS = ["+No Finding", "+Pleural", "+Lung Lesion"]
FAST = HeatmapSettings.build(
    targets=tuple(TARGETS), translation={"level": 50, "steps": 3, "inversion_refinements": 0}
)
POOL = PoolSettings(batch_size=4, actors=1)
RUN: dict[str, Any] = {"heatmaps": FAST, "pool": POOL, "examples": 3}
NAN_ITEM = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_pair, prefect_server, ray_session) -> dict[str, Path]:
    """An ingested 64 px store (one item's pixels replaced by NaN), an untouched copy of it
    (no heatmaps), and checkpoints of untrained tiny models."""
    root = tmp_path_factory.mktemp("precompute")
    store = root / "store"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=8),
    )
    images = ImageStore.open(store)
    assert images.done_mask()[NAN_ITEM]
    images.write_images([NAN_ITEM], np.full((1, 64, 64), np.nan))  # a corrupted item
    shutil.copytree(store, root / "store_fresh")
    ckpt = write_random_checkpoints(root / "ckpt")
    return {"store": store, "fresh": root / "store_fresh", "ckpt": ckpt}


@pytest.fixture(scope="module")
def first_run(setup) -> dict[str, Any]:
    return precompute_flow(store=str(setup["store"]), checkpoints=str(setup["ckpt"]), **RUN)


def test_end_to_end_writes_finite_heatmaps_flags_and_provenance(setup, first_run):
    images = ImageStore.open(setup["store"], read_only=True)
    heat = HeatmapStore(images)
    ok = np.flatnonzero(images.done_mask())
    done = heat.done_mask()
    assert first_run["done"] == len(ok) - 1 == done.sum()
    assert not done[NAN_ITEM] and done[np.setdiff1d(ok, [NAN_ITEM])].all()
    maps = heat.read_heatmaps(np.flatnonzero(done))
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.max() > 0.0
    assert np.isnan(heat.read_heatmaps([NAN_ITEM])).all()
    failures = heat.failures()
    assert failures["index"].tolist() == [NAN_ITEM]
    assert failures["reason"].iloc[0].startswith("non_finite_pixels")
    assert failures["dicom_id"].iloc[0] == images.items()["dicom_id"].iloc[NAN_ITEM]

    group = zarr.open_group(setup["store"], mode="r")["heatmaps/v1"]
    provenance = group.attrs["provenance"]
    assert provenance["targets"] == TARGETS and provenance["translation"]["steps"] == 3
    assert provenance["generator_sha256"] == checkpoint_sha256(setup["ckpt"] / "generator")
    assert group["heatmaps"].shape == (len(images), 3, 64, 64)
    assert group.attrs["runs"][-1]["done"] == first_run["done"]
    assert Path(first_run["examples"]).stat().st_size > 1000
    assert (Path(first_run["run_dir"]) / "summary.csv").is_file()
    assert first_run["image_class_per_second"] > 0


def test_rerun_computes_nothing_new(setup, first_run):
    again = precompute_flow(store=str(setup["store"]), checkpoints=str(setup["ckpt"]), **RUN)
    assert again["done"] == 0
    assert again["already_done"] == first_run["done"] and again["skipped_failed"] == 1


def test_other_provenance_refuses_and_a_new_version_works(setup, first_run):
    args = {"store": str(setup["store"]), "checkpoints": str(setup["ckpt"])}
    other = RUN | {"heatmaps": FAST.changed(translation={"scale": 30.0})}
    with pytest.raises(ProvenanceMismatchError, match=r"scale: 10\.0 -> 30\.0"):
        precompute_flow(**args, **other)
    v2 = precompute_flow(**args, **other, heatmap_version="v2", splits=["test"])
    images = ImageStore.open(setup["store"], read_only=True)
    assert HeatmapStore.versions(images) == ["v1", "v2"]
    assert HeatmapStore(images, "v2").provenance.translation.scale == 30.0
    assert HeatmapStore(images, "v1").done_mask().sum() == first_run["done"]
    items = images.items()
    tested = items[(items["split"] == "test") & images.done_mask()[items["index"]]]
    assert v2["selected"] == len(tested)


def local_worker(spec: WorkerSpec) -> HeatmapWorker:
    """A worker in this process (it sets torch's thread count: restored here)."""
    threads = torch.get_num_threads()
    worker = HeatmapWorker(spec)
    torch.set_num_threads(threads)
    return worker


def test_worker_reports_bad_items_without_failing_the_batch(setup, monkeypatch):
    worker = local_worker(pleural_spec(setup["ckpt"]))
    defaults = HeatmapSettings().target_names(worker.spec.config.class_names)
    assert defaults[0] == "+No Finding" and len(defaults) == 7
    compute = worker._compute

    def fails_on_dark_images(images: np.ndarray) -> np.ndarray:
        if (images.reshape(len(images), -1).max(axis=1) < 0.01).any():
            raise RuntimeError("dark image")
        return compute(images)

    monkeypatch.setattr(worker, "_compute", fails_on_dark_images)
    images = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    images[1] = 0.0
    outcome = worker(ImageBatch(np.array([10, 11, 12]), images))
    assert outcome.indices.tolist() == [10, 12] and outcome.heatmaps.shape == (2, 1, 64, 64)
    assert [(f.index, f.reason.split(":")[0]) for f in outcome.failures] == [(11, "compute_error")]
    assert "dark image" in outcome.failures[0].reason


def test_a_batch_that_raises_once_is_retried_item_by_item_and_succeeds(setup, monkeypatch):
    worker = local_worker(pleural_spec(setup["ckpt"]))
    compute = worker._compute
    calls: list[int] = []

    def flaky(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("transient")
        return compute(images)

    monkeypatch.setattr(worker, "_compute", flaky)
    images = np.random.default_rng(2).random((3, 64, 64)).astype(np.float32)
    outcome = worker(ImageBatch(np.array([4, 5, 6]), images))
    assert calls == [3, 1, 1, 1]  # the batch, then each item again
    assert outcome.indices.tolist() == [4, 5, 6] and not outcome.failures
    single = compute(images[1:2]).astype(np.float16)
    np.testing.assert_array_equal(outcome.heatmaps[1:2], single)


def test_a_worker_whose_run_lost_the_lease_commits_nothing(setup, tmp_path):
    store = tmp_path / "fenced"
    shutil.copytree(setup["fresh"], store)
    images = ImageStore.open(store)
    provenance = heatmap_provenance(FAST, setup["ckpt"])
    heat = HeatmapStore.open_or_create(images, provenance, "fenced")
    work = plan_heatmaps(heat, images).shards[0]
    worker = local_worker(worker_spec(FAST, provenance, setup["ckpt"], POOL))
    task = ShardTask(store=str(store), heatmap_version="fenced", work=work, batch_size=2)
    with StoreLease(store, owner="precompute:fenced") as lease:
        stale = dataclasses.replace(task, lease_holder="a-run-that-lost-it")
        with pytest.raises(LeaseLostError):
            worker.run_shard(stale)
        assert not heat.done_mask().any()
        result = worker.run_shard(dataclasses.replace(task, lease_holder=lease.holder))
    assert (
        result.done == int(heat.done_mask().sum()) == len(work.indices) - (NAN_ITEM in work.indices)
    )


def test_dispatch_survives_an_actor_that_dies_for_good(setup, first_run):
    """Two actors; one is killed for good before the run: its shards go back to the queue,
    the other does them all, and the heatmaps equal the uninterrupted run's (on three shards:
    enough for both actors to be sent work)."""
    import ray

    store = setup["store"]
    images = ImageStore.open(store)
    provenance = heatmap_provenance(FAST, setup["ckpt"])
    heat = HeatmapStore.open_or_create(images, provenance, "one-lost")
    shards = plan_heatmaps(heat, images).shards[:3]
    spec = worker_spec(FAST, provenance, setup["ckpt"], POOL)
    actors, group = start_actors(spec, 2, 1.0, 0.0, placement_timeout=120)
    try:
        ray.kill(group.ready[0])
        tasks = [
            ShardTask(store=str(store), heatmap_version="one-lost", work=w, batch_size=4)
            for w in shards
        ]
        report = dispatch(tasks, group.ready, in_flight=2)
    finally:
        actors.shutdown()
    assert report.lost_actors == 1 and not report.failed
    assert sorted(r.shard for r in report.results) == [w.shard for w in shards]
    computed = np.array([i for w in shards for i in w.indices])
    np.testing.assert_array_equal(
        HeatmapStore(images, "one-lost").read_heatmaps(computed),
        HeatmapStore(images).read_heatmaps(computed),
    )


def test_placement_times_out_with_a_clear_message(setup, ray_session):
    spec = pleural_spec(setup["ckpt"])
    with pytest.raises(PlacementError, match=r"asked for 2 heatmap actor\(s\).*no_such_node"):
        start_actors(spec, 2, 1.0, 0.0, {"no_such_node": 1.0}, placement_timeout=2)


def test_a_run_that_fails_before_its_first_item_leaves_no_version(setup, ray_session):
    unplaceable = dataclasses.replace(POOL, resources=("no_such_node=1",), placement_timeout=2.0)
    with pytest.raises(PlacementError):
        precompute_flow(
            store=str(setup["store"]),
            checkpoints=str(setup["ckpt"]),
            **RUN | {"pool": unplaceable, "heatmap_version": "never"},
        )
    images = ImageStore.open(setup["store"], read_only=True)
    assert "never" not in HeatmapStore.versions(images)
    assert not images.tables.names("heatmaps/never/")


def test_a_killed_actor_process_mid_run_loses_nothing(setup, first_run, monkeypatch):
    """SIGKILL an actor's process once the actors are up: its shards go to a replacement (or
    the others), skipping committed batches, and the heatmaps equal the uninterrupted run's."""
    import os
    import signal

    import ray

    import flows.precompute as precompute_module

    killed: list[int] = []
    original = precompute_module.start_actors

    def killing_start(*args, **kwargs):
        actors, group = original(*args, **kwargs)
        pid = ray.get(group.ready[0].pid.remote())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return actors, group

    monkeypatch.setattr(precompute_module, "start_actors", killing_start)
    run = precompute_flow(
        store=str(setup["store"]), checkpoints=str(setup["ckpt"]), **RUN, heatmap_version="killed"
    )
    assert killed and run["done"] == first_run["done"] and run["failed"] == first_run["failed"]
    images = ImageStore.open(setup["store"], read_only=True)
    everything = np.arange(len(images))
    np.testing.assert_array_equal(
        HeatmapStore(images, "killed").read_heatmaps(everything),
        HeatmapStore(images).read_heatmaps(everything),
    )


def test_model_input_maps_unit_pixels_to_minus_one_one_and_area_downscales():
    from daug_core.model_input import to_model_space

    pixels = np.zeros((1, 128, 128), np.float32)
    pixels[0, :, 64:] = 1.0
    pixels[0, :2, :2] = 1.0  # exactly the 2x2 source block of output pixel (0, 0)
    x = to_model_space(pixels, 64)
    assert x.shape == (1, 1, 64, 64)
    assert x[0, 0, 10, 10].item() == -1.0 and x[0, 0, 10, 40].item() == 1.0
    assert x[0, 0, 0, 0].item() == 1.0  # the 2x2 block averages into one output pixel
    half = np.zeros((1, 64, 64), np.float32)
    half[0, 0, 0] = 1.0  # one of four source pixels of output (0, 0) at 32 px
    assert to_model_space(half, 32)[0, 0, 0, 0].item() == -0.5


def test_minmax_model_input_scales_each_image_to_unit_range_as_the_official_code():
    from daug_core.model_input import to_model_space

    pixels = np.stack([np.full((8, 8), 0.2), np.full((8, 8), 0.5)]).astype(np.float32)
    pixels[0, 0, :4] = 0.6  # image 0 spans [0.2, 0.6]; image 1 is constant
    x = to_model_space(pixels, 8, "minmax")
    assert x[0].min().item() == 0.0 and x[0].max().item() == 1.0
    assert x[0, 0, 0, 0].item() == 1.0 and x[0, 0, 5, 5].item() == 0.0
    assert x[1].abs().max().item() == 0.0  # a constant image: 0, not a division by zero
    signed = to_model_space(pixels, 8, "signed")
    torch.testing.assert_close(signed, torch.from_numpy(pixels).unsqueeze(1) * 2 - 1)
    with pytest.raises(ValueError, match="input_range"):
        to_model_space(pixels, 8, "unit")  # type: ignore[arg-type]


def test_actor_count_fits_the_cluster(ray_session):
    assert actor_count(PoolSettings(actors=3)) == 3  # an explicit count is kept
    assert actor_count(PoolSettings()) == 2  # the session's local Ray has 2 CPUs
    assert actor_count(PoolSettings(cpus_per_actor=2.0)) == 1
    assert actor_count(PoolSettings(gpus_per_actor=1.0)) == 1  # no GPU: one actor, never zero
    assert actor_count(PoolSettings(resources=("no_such_node=1",))) == 1


def pleural_spec(checkpoints: Path) -> WorkerSpec:
    """A worker of the untrained models with the fast settings and one target."""
    return WorkerSpec(
        generator_dir=str(checkpoints / "generator"),
        classifier_dir=str(checkpoints / "classifier"),
        config=FAST.config(),
        targets=("+Pleural",),
    )


def test_a_preset_the_checkpoints_and_store_do_not_fit_is_refused_before_any_work(setup):
    """A UNet runs at any size: without the check, the 512 px paper preset would run 64 px
    models on upsampled images for hours. Nothing is created in the store."""
    versions = HeatmapStore.versions(ImageStore.open(setup["store"]))
    paper = RUN | {"heatmaps": HeatmapSettings(preset="paper")}
    with pytest.raises(ConfigError, match=r"holds a 64 px generator; the paper preset .* 512 px"):
        precompute_flow(store=str(setup["store"]), checkpoints=str(setup["ckpt"]), **paper)
    assert HeatmapStore.versions(ImageStore.open(setup["store"])) == versions


def test_a_store_smaller_than_the_preset_is_refused(tmp_path, setup):
    small = ImageStore.create(tmp_path / "store32", 32, shard_items=8)
    with pytest.raises(StoreFormatError, match=r"holds 32 px images; the tiny preset .* 64 px"):
        check_sizes(FAST, setup["ckpt"], str(small.root))
