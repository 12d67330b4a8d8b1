"""The reader and ingest on both real layouts (MIMIC-CXR DICOM, MIMIC-CXR-JPG + csv.gz)."""

import numpy as np

from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.store.image import ImageStore
from storage.store.ingest_shards import ingest_shard, plan_ingest


def ingest(release, store_path, views=()):
    config = IngestConfig(size=32, shard_items=8, reader=ReaderConfig(views=views))
    reader = ReleaseReader(release, config.reader)
    store = ImageStore.create(store_path, 32, shard_items=8)
    plan = plan_ingest(store, reader, config)
    for work in plan.shards:
        ingest_shard(store, reader, work, plan.image_format)
    store.consolidate()
    return store, plan


def test_dicom_and_jpg_layouts_give_the_same_items_and_images(synthetic_pair, tmp_path):
    dicom_release, jpg_release = synthetic_pair
    assert (jpg_release / "mimic-cxr-2.0.0-metadata.csv.gz").is_file()
    dicom_store, dicom_plan = ingest(dicom_release, tmp_path / "dicom")
    jpg_store, jpg_plan = ingest(jpg_release, tmp_path / "jpg")
    assert (dicom_plan.image_format, jpg_plan.image_format) == ("dicom", "jpg")

    dicom_items, jpg_items = dicom_store.items(), jpg_store.items()
    assert (dicom_items["status"] == "ok").all() and (jpg_items["status"] == "ok").all()
    assert dicom_items["dicom_id"].tolist() == jpg_items["dicom_id"].tolist()
    assert set(dicom_items["view"]) >= {"PA", "LATERAL"}  # every view was kept
    label_columns = [c for c in dicom_items.columns if c.startswith(("y_", "super_"))]
    np.testing.assert_array_equal(
        dicom_items[label_columns].to_numpy(), jpg_items[label_columns].to_numpy()
    )
    assert (dicom_items["findings"] == jpg_items["findings"]).all()
    # Same phantom, two encodings (12/16-bit DICOM with LUTs vs 8-bit JPEG): same picture.
    a = dicom_store.read_images(range(len(dicom_store)))
    b = jpg_store.read_images(range(len(jpg_store)))
    for x, y in zip(a, b, strict=True):
        assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.97


def test_frontal_filter_on_synthetic_release(synthetic_pair, tmp_path):
    store, plan = ingest(synthetic_pair[0], tmp_path / "frontal", views=("PA", "AP", "AP AXIAL"))
    assert set(store.items()["view"]) <= {"PA", "AP", "AP AXIAL"}
    assert plan.counts["filtered_by_view"] > 0
