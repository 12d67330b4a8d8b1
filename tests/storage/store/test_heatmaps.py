"""HeatmapStore conformance (on disk and in memory), planning and the shard function."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from storage.errors import StoreFormatError
from storage.store.heatmap_shards import (
    BatchOutcome,
    ImageBatch,
    ItemFailure,
    plan_heatmaps,
    precompute_shard,
    shard_batches,
)
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore, ProvenanceMismatchError
from storage.store.image import ImageStore
from tests.factories import (
    HEATMAP_TARGETS,
    PROVENANCE,
    fill_images,
    with_translation,
)
from tests.factories import STORE_SHARD as SHARD
from tests.factories import STORE_SIZE as SIZE

K, S = len(HEATMAP_TARGETS), PROVENANCE.image_size


@pytest.fixture(params=["directory", "directory-sharded", "memory"])
def images(request, tmp_path: Path) -> ImageStore:
    if request.param == "memory":
        store = ImageStore.in_memory(SIZE, shard_items=SHARD)
    else:
        sharded = request.param.endswith("sharded")
        store = ImageStore.create(tmp_path / "store", SIZE, shard_items=SHARD, sharded=sharded)
    fill_images(store, 10, bad=[1])
    return store


def reopen(images: ImageStore) -> ImageStore:
    if images.location == "<memory>":
        return images
    return ImageStore.open(images.location)


def test_new_version_is_empty_nan_and_records_provenance(images):
    store = HeatmapStore.create(images, PROVENANCE)
    assert store.heatmaps.shape == (10, K, S, S)
    assert store.heatmaps.dtype == np.float16
    assert not store.done_mask().any()
    assert np.isnan(store.read_heatmaps([0, 9])).all()
    again = HeatmapStore(reopen(images))
    assert again.provenance == PROVENANCE
    assert again.attrs["targets"] == list(PROVENANCE.targets)
    assert again.attrs["code_version"]
    assert HeatmapStore.versions(images) == ["v1"]


def test_heatmaps_round_trip_and_done_follows_the_data(images):
    store = HeatmapStore.create(images, PROVENANCE)
    data = np.random.default_rng(1).random((3, K, S, S)).astype(np.float32)
    store.write_heatmaps([5, 2, 3], data)
    store.mark_done([2, 3, 5])
    again = HeatmapStore(reopen(images))
    np.testing.assert_array_equal(
        again.read_heatmaps([5, 2, 3]), data.astype(np.float16).astype(np.float32)
    )
    assert np.flatnonzero(again.done_mask()).tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="heatmaps must be"):
        store.write_heatmaps([0], np.zeros((1, K + 1, S, S)))


def test_same_provenance_reopens_other_provenance_refuses_naming_what_differs(images):
    HeatmapStore.create(images, PROVENANCE)
    assert HeatmapStore.open_or_create(images, PROVENANCE).provenance == PROVENANCE
    other = dataclasses.replace(with_translation(PROVENANCE, scale=10.0), generator_sha256="c" * 64)
    with pytest.raises(ProvenanceMismatchError) as error:
        HeatmapStore.open_or_create(images, other)
    message = str(error.value)
    assert "scale: 100.0 -> 10.0" in message and "generator_sha256" in message
    assert "classifier_sha256" not in message and "new version" in message
    second = HeatmapStore.open_or_create(images, other, version="v2")
    assert HeatmapStore.versions(images) == ["v1", "v2"]
    assert HeatmapStore(images, "v1").provenance == PROVENANCE
    assert second.provenance == other
    HeatmapStore.delete_version(images, "v1")
    assert HeatmapStore.versions(images) == ["v2"]
    with pytest.raises(StoreFormatError, match="no heatmaps version"):
        HeatmapStore(images, "v1")
    with pytest.raises(ValueError, match="heatmap version"):
        HeatmapStore.create(images, PROVENANCE, version="../x")


def test_a_version_holds_one_precision_and_older_versions_are_fp32(images):
    HeatmapStore.create(images, PROVENANCE)
    bf16 = with_translation(PROVENANCE, precision="bf16")
    with pytest.raises(ProvenanceMismatchError, match="precision: 'fp32' -> 'bf16'"):
        HeatmapStore.open_or_create(images, bf16)
    assert HeatmapStore.open_or_create(images, bf16, version="v2").provenance == bf16
    written_before = PROVENANCE.as_dict()
    del written_before["translation"]["precision"]
    assert HeatmapProvenance.from_dict(written_before).translation.precision == "fp32"


def test_a_version_holds_one_generator_weight_set_and_older_versions_used_ema(images):
    HeatmapStore.create(images, PROVENANCE)
    raw = with_translation(PROVENANCE, generator_ema=False)
    with pytest.raises(ProvenanceMismatchError, match="generator_ema: True -> False"):
        HeatmapStore.open_or_create(images, raw)
    written_before = PROVENANCE.as_dict()
    del written_before["translation"]["generator_ema"]
    assert HeatmapProvenance.from_dict(written_before).translation.generator_ema is True


def test_a_version_holds_one_input_range_and_older_versions_are_signed(images):
    HeatmapStore.create(images, PROVENANCE)
    unit = with_translation(PROVENANCE, input_range="minmax")
    with pytest.raises(ProvenanceMismatchError, match="input_range: 'signed' -> 'minmax'"):
        HeatmapStore.open_or_create(images, unit)
    written_before = PROVENANCE.as_dict()
    del written_before["translation"]["input_range"]
    assert HeatmapProvenance.from_dict(written_before).translation.input_range == "signed"


def test_provenance_of_a_version_written_before_the_definition_setting_is_the_official_one():
    # Versions written before the translation was embedded whole keep its numbers at the top
    # level; those from before `difference` / `smoothing_sigma` existed hold minmax maps.
    flat = {k: v for k, v in PROVENANCE.as_dict().items() if k != "translation"}
    flat |= {
        k: v
        for k, v in dataclasses.asdict(PROVENANCE.translation).items()
        if k not in ("difference", "smoothing_sigma")
    }
    read = HeatmapProvenance.from_dict(flat)
    assert read == PROVENANCE
    assert (read.translation.difference, read.translation.smoothing_sigma) == ("minmax", 0.0)
    assert read.definition == "|minmax(x0) - minmax(x_cf)| per target"
    raw = with_translation(PROVENANCE, difference="raw", smoothing_sigma=1.5)
    assert raw.definition == "|x0 - x_cf| / 2 (pixel units) per target, Gaussian blur sigma 1.5 px"
    assert "smoothing_sigma: 0.0 -> 1.5" in PROVENANCE.differences(raw)
    assert HeatmapProvenance.from_dict(raw.as_dict()) == raw  # the layout written now
    with pytest.raises(StoreFormatError, match="lacks"):
        HeatmapProvenance.from_dict({k: v for k, v in flat.items() if k != "scale"})
    with pytest.raises(StoreFormatError, match="scale"):
        bad = raw.as_dict()
        bad["translation"]["scale"] = -1.0
        HeatmapProvenance.from_dict(bad)


def test_grows_with_the_image_store(images):
    HeatmapStore.create(images, PROVENANCE)
    images.register(pd.DataFrame({"dicom_id": ["new1", "new2"], "split": ["train"] * 2}))
    grown = HeatmapStore.open_or_create(images, PROVENANCE)
    assert len(grown) == 12 and grown.done.shape == (12,)


def test_failures_consolidate_keep_the_last_reason_and_drop_items_done_since(images):
    store = HeatmapStore.create(images, PROVENANCE)
    store.write_failures_part(
        0, pd.DataFrame({"index": [0, 2], "dicom_id": ["d0", "d2"]}).assign(reason="x: first")
    )
    assert store.consolidate() == 1
    store.write_failures_part(
        0, pd.DataFrame({"index": [2], "dicom_id": ["d2"], "reason": ["y: again"]})
    )
    store.mark_done([0])
    store.consolidate()
    failures = HeatmapStore(reopen(images)).failures()
    assert failures.to_dict("records") == [{"index": 2, "dicom_id": "d2", "reason": "y: again"}]
    assert store.consolidate() == 0  # idempotent
    with pytest.raises(ValueError, match="other shards"):
        store.write_failures_part(1, failures)


def test_plain_zarr_reads_the_layout(tmp_path):
    images = ImageStore.create(tmp_path / "store", SIZE, shard_items=SHARD, sharded=True)
    fill_images(images, 8)
    store = HeatmapStore.create(images, PROVENANCE)
    store.write_heatmaps([1], np.full((1, K, S, S), 0.5))
    store.mark_done([1])
    root = zarr.open_group(tmp_path / "store", mode="r")
    heat = root["heatmaps/v1/heatmaps"]
    assert heat.shape == (8, K, S, S) and heat.chunks == (1, K, S, S)
    assert heat.shards == (SHARD, K, S, S)
    assert float(heat[1, 2, 0, 0]) == 0.5 and np.isnan(heat[0]).all()
    assert root["heatmaps/v1/heatmaps_done"][:].tolist() == [False, True] + [False] * 6
    assert root["heatmaps/v1"].attrs["provenance"]["targets"][0] == "+No Finding"


class FakeComputer:
    """Heatmap = the item index / 100 everywhere; items in ``fail`` fail with a reason."""

    def __init__(self, fail: Sequence[int] = ()) -> None:
        self.fail = set(fail)
        self.seen: list[int] = []

    def __call__(self, batch: ImageBatch) -> BatchOutcome:
        self.seen.append(len(batch.indices))
        ok = np.array([i for i in batch.indices if i not in self.fail], dtype=np.int64)
        heat = np.broadcast_to(ok[:, None, None, None] / 100.0, (len(ok), K, S, S))
        failures = tuple(
            ItemFailure(int(i), "compute_error: boom") for i in batch.indices if i in self.fail
        )
        return BatchOutcome(ok, heat.astype(np.float16), failures, 0.01)


def test_plan_selects_ingested_items_of_the_splits_by_shard(images):
    store = HeatmapStore.create(images, PROVENANCE)
    plan = plan_heatmaps(store, images)
    assert plan.selected == 9 and plan.pending == 9  # item 1 is quarantined
    assert [s.shard for s in plan.shards] == [0, 1, 2]
    assert plan.shards[0].indices == (0, 2, 3)
    test_only = plan_heatmaps(store, images, splits=["test"])
    assert [i for s in test_only.shards for i in s.indices] == [3, 5, 7, 9]


def test_shard_writes_heatmaps_failures_and_done_and_a_rerun_skips_them(images):
    store = HeatmapStore.create(images, PROVENANCE)
    computer = FakeComputer(fail=[5])
    for work in plan_heatmaps(store, images).shards:
        result = precompute_shard(store, images, work, computer, batch_size=2)
        assert result.done + sum(result.failed.values()) == len(work.indices)
    assert np.flatnonzero(store.done_mask()).tolist() == [0, 2, 3, 4, 6, 7, 8, 9]
    np.testing.assert_allclose(store.read_heatmaps([7])[0], 0.07, atol=1e-3)
    assert np.isnan(store.read_heatmaps([5])).all()
    again = plan_heatmaps(store, images)
    assert again.pending == 0 and again.already_done == 8 and again.skipped_failed == 1
    assert store.failures()["dicom_id"].tolist() == ["d5"]
    retry = plan_heatmaps(store, images, retry_failed=True)
    assert [i for s in retry.shards for i in s.indices] == [5]
    precompute_shard(store, images, retry.shards[0], FakeComputer(), batch_size=2)
    store.consolidate()
    assert store.failures().empty and store.done_mask()[5]


def test_batches_lie_on_the_shard_grid_and_commit_one_by_one(images):
    """A shard interrupted after its first batch resumes with exactly the other batches (so a
    resumed run computes what an uninterrupted one would), and a fencing check that fails
    commits nothing further."""
    store = HeatmapStore.create(images, PROVENANCE)
    work = plan_heatmaps(store, images).shards[0]  # shard 0 of 4 items: 0, 2, 3 (1 quarantined)
    assert [b.tolist() for b in shard_batches(work, images.shard_items, 2)] == [[0], [2, 3]]
    commits: list[int] = []

    def fence_after_first() -> None:
        commits.append(1)
        if len(commits) > 1:
            raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        precompute_shard(store, images, work, FakeComputer(), 2, before_commit=fence_after_first)
    assert np.flatnonzero(store.done_mask()).tolist() == [0]  # the second batch never committed
    computer = FakeComputer()
    result = precompute_shard(store, images, work, computer, batch_size=2)
    assert computer.seen == [2] and result.done == 2  # only the batch that was not committed
    assert np.flatnonzero(store.done_mask()).tolist() == [0, 2, 3]
