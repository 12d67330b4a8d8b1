"""verify_store: flipped bytes and NaN in finished items are found, reported and un-finished."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ShardingCodec

from storage.errors import StoreFormatError
from storage.store.heatmaps import HeatmapStore
from storage.store.image import IMAGE_STORE, ImageStore
from storage.store.lease import StoreLease, StoreLockedError
from storage.store.verify import PROBLEM_COLUMNS, has_checksums, verify_store
from tests.factories import PROVENANCE, corrupt_item, fill_images, flip_byte
from tests.factories import STORE_SHARD as SHARD
from tests.factories import STORE_SIZE as SIZE

N, BAD = 10, 1  # items; item BAD is quarantined (never done)


@pytest.fixture(params=["directory", "directory-sharded"])
def store(request, tmp_path: Path) -> ImageStore:
    sharded = request.param.endswith("sharded")
    images = ImageStore.create(tmp_path / "store", SIZE, shard_items=SHARD, sharded=sharded)
    fill_images(images, N, bad=[BAD])
    return images


def sharded(store: ImageStore) -> bool:
    return bool(store.attrs["sharded"])


def shard_items(store: ImageStore) -> int | None:
    return store.shard_items if sharded(store) else None


def test_new_stores_write_checksummed_chunks(store):
    heat = HeatmapStore.create(store, PROVENANCE)
    for array in (store.images, store.done, heat.heatmaps, heat.done):
        assert has_checksums(array)
    codecs = json.loads((Path(store.location) / "images" / "zarr.json").read_text())["codecs"]
    if sharded(store):  # CRC inside the shard, on every inner chunk and on the index
        assert [c["name"] for c in codecs[0]["configuration"]["codecs"]][-1] == "crc32c"
        assert [c["name"] for c in codecs[0]["configuration"]["index_codecs"]][-1] == "crc32c"
    else:
        assert [c["name"] for c in codecs] == ["bytes", "blosc", "crc32c"]


def test_clean_store_reports_nothing_and_records_the_verification(store):
    report = verify_store(store)
    assert report.clean and report.corrupted == 0 and report.cleared == 0
    assert report.checked == N - 1 and report.unchecksummed == ()
    assert list(report.problems.columns) == list(PROBLEM_COLUMNS) and report.problems.empty
    entry = ImageStore.open(store.location).attrs["verifications"][-1]
    assert entry["checked"] == N - 1 and entry["corrupted"] == 0 and entry["at"] == report.at


def test_flipped_byte_in_one_image_chunk_is_reported_and_unfinished(store):
    victim = 6
    before = store.done_mask().copy()
    corrupt_item(Path(store.location) / "images", victim, shard_items(store), trailing=2)
    with pytest.raises(ValueError, match="checksum"):  # what zarr raises on a mismatch
        store.read_image(victim)

    report = verify_store(store)
    assert report.corrupted == 1 and report.cleared == 1 and report.checked == N - 1
    row = report.problems.iloc[0]
    assert (row["index"], row["dicom_id"], row["array"]) == (victim, f"d{victim}", "images")
    assert row["reason"].startswith("checksum_mismatch: ")
    expected = before.copy()
    expected[victim] = False
    again = ImageStore.open(store.location)
    np.testing.assert_array_equal(again.done_mask(), expected)  # the chunk's other flags kept
    assert not again.finished_mask()[victim]  # the next ingest takes it up again
    assert again.finished_mask().sum() == N - 1  # the others (and the quarantined one) stay
    assert verify_store(again).clean


def test_damaged_shard_index_reports_every_item_of_the_shard(tmp_path):
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=SHARD, sharded=True)
    fill_images(store, N, bad=[BAD])
    flip_byte(Path(store.location) / "images" / "c" / "1" / "0" / "0", offset=-10)
    report = verify_store(store)
    assert report.problems["index"].tolist() == [4, 5, 6, 7]
    assert report.problems["reason"].str.startswith("checksum_mismatch").all()
    assert np.flatnonzero(~store.done_mask()).tolist() == [BAD, 4, 5, 6, 7]


def test_flipped_byte_in_a_heatmap_chunk_unfinishes_only_that_heatmap(store):
    heat = HeatmapStore.create(store, PROVENANCE)
    done = np.flatnonzero(store.done_mask())
    heat.write_heatmaps(done, np.random.default_rng(1).random((len(done), 3, 8, 8)))
    heat.mark_done(done)
    victim = 3
    array_dir = Path(store.location) / "heatmaps" / "v1" / "heatmaps"
    corrupt_item(array_dir, victim, shard_items(store), trailing=3)

    report = verify_store(store)
    assert report.checked == 2 * len(done)
    assert report.problems[["index", "array"]].values.tolist() == [[victim, "heatmaps/v1/heatmaps"]]
    assert report.problems["reason"].iloc[0].startswith("checksum_mismatch")
    reopened = ImageStore.open(store.location)
    assert reopened.done_mask()[victim]  # the image is fine
    heat_done = HeatmapStore(reopened).done_mask()
    assert not heat_done[victim] and heat_done.sum() == len(done) - 1


def test_nan_in_a_finished_item_is_reported_as_non_finite(store):
    store.write_images([2], np.full((1, SIZE, SIZE), np.nan))
    report = verify_store(store, repair=False)
    assert report.problems["index"].tolist() == [2]
    assert report.problems["reason"].iloc[0] == f"non_finite: {SIZE * SIZE} of {SIZE * SIZE} values"
    assert report.cleared == 0 and store.done_mask()[2]  # --no-repair changes no flag
    assert store.attrs["verifications"][-1]["repair"] is False


def test_damaged_done_chunk_unfinishes_its_whole_shard(store):
    flip_byte(Path(store.location) / "done" / "c" / "1")
    report = verify_store(store)
    assert report.problems["index"].tolist() == [4, 5, 6, 7]
    assert set(report.problems["array"]) == {"done"}
    again = ImageStore.open(store.location)
    assert np.flatnonzero(~again.done_mask()).tolist() == [BAD, 4, 5, 6, 7]


def test_verify_refuses_while_another_run_holds_the_lock(store):
    with StoreLease.for_store(store, owner="ingest"), pytest.raises(StoreLockedError):
        verify_store(store)
    assert "verifications" not in store.attrs


def test_in_memory_store_verifies_without_a_lock():
    store = ImageStore.in_memory(SIZE, shard_items=SHARD)
    fill_images(store, N, bad=[BAD])
    store.write_images([0], np.full((1, SIZE, SIZE), np.inf))
    report = verify_store(store)
    assert report.problems["index"].tolist() == [0] and not store.done_mask()[0]


def old_store(path: Path) -> ImageStore:
    """A store as written before chunks carried a CRC-32C (the previous codec chain)."""
    group = zarr.create_group(zarr.storage.LocalStore(path))
    group.attrs.update(
        {
            **IMAGE_STORE.attrs(),
            "size": SIZE,
            "shard_items": SHARD,
            "sharded": False,
            "ingests": [],
        }
    )
    blosc = BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle)
    group.create_array(
        "images",
        shape=(0, SIZE, SIZE),
        chunks=(1, SIZE, SIZE),
        dtype="float16",
        fill_value=np.nan,
        compressors=blosc,
    )
    group.create_array("done", shape=(0,), chunks=(SHARD,), dtype="bool", fill_value=False)
    return ImageStore.open(path)


def test_stores_without_checksums_still_work_and_verify(tmp_path):
    store = old_store(tmp_path / "old")
    fill_images(store, N, bad=[BAD])
    HeatmapStore.create(store, PROVENANCE)  # a new version in an old store gets checksums
    assert not has_checksums(store.images) and not has_checksums(store.done)
    store.write_images([5], np.full((1, SIZE, SIZE), np.nan))
    report = verify_store(store)
    assert report.unchecksummed == ("images", "done")
    assert report.problems["index"].tolist() == [5]
    assert not ImageStore.open(tmp_path / "old").done_mask()[5]


def test_has_checksums_looks_inside_shards(tmp_path):
    group = zarr.create_group(zarr.storage.LocalStore(tmp_path / "z"))
    inner = group.create_array(
        "a", shape=(4,), chunks=(1,), shards=(2,), dtype="f4", compressors=Crc32cCodec()
    )
    plain = group.create_array("b", shape=(4,), chunks=(2,), dtype="f4", shards=(4,))
    assert isinstance(inner.metadata.codecs[0], ShardingCodec)
    assert has_checksums(inner) and not has_checksums(plain)


def test_a_truncated_item_table_is_found_and_left_alone(store):
    items = Path(store.location) / "items.csv"
    text = items.read_text()
    cut = text[: len(text) // 2]  # head -c: a copy stopped midway, cut inside a row
    items.write_text(cut)
    report = verify_store(ImageStore.open(store.location))
    assert not report.clean and report.corrupted == 0
    assert any(f"images holds {N} items" in p for p in report.table_problems), report
    assert items.read_text() == cut  # not "repaired" into something else
    assert ImageStore.open(store.location).attrs["verifications"][-1]["table_problems"]
    # Every reader and writer (status, ingest, training) refuses it instead of seeing a smaller
    # store, and an ingest cannot register the missing items again under other indices.
    reopened = ImageStore.open(store.location)
    with pytest.raises(StoreFormatError, match=r"finished without a row.*daug verify"):
        reopened.items()
    with pytest.raises(StoreFormatError, match="does not match the arrays"):
        reopened.register(pd.DataFrame({"dicom_id": ["new"]}))
    assert items.read_text() == cut


def test_a_registration_cut_short_is_not_a_table_problem(store):
    """Arrays grown for items whose rows were never written (a crash inside register): none of
    them is finished, so the table is whole and the next registration carries on."""
    store.images.resize((N + 3, SIZE, SIZE))
    store.done.resize((N + 3,))
    again = ImageStore.open(store.location)
    assert verify_store(again).table_problems == ()
    assert len(again.items()) == N
    registered = again.register(pd.DataFrame({"dicom_id": ["new-a", "new-b"]}))
    assert registered["index"].tolist() == [N, N + 1] and len(again) == N + 2


def test_a_cut_source_hash_is_a_table_problem(store):
    items = Path(store.location) / "items.csv"
    table = pd.read_csv(items, dtype=str, keep_default_na=False)
    table.loc[2, "source_sha256"] = "ab" * 20  # 40 of 64 hex digits
    table.to_csv(items, index=False)
    report = verify_store(ImageStore.open(store.location))
    assert report.table_problems == ("items.csv has 1 malformed source_sha256 value(s)",)
