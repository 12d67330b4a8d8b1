"""GroundTruthMasks: the synthetic masks read back, fitted like the store's images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from daug_core.labels import CHEXPERT_LABELS
from storage.errors import StoreFormatError
from storage.geometry import FitMode, fit_to_square
from storage.store.image import ImageStore
from storage.store.ingest_shards import store_fit_mode
from storage.synthetic import SynthConfig, write_synthetic_release
from storage.synthetic.ground_truth import (
    GroundTruthError,
    GroundTruthMasks,
    MissingMasksError,
)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("truth")
    return write_synthetic_release(out, SynthConfig(studies=4, size=48), seed=2)


def _raw(summary, dicom_id: str) -> np.ndarray:
    array = zarr.open_group(summary.masks_zarr, mode="r")[dicom_id]
    return np.asarray(array[...])


def _with_lesion(summary) -> str:
    group = zarr.open_group(summary.masks_zarr, mode="r")
    return next(name for name, array in group.arrays() if np.asarray(array[...]).any())


def test_native_masks_equal_the_written_ones(release):
    truth = GroundTruthMasks.open(release.ground_truth_dir)
    dicom_id = _with_lesion(release)
    raw = _raw(release, dicom_id)
    native = truth.native(dicom_id)
    assert native.dtype == bool and native.shape == raw.shape
    np.testing.assert_array_equal(native, raw > 0)
    assert dicom_id in truth and "nope" not in truth


@pytest.mark.parametrize("fit", list(FitMode))
def test_fitted_masks_follow_fit_to_square_channel_by_channel(release, fit):
    truth = GroundTruthMasks.open(release.ground_truth_dir)
    dicom_id = _with_lesion(release)
    raw = _raw(release, dicom_id)
    fitted = truth.masks(dicom_id, 32, fit.value)
    assert fitted.shape == (len(CHEXPERT_LABELS), 32, 32) and fitted.dtype == bool
    for channel in range(len(CHEXPERT_LABELS)):
        expected = fit_to_square(raw[channel].astype(np.float32), 32, fit, nearest=True) > 0.5
        np.testing.assert_array_equal(fitted[channel], expected)
    assert fitted.any() and not fitted[CHEXPERT_LABELS.index("No Finding")].any()


def test_a_missing_dicom_id_names_it(release):
    truth = GroundTruthMasks.open(release.ground_truth_dir)
    with pytest.raises(MissingMasksError, match="no-such-image") as caught:
        truth.masks("no-such-image", 32)
    assert isinstance(caught.value, ValueError) and caught.value.dicom_id == "no-such-image"


def test_a_truth_dir_without_masks_names_the_path(tmp_path, release):
    copy = tmp_path / "ground_truth"
    shutil.copytree(release.ground_truth_dir, copy)
    shutil.rmtree(copy / "masks.zarr")
    with pytest.raises(GroundTruthError, match=r"holds no masks\.zarr") as caught:
        GroundTruthMasks.open(copy)
    assert str(copy) in str(caught.value)
    with pytest.raises(GroundTruthError):
        GroundTruthMasks.open(tmp_path / "nowhere")


def test_store_fit_mode_follows_the_ingests(tmp_path):
    store = ImageStore.create(tmp_path / "store", 16, shard_items=4)
    assert store_fit_mode(store) is FitMode.PAD  # nothing recorded yet
    store.record_ingest({"fit": "crop"})
    assert store_fit_mode(store) is FitMode.CROP
    store.record_ingest({"fit": "pad"})
    with pytest.raises(StoreFormatError, match="several fit modes"):
        store_fit_mode(store)
