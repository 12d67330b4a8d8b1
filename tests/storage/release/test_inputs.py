"""New images outside a release (daug explain's inputs): the store's reader and geometry, and
what the header says is not a chest radiograph refused with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from storage.geometry import FitMode, fit_to_square
from storage.release.decode import DicomReader
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.inputs import InputError, find_inputs, read_input
from tests.factories import dicom_bytes, gradient, retag

CONFIG = IngestConfig(size=16, fit=FitMode.PAD)


def test_a_dicom_is_read_as_ingest_stores_it(tmp_path):
    data = retag(dicom_bytes(gradient(), photometric="MONOCHROME1"), ViewPosition="PA")
    path = tmp_path / "a.dcm"
    path.write_bytes(data)
    read = read_input(path, CONFIG)
    expected = fit_to_square(DicomReader().decode(data, "a"), 16, FitMode.PAD)
    np.testing.assert_array_equal(read.pixels, expected)
    assert read.dataset is not None and read.dataset.Modality == "CR"
    assert "PixelData" not in read.dataset  # the header only is kept
    assert len(read.sha256) == 64


def test_a_png_is_read_by_its_bit_depth(tmp_path):
    pixels = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path = tmp_path / "b.png"
    path.write_bytes(buffer.getvalue())
    read = read_input(path, CONFIG)
    np.testing.assert_allclose(read.pixels, fit_to_square(pixels / 255.0, 16), atol=1e-6)
    assert read.dataset is None


@pytest.mark.parametrize(
    ("name", "make", "reason", "detail"),
    [
        ("ct.dcm", lambda: retag(dicom_bytes(gradient()), Modality="CT"), "not_a_radiograph", "CT"),
        (
            "cine.dcm",
            lambda: retag(dicom_bytes(gradient()), NumberOfFrames=3),
            "multi_frame",
            "3 frames",
        ),
        (
            "lateral.dcm",
            lambda: retag(dicom_bytes(gradient()), ViewPosition="LL"),
            "view_not_kept",
            "ViewPosition LL",
        ),
        (
            "knee.dcm",
            lambda: retag(dicom_bytes(gradient()), BodyPartExamined="KNEE"),
            "not_a_chest",
            "KNEE",
        ),
        ("notes.txt", lambda: b"hello", "unknown_format", "neither DICOM"),
        ("empty.dcm", lambda: b"\0" * 200, "not_dicom", None),
        ("fake.png", lambda: b"not a png", "not_an_image", None),
    ],
)
def test_what_is_not_a_chest_radiograph_is_refused_with_its_reason(
    tmp_path, name, make, reason, detail
):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(InputError, match=detail) as caught:
        read_input(path, CONFIG)
    assert caught.value.reason == reason and caught.value.path == str(path)


def test_a_store_keeping_every_view_takes_a_lateral(tmp_path):
    path = tmp_path / "lateral.dcm"
    path.write_bytes(retag(dicom_bytes(gradient()), ViewPosition="LL"))
    every_view = IngestConfig(size=16, reader=ReaderConfig(views=()))
    assert read_input(path, every_view).pixels.shape == (16, 16)


def test_the_decode_budget_is_the_stores(tmp_path):
    path = tmp_path / "big.dcm"
    path.write_bytes(dicom_bytes(gradient(400, 400)))
    tight = IngestConfig(size=16, reader=ReaderConfig(max_decoded_mb=0.1))
    with pytest.raises(InputError) as caught:
        read_input(path, tight)
    assert caught.value.reason == "image_too_large"


def test_folders_are_walked_sorted_without_hidden_files_and_each_file_once(tmp_path):
    (tmp_path / "inbox" / "b").mkdir(parents=True)
    for name in ("inbox/z.dcm", "inbox/b/a.png", "inbox/.DS_Store", "single.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = find_inputs([tmp_path / "single.jpg", tmp_path / "inbox", tmp_path / "inbox/z.dcm"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "single.jpg",
        "inbox/b/a.png",
        "inbox/z.dcm",
    ]
