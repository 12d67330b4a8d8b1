import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from storage.decode import DicomReader, JpegReader
from storage.errors import ItemError, QuarantineReason
from tests.factories import dicom_bytes, gradient

READER = DicomReader()


def pydicom_reference(data: bytes) -> np.ndarray:
    """The grey-scale pipeline spelled out with pydicom's own LUT functions."""
    ds = pydicom.dcmread(io.BytesIO(data))
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    unit = (values - values.min()) / (values.max() - values.min())
    return 1.0 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"bits_stored": 16},
        {"photometric": "MONOCHROME1"},
        {"window": (1500.0, 1000.0)},
        {"window": (1500.0, 1000.0), "photometric": "MONOCHROME1", "bits_stored": 16},
        {"rescale": (2.0, -1024.0)},
        {"rescale": (0.5, 10.0), "window": (800.0, 1200.0)},
    ],
)
def test_decode_matches_pydicom_lut_functions(tags):
    data = dicom_bytes(gradient(), **tags)
    ours = READER.decode(data, "x")
    assert ours.dtype == np.float32 and ours.shape == (40, 32)
    np.testing.assert_allclose(ours, pydicom_reference(data), atol=1e-6)
    assert ours.min() == 0.0 and ours.max() == 1.0


def test_monochrome1_is_inverted_so_dense_is_bright():
    stored = gradient()
    mono2 = READER.decode(dicom_bytes(stored), "a")
    mono1 = READER.decode(dicom_bytes(stored.max() - stored, photometric="MONOCHROME1"), "b")
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)


def test_window_clips_in_closed_form():
    # Linear window (PS3.3 C.11.2.1.2.1) with c=1000.5, w=1001: values <= 500 map to the
    # bottom, >= 1500 to the top, linear between; after min-max that is (x - 500) / 1000.
    stored = np.arange(0, 2000, 2, dtype=np.uint16).reshape(25, 40)
    ours = READER.decode(dicom_bytes(stored, window=(1000.5, 1001.0)), "w")
    expected = np.clip((stored.astype(np.float64) - 500.0) / 1000.0, 0.0, 1.0)
    np.testing.assert_allclose(ours, expected, atol=2e-3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"definitely not a dicom file" * 10, QuarantineReason.NOT_DICOM),
        (dicom_bytes(gradient())[:-200], QuarantineReason.TRUNCATED),
        (dicom_bytes(gradient(), with_pixels=False), QuarantineReason.NO_PIXEL_DATA),
        (
            dicom_bytes(
                gradient(),
                transfer_syntax="1.2.840.10008.1.2.4.80",  # JPEG-LS: no plugin installed here
                pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x04\x00\x00\x00abcd",
            ),
            QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX,
        ),
        (dicom_bytes(np.full((1, 1), 7, np.uint16)), QuarantineReason.DEGENERATE_SIZE),
        (dicom_bytes(np.full((1, 30), 7, np.uint16)), QuarantineReason.DEGENERATE_SIZE),
        (dicom_bytes(np.full((20, 30), 7, np.uint16)), QuarantineReason.CONSTANT_IMAGE),
    ],
    ids=["not-dicom", "truncated", "no-pixels", "jpeg-ls", "1px", "1-row", "constant"],
)
def test_bad_dicoms_raise_item_errors_with_reasons(data, reason):
    with pytest.raises(ItemError) as info:
        READER.decode(data, "item-7")
    assert info.value.reason is reason
    assert info.value.item_id == "item-7"
    assert "item-7" in str(info.value)


def test_unsupported_syntax_names_the_extra():
    data = dicom_bytes(
        gradient(),
        transfer_syntax="1.2.840.10008.1.2.4.80",
        pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x04\x00\x00\x00abcd",
    )
    with pytest.raises(ItemError, match=r"daug\[dicom-codecs\]"):
        READER.decode(data, "x")


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_jpeg_scaled_by_bit_depth_not_min_max():
    array = np.tile(np.linspace(40, 200, 32).astype(np.uint8), (24, 1))
    decoded = JpegReader().decode(_jpeg(array), "j")
    assert decoded.shape == (24, 32)
    np.testing.assert_allclose(decoded, array / 255.0, atol=4 / 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 100, QuarantineReason.NOT_AN_IMAGE),
        (_jpeg(np.tile(np.arange(64, dtype=np.uint8), (64, 1)))[:300], QuarantineReason.TRUNCATED),
        (_jpeg(np.full((16, 16), 90, np.uint8)), QuarantineReason.CONSTANT_IMAGE),
    ],
)
def test_bad_jpegs(data, reason):
    with pytest.raises(ItemError) as info:
        JpegReader().decode(data, "j")
    assert info.value.reason is reason
