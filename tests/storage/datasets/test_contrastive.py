"""ContrastiveDataset on a small store: selection and exclusion counts, heatmap channels,
labels, augmentation shared by image and heatmaps, reproducible randomness, spawn workers."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from daug_core.labels import LABEL_COLUMNS
from storage.datasets.augment import AugmentConfig, augment_rng, augment_theta
from storage.datasets.batches import EmptySelectionError
from storage.datasets.contrastive import (
    ContrastiveDataset,
    CorruptItemError,
    EpochShuffle,
    HeatmapTargetError,
    MissingHeatmapsError,
    PackedStrings,
    make_loader,
)
from storage.errors import StoreFormatError
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore
from tests.factories import fake_heatmap_provenance

SIZE, SHARD, N = 16, 4, 12
TARGETS = ("+No Finding", "+Pleural", "+Lung Lesion")
SPLIT = ["train", "validate", "test"]  # item i is in SPLIT[i % 3]
QUARANTINED, OK_NOT_DONE, PENDING = 4, 7, 10  # image not usable, for three reasons
NO_HEATMAP = (3, 6, 11)  # images fine, heatmaps not done
DOT = (7, 9)  # item 0: a single bright pixel (row, column) in the image and heatmap channel 1
nan = float("nan")


def provenance(size: int = SIZE) -> HeatmapProvenance:
    return fake_heatmap_provenance(TARGETS, size)


def heat_value(i: int, k: int) -> float:
    """Channel k of item i is constant k/4 + i/256 (exact in float16)."""
    return k / 4 + i / 256


def labels_of(i: int) -> list[float]:
    y = [float((i + c) % 3 == 0) for c in range(len(LABEL_COLUMNS))]
    y[2] = nan if i % 2 else y[2]  # masked by the ignore policy on odd items
    return y


def build_store(
    root: Path, no_labels: tuple[int, ...] = (), no_report: tuple[int, ...] = ()
) -> Path:
    path = root / "store"
    store = ImageStore.create(path, SIZE, shard_items=SHARD)
    rows = pd.DataFrame(
        {
            "dicom_id": [f"dicom-{i:02d}" for i in range(N)],
            "study_id": [f"5{i // 2:04d}" for i in range(N)],  # two images per study
            "split": [SPLIT[i % 3] for i in range(N)],
        }
    )
    rows[list(LABEL_COLUMNS)] = np.array([labels_of(i) for i in range(N)])
    rows["labels_missing"] = [i in no_labels for i in range(N)]
    store.register(rows)
    images = np.random.default_rng(0).random((N, SIZE, SIZE))
    images[0] = 0.0
    images[0][DOT] = 1.0
    store.write_images(np.arange(N), images)
    for shard in range(N // SHARD):
        idx = [i for i in range(shard * SHARD, (shard + 1) * SHARD) if i != PENDING]
        store.write_part(
            shard,
            pd.DataFrame(
                {
                    "index": idx,
                    "status": ["quarantined" if i == QUARANTINED else "ok" for i in idx],
                    "findings": ["" if i in (2, *no_report) else f"Finding {i}." for i in idx],
                    "impression": ["" if i in no_report else f"Impression {i}." for i in idx],
                }
            ),
        )
    store.mark_done([i for i in range(N) if i not in (QUARANTINED, OK_NOT_DONE, PENDING)])
    store.consolidate()

    heatmaps = HeatmapStore.create(store, provenance())
    data = np.zeros((N, len(TARGETS), SIZE, SIZE))
    for i in range(N):
        for k in range(len(TARGETS)):
            data[i, k] = heat_value(i, k)
    data[0, 1] = 0.0
    data[0, 1][DOT] = 1.0
    ready = [i for i in range(N) if i not in NO_HEATMAP]
    heatmaps.write_heatmaps(ready, data[ready])
    heatmaps.mark_done(ready)
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("contrastive"))


def test_images_without_labels_or_report_text_are_left_out_and_counted(tmp_path):
    """Read as all negative, an unlabeled study would teach and score 14 negatives nobody
    stated; an image without report text has nothing to pair with."""
    path = build_store(tmp_path, no_labels=(9,), no_report=(5,))
    train = ContrastiveDataset(path, "train", heatmap_version="v1")
    assert train.indices.tolist() == [0]
    assert (train.excluded.no_labels, train.excluded.no_report) == (1, 0)
    test = ContrastiveDataset(path, "test", heatmap_version="v1")
    assert test.indices.tolist() == [2, 8]
    assert (test.excluded.no_labels, test.excluded.no_report) == (0, 1)
    assert [test[i]["text"] for i in range(2)] == ["Impression 2.", "Finding 8. Impression 8."]


def stored_images(path: Path, indices) -> np.ndarray:
    return ImageStore.open(path, read_only=True).read_images(indices)


# ---- selection ---------------------------------------------------------------------------
def test_selection_by_split_with_exclusions_counted_by_reason(store_path):
    train = ContrastiveDataset(store_path, "train", heatmap_version="v1")
    # train = 0, 3, 6, 9: 3 and 6 lack heatmaps.
    assert train.indices.tolist() == [0, 9]
    assert train.excluded.as_dict() == {
        "quarantined": 0,
        "not_done_image": 0,
        "no_heatmap": 2,
        "no_labels": 0,
        "no_report": 0,
    }
    validate = ContrastiveDataset(store_path, ["validate"], heatmap_version="v1")
    # validate = 1, 4 (quarantined), 7 (ok, done unset), 10 (pending).
    assert validate.indices.tolist() == [1]
    assert validate.excluded.as_dict() == {
        "quarantined": 1,
        "not_done_image": 2,
        "no_heatmap": 0,
        "no_labels": 0,
        "no_report": 0,
    }
    assert validate.excluded.total == 3
    both = ContrastiveDataset(store_path, ("train", "test"), heatmap_version="v1")
    assert both.indices.tolist() == [0, 2, 5, 8, 9]  # test = 2, 5, 8, 11 (no heatmap)
    assert both.excluded.no_heatmap == 3
    assert [both[i]["split"] for i in range(len(both))] == [
        "train",
        "test",
        "test",
        "test",
        "train",
    ]
    images_only = ContrastiveDataset(store_path, "train")
    assert images_only.indices.tolist() == [0, 3, 6, 9]
    assert images_only.excluded.total == 0
    assert images_only[1]["heatmaps"].shape == (0, SIZE, SIZE)


def test_fail_mode_names_the_items_without_heatmaps(store_path):
    with pytest.raises(MissingHeatmapsError) as error:
        ContrastiveDataset(store_path, "test", heatmap_version="v1", missing_heatmaps="fail")
    message = str(error.value)
    assert "1 finished images" in message and "dicom-11" in message and "'v1'" in message
    # Splits whose items all have heatmaps pass in fail mode.
    ContrastiveDataset(store_path, "validate", heatmap_version="v1", missing_heatmaps="fail")


def test_bad_arguments_are_refused(store_path):
    with pytest.raises(ValueError, match="splits must be"):
        ContrastiveDataset(store_path, "val")
    with pytest.raises(ValueError, match="without a heatmap_version"):
        ContrastiveDataset(store_path, "train", heatmap_targets=("+Pleural",))
    with pytest.raises(StoreFormatError, match="no heatmaps version 'v9'"):
        ContrastiveDataset(store_path, "train", heatmap_version="v9")
    with pytest.raises(HeatmapTargetError, match=r"\['\+Cardiomediastinal'\]"):
        ContrastiveDataset(
            store_path, "train", heatmap_version="v1", heatmap_targets=("+Cardiomediastinal",)
        )


def test_channels_are_selected_and_ordered_by_target_name(store_path):
    ds = ContrastiveDataset(
        store_path, "test", heatmap_version="v1", heatmap_targets=("+Lung Lesion", "+No Finding")
    )
    assert ds.heatmap_targets == ("+Lung Lesion", "+No Finding")
    item = ds[1]  # store index 5
    assert item["index"] == 5
    assert item["heatmaps"].shape == (2, SIZE, SIZE)
    assert item["heatmaps"][0].unique().tolist() == [heat_value(5, 2)]
    assert item["heatmaps"][1].unique().tolist() == [heat_value(5, 0)]
    default = ContrastiveDataset(store_path, "test", heatmap_version="v1")
    assert default.heatmap_targets == TARGETS
    assert [float(default[1]["heatmaps"][k, 0, 0]) for k in range(3)] == [
        heat_value(5, k) for k in range(3)
    ]


def test_item_contents_labels_with_nan_text_and_ids(store_path):
    ds = ContrastiveDataset(store_path, ["train", "test"], heatmap_version="v1")
    item = ds[1]  # store index 2: empty FINDINGS, odd -> no; even -> label 2 kept
    assert (item["index"], item["dicom_id"], item["study_id"]) == (2, "dicom-02", "50001")
    assert item["text"] == "Impression 2."
    assert ds[2]["text"] == "Finding 5. Impression 5."
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(item["image"][0].numpy(), stored_images(ds.store_path, [2])[0])
    np.testing.assert_array_equal(item["labels"].numpy(), np.float32(labels_of(2)))
    odd = ds[2]["labels"]  # store index 5: label 2 masked
    assert odd.dtype == torch.float32 and odd.shape == (14,)
    assert math.isnan(odd[2]) and not torch.isnan(odd[[0, 1, 3]]).any()
    np.testing.assert_array_equal(ds.labels[2], np.float32(labels_of(5)))
    assert "tokens" not in item


def test_batched_reads_equal_single_reads_in_any_order(store_path):
    ds = ContrastiveDataset(
        store_path, ["train", "test"], heatmap_version="v1", augment=AugmentConfig()
    )
    batch = ds.__getitems__([4, 0, 2])
    for got, position in zip(batch, [4, 0, 2], strict=True):
        single = ds[position]
        assert got["index"] == single["index"]
        torch.testing.assert_close(got["image"], single["image"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["heatmaps"], single["heatmaps"], rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        ds[len(ds)]


# ---- augmentation ------------------------------------------------------------------------
def test_augmentation_is_reproducible_per_seed_and_epoch(store_path):
    def item(seed, epoch, position=1):
        ds = ContrastiveDataset(
            store_path, "train", heatmap_version="v1", augment=AugmentConfig(), seed=seed
        )
        ds.set_epoch(epoch)
        return ds[position]

    a, again = item(0, 3), item(0, 3)
    torch.testing.assert_close(a["image"], again["image"], rtol=0, atol=0)
    torch.testing.assert_close(a["heatmaps"], again["heatmaps"], rtol=0, atol=0)
    assert not torch.equal(a["image"], item(0, 4)["image"])  # another epoch
    assert not torch.equal(a["image"], item(1, 3)["image"])  # another seed
    plain = ContrastiveDataset(store_path, "train", heatmap_version="v1")[1]
    assert not torch.equal(a["image"], plain["image"])
    assert float(a["image"].min()) >= 0.0 and float(a["image"].max()) <= 1.0


def test_image_and_heatmaps_move_together_to_the_predicted_pixel(store_path):
    config = AugmentConfig(scale=(0.85, 0.9), degrees=5.0)
    ds = ContrastiveDataset(store_path, "train", heatmap_version="v1", augment=config, seed=7)
    moved = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]  # store index 0: the dot in the image and in heatmap channel 1
        image, dot_channel = item["image"][0], item["heatmaps"][1]
        torch.testing.assert_close(image, dot_channel, rtol=0, atol=0)
        assert not torch.equal(image, item["heatmaps"][0])
        # Where the transform says the dot goes: o = A^-1 (p - c) in the [-1, 1] frame.
        theta = augment_theta(config, augment_rng(7, epoch, 0)).astype(float)
        p = (np.array([DOT[1], DOT[0]]) + 0.5) / SIZE * 2 - 1  # (x, y)
        o = np.linalg.solve(theta[:, :2], p - theta[:, 2])
        expected = (o + 1) * SIZE / 2 - 0.5  # (x, y) in output pixels
        peak = divmod(int(torch.argmax(image)), SIZE)  # (row, column)
        assert abs(peak[1] - expected[0]) <= 1.0 and abs(peak[0] - expected[1]) <= 1.0
        moved += peak != DOT
    assert moved > 0  # crop and rotation really move content


def test_identity_augmentation_returns_the_stored_pixels(store_path):
    identity = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0)
    ds = ContrastiveDataset(store_path, "train", heatmap_version="v1", augment=identity)
    item = ds[1]
    np.testing.assert_allclose(
        item["image"][0].numpy(), stored_images(ds.store_path, [9])[0], atol=1e-5
    )
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.5, 1.2))


# ---- pickling, loaders -------------------------------------------------------------------
def char_codes(text: str) -> torch.Tensor:
    """A picklable stand-in tokenizer: (1, 8) character codes, like open_clip's (1, L)."""
    codes = [ord(c) for c in text[:8]] + [0] * max(0, 8 - len(text))
    return torch.tensor([codes])


def test_pickle_carries_arrays_not_zarr_handles(store_path):
    ds = ContrastiveDataset(store_path, "train", heatmap_version="v1", text_transform=char_codes)
    first = ds[0]
    assert ds._images is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._images is None and copy._heatmaps is None
    torch.testing.assert_close(copy[0]["heatmaps"], first["heatmaps"])
    assert first["tokens"].tolist() == [ord(c) for c in "Finding "]
    strings = PackedStrings(["", "é ü", "abc"])
    assert list(strings) == ["", "é ü", "abc"] and len(strings) == 3


def test_shuffle_order_is_a_function_of_seed_and_epoch(store_path):
    ds = ContrastiveDataset(store_path, ["train", "validate", "test"])
    ds.set_epoch(2)
    fresh = list(EpochShuffle(ds, seed=5))
    assert sorted(fresh) == list(range(len(ds)))
    ds.set_epoch(0)
    list(EpochShuffle(ds, seed=5))  # iterating an earlier epoch changes nothing
    ds.set_epoch(2)
    assert list(EpochShuffle(ds, seed=5)) == fresh
    ds.set_epoch(3)
    assert list(EpochShuffle(ds, seed=5)) != fresh


def test_loading_leaves_the_global_rng_alone(store_path):
    # Concurrent training runs share the process-wide RNG with seeded model builds.
    ds = ContrastiveDataset(store_path, ["train", "validate", "test"])
    before = torch.random.get_rng_state()
    for shuffle in (True, False):
        batches = list(make_loader(ds, batch_size=4, shuffle=shuffle, seed=3))
        assert sum(len(b["dicom_id"]) for b in batches) == len(ds)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_spawn_workers_yield_the_same_batches_as_the_main_process(store_path):
    ds = ContrastiveDataset(
        store_path,
        ["train", "validate", "test"],
        heatmap_version="v1",
        augment=AugmentConfig(),
        seed=3,
        text_transform=char_codes,
    )
    ds.set_epoch(1)
    inline = list(make_loader(ds, batch_size=3, shuffle=True, seed=11, num_workers=0))
    spawned = list(make_loader(ds, batch_size=3, shuffle=True, seed=11, num_workers=2))
    assert len(inline) == len(spawned) == 2
    for a, b in zip(inline, spawned, strict=True):
        assert a["dicom_id"] == b["dicom_id"] and a["text"] == b["text"]
        assert a["image"].shape == (3, 1, SIZE, SIZE) and a["heatmaps"].shape == (3, 3, SIZE, SIZE)
        assert a["tokens"].shape == (3, 8)
        for key in ("image", "heatmaps", "labels", "index", "tokens"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    assert sorted(i for batch in inline for i in batch["index"].tolist()) == [0, 1, 2, 5, 8, 9]


# ---- store problems ----------------------------------------------------------------------
def test_corrupt_items_and_size_mismatch_are_reported(tmp_path):
    path = build_store(tmp_path)
    store = ImageStore.open(path)
    broken = HeatmapStore.create(store, provenance(), version="broken")
    broken.mark_done([0, 9])  # done, but never written: NaN
    ds = ContrastiveDataset(path, "train", heatmap_version="broken")
    with pytest.raises(CorruptItemError, match=r"item 0 \(dicom-00\).*heatmaps"):
        ds[0]
    HeatmapStore.create(store, provenance(size=8), version="small")
    with pytest.raises(StoreFormatError, match="8 px, images 16 px"):
        ContrastiveDataset(path, "train", heatmap_version="small")
    empty = HeatmapStore.create(store, provenance(), version="empty")
    assert not empty.done_mask().any()
    with pytest.raises(EmptySelectionError, match="no_heatmap"):
        ContrastiveDataset(path, "train", heatmap_version="empty")
