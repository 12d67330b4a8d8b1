"""One conformance suite for the image store, run against every backend."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from storage.errors import StoreFormatError
from storage.store.image import ImageStore
from storage.store.items import ItemStatus
from storage.store.status import last_evaluation, record_evaluation

SIZE = 16


def rows(*ids: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dicom_id": list(ids),
            "study_id": "50000001",
            "subject_id": "10000001",
            "split": "train",
            "view": "PA",
            "source_path": [f"files/p10/p10000001/s50000001/{i}.dcm" for i in ids],
            "report_path": "files/p10/p10000001/s50000001.txt",
        }
    )


@pytest.fixture(params=["directory", "directory-sharded", "memory"])
def store(request, tmp_path: Path) -> ImageStore:
    if request.param == "memory":
        return ImageStore.in_memory(SIZE, shard_items=4)
    return ImageStore.create(
        tmp_path / "store", SIZE, shard_items=4, sharded=request.param.endswith("sharded")
    )


def test_new_store_is_empty(store):
    assert len(store) == 0
    assert store.items().empty and store.quarantine().empty
    assert store.done_mask().shape == (0,)
    assert store.attrs["size"] == SIZE and store.attrs["format"] == "daug-image-store"


def test_register_appends_and_keeps_indices_stable(store):
    first = store.register(rows("a", "b", "c"))
    assert first["index"].tolist() == [0, 1, 2]
    second = store.register(rows("c", "d", "a", "e"))
    assert second["index"].tolist() == [2, 3, 0, 4]
    assert store.items()["dicom_id"].tolist() == ["a", "b", "c", "d", "e"]
    assert set(store.items()["status"]) == {ItemStatus.PENDING.value}
    assert len(store) == 5 and store.done_mask().tolist() == [False] * 5


def test_unwritten_images_read_as_nan_and_written_ones_round_trip(store):
    store.register(rows("a", "b", "c", "d", "e", "f"))
    images = np.random.default_rng(0).random((3, SIZE, SIZE), dtype=np.float32)
    store.write_images([5, 1, 2], images)  # unordered, two runs
    np.testing.assert_allclose(store.read_images([5, 1, 2]), images, atol=1e-3)  # float16
    assert np.isnan(store.read_image(0)).all() and np.isnan(store.read_image(3)).all()


def test_done_is_separate_from_data(store):
    store.register(rows("a", "b", "c", "d", "e"))
    store.write_images([0, 4], np.zeros((2, SIZE, SIZE)))
    assert not store.done_mask().any()
    store.mark_done([4])
    assert store.done_mask().tolist() == [False, False, False, False, True]


def test_parts_consolidate_into_items_and_quarantine(store):
    store.register(rows("a", "b", "c", "d", "e"))
    store.add_rejects(
        pd.DataFrame(
            {
                "dicom_id": ["z"],
                "source_path": ["files/z.dcm"],
                "reason": ["duplicate_dicom_id: seen"],
            }
        )
    )
    store.write_part(
        0,
        pd.DataFrame(
            [
                {
                    "index": 0,
                    "status": "ok",
                    "source_sha256": "ab",
                    "findings": "F",
                    "impression": "I",
                    "report_missing": False,
                    "report_source": "sections",
                },
                {"index": 1, "status": "quarantined", "reason": "truncated: short"},
            ]
        ),
    )
    store.write_part(1, pd.DataFrame([{"index": 4, "status": "ok", "report_missing": True}]))
    store.mark_done([0, 4])
    assert store.consolidate() == 2
    assert store.consolidate() == 0  # parts are gone, nothing applied twice
    items = store.items().set_index("dicom_id")
    assert items.loc["a", "status"] == "ok" and items.loc["a", "findings"] == "F"
    assert items.loc["e", "report_missing"] and not items.loc["a", "report_missing"]
    assert items.loc["c", "status"] == "pending"
    quarantine = store.quarantine()
    assert quarantine["dicom_id"].tolist() == ["z", "b"]
    assert store.finished_mask().tolist() == [True, True, False, False, True]
    assert store.finished_mask(retry_quarantined=True).tolist() == [True, False, False, False, True]


def test_part_must_stay_inside_its_shard(store):
    store.register(rows("a", "b", "c", "d", "e"))
    with pytest.raises(ValueError, match="other shards"):
        store.write_part(0, pd.DataFrame([{"index": 4, "status": "ok"}]))


def test_ok_without_done_is_not_finished(store):
    # A crash between the part table and the done flag: the item must be redone.
    store.register(rows("a"))
    store.write_part(0, pd.DataFrame([{"index": 0, "status": "ok"}]))
    store.consolidate()
    assert store.finished_mask().tolist() == [False]


def test_provenance_is_appended(store):
    store.record_ingest({"release": "r1"})
    store.record_ingest({"release": "r2"})
    assert [e["release"] for e in store.attrs["ingests"]] == ["r1", "r2"]


def test_wrong_image_shape_is_refused(store):
    store.register(rows("a"))
    with pytest.raises(ValueError, match=f"{SIZE}, {SIZE}"):
        store.write_images([0], np.zeros((1, SIZE + 1, SIZE + 1)))


# ---- on-disk specifics: reopening, plain zarr/pandas readability, refusal ----------------
def test_reopen_and_read_with_plain_zarr_and_pandas(tmp_path):
    store = ImageStore.create(tmp_path / "s", SIZE, shard_items=4)
    store.register(rows("a", "b"))
    store.write_images([1], np.full((1, SIZE, SIZE), 0.25))
    store.mark_done([1])
    again = ImageStore.open(tmp_path / "s", read_only=True)
    assert again.done_mask().tolist() == [False, True]
    group = zarr.open_group(tmp_path / "s", mode="r")
    assert group["images"].shape == (2, SIZE, SIZE) and group["images"].dtype == np.float16
    assert group["images"].chunks == (1, SIZE, SIZE)
    assert float(group["images"][1].mean()) == 0.25
    table = pd.read_csv(tmp_path / "s" / "items.csv")
    assert table["dicom_id"].tolist() == ["a", "b"] and table["index"].tolist() == [0, 1]


def test_attributes_are_strict_json_and_undefined_metrics_read_back_as_nan(tmp_path):
    store = ImageStore.create(tmp_path / "s", SIZE)
    store.record_ingest({"release": "r", "seconds": float("inf")})
    record_evaluation(store, tmp_path / "m.json", {"headline": {"auc": np.nan, "map": 0.5}})

    def refuse(word: str) -> None:
        raise AssertionError(f"zarr.json holds {word}, which is not JSON")

    attributes = json.loads((tmp_path / "s" / "zarr.json").read_text(), parse_constant=refuse)
    assert attributes["attributes"]["ingests"][0]["seconds"] is None
    assert attributes["attributes"]["last_evaluation"]["headline"] == {"auc": None, "map": 0.5}
    evaluation = last_evaluation(ImageStore.open(tmp_path / "s"))
    assert evaluation is not None and evaluation["headline"]["map"] == 0.5
    assert np.isnan(evaluation["headline"]["auc"])


def test_open_or_create_refuses_other_size(tmp_path):
    ImageStore.create(tmp_path / "s", SIZE)
    with pytest.raises(StoreFormatError, match="16 px"):
        ImageStore.open_or_create(tmp_path / "s", 32)
    with pytest.raises(StoreFormatError, match="already holds"):
        ImageStore.create(tmp_path / "s", SIZE)
    with pytest.raises(StoreFormatError, match="not an image store"):
        ImageStore.open(tmp_path / "elsewhere")


def test_atomic_table_write_leaves_no_temp_files(tmp_path):
    store = ImageStore.create(tmp_path / "s", SIZE)
    store.register(rows("a"))
    store.register(rows("b"))
    leftovers = [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_creation_cut_short_is_created_again(tmp_path):
    """What a creation stopped between its first and last write leaves (group metadata without
    the store's attributes, an empty images array, no done array) is no store, and the next
    ingest creates one over it instead of failing on every run."""
    root = tmp_path / "s"
    partial = zarr.open_group(root, mode="a")
    partial.create_array("images", shape=(0, SIZE, SIZE), chunks=(1, SIZE, SIZE), dtype="float16")
    with pytest.raises(StoreFormatError, match="not a daug-image-store"):
        ImageStore.open(root)
    store = ImageStore.open_or_create(root, SIZE, shard_items=4)
    store.register(rows("a"))
    assert ImageStore.open(root).items()["dicom_id"].tolist() == ["a"]
    assert store.attrs["format"] == "daug-image-store"


def test_store_data_without_its_zarr_json_is_refused_not_written_over(tmp_path):
    root = tmp_path / "s"
    store = ImageStore.create(root, SIZE, shard_items=4)
    store.register(rows("a", "b"))
    store.write_images([0], np.full((1, SIZE, SIZE), 0.5))
    (root / "zarr.json").unlink()
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(StoreFormatError, match=r"no finished zarr.json.*daug verify"):
        ImageStore.open_or_create(root, SIZE, shard_items=4)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
