import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless

from storage.errors import ItemError, QuarantineReason
from storage.release.decode import DicomReader, JpegReader
from tests.factories import UNDECODABLE_SYNTAX, dicom_bytes, gradient, retag

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
                transfer_syntax=UNDECODABLE_SYNTAX,
                pixel_data=b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\x04\x00\x00\x00abcd",
            ),
            QuarantineReason.UNSUPPORTED_TRANSFER_SYNTAX,
        ),
        (dicom_bytes(np.full((1, 1), 7, np.uint16)), QuarantineReason.DEGENERATE_SIZE),
        (dicom_bytes(np.full((1, 30), 7, np.uint16)), QuarantineReason.DEGENERATE_SIZE),
        (dicom_bytes(np.full((20, 30), 7, np.uint16)), QuarantineReason.CONSTANT_IMAGE),
        # squared, these would be one-pixel stripes stored as ok images
        (dicom_bytes(gradient(rows=2, cols=3000)), QuarantineReason.DEGENERATE_SIZE),
        (dicom_bytes(gradient(rows=3000, cols=3)), QuarantineReason.DEGENERATE_SIZE),
    ],
    ids=[
        "not-dicom",
        "truncated",
        "no-pixels",
        "htj2k",
        "1px",
        "1-row",
        "constant",
        "2x3000",
        "3000x3",
    ],
)
def test_bad_dicoms_raise_item_errors_with_reasons(data, reason):
    with pytest.raises(ItemError) as info:
        READER.decode(data, "item-7")
    assert info.value.reason is reason
    assert info.value.item_id == "item-7"
    assert "item-7" in str(info.value)


def rle_bytes(stored: np.ndarray) -> bytes:
    """``stored`` as an RLE Lossless file (pydicom's own encoder)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(stored)))
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        # pydicom decodes each of these with only a warning: wrong pixels stored as ok.
        (retag(dicom_bytes(gradient()), Rows=20), "pixel_data_size_mismatch", "need 1280"),
        (
            retag(dicom_bytes(gradient()), BitsAllocated=8, BitsStored=8, HighBit=7),
            "pixel_data_size_mismatch",
            "2560 bytes",
        ),
        (retag(dicom_bytes(gradient()), Columns=31), "pixel_data_size_mismatch", "need 2480"),
        (retag(dicom_bytes(gradient()), NumberOfFrames=2), "pixel_data_size_mismatch", "5120"),
        (dicom_bytes(gradient())[:-200], "truncated", "ends inside PixelData"),
        (retag(dicom_bytes(gradient()), BitsStored=17), "decode_error", "BitsStored 17"),
        (retag(dicom_bytes(gradient()), HighBit=3), "decode_error", "HighBit 3"),
        # Compressed: the length cannot be checked before decoding; pydicom's warning is.
        (retag(rle_bytes(gradient()), Rows=20), "decode_error", "non-conformant padding"),
        (retag(rle_bytes(gradient()), NumberOfFrames=2), "decode_error", "StopIteration"),
    ],
    ids=[
        "rows-halved",
        "8-bit-header-on-16-bit-data",
        "columns-short",
        "frames-overstated",
        "file-cut-in-pixels",
        "bits-stored-over-allocated",
        "high-bit",
        "rle-rows-halved",
        "rle-frames-overstated",
    ],
)
def test_headers_that_do_not_describe_the_data_are_refused(data, reason, detail):
    with pytest.raises(ItemError) as info:
        READER.decode(data, "item-9")
    assert info.value.reason.value == reason
    assert detail in info.value.detail


def test_pixel_data_padded_to_even_length_is_accepted():
    # 5 x 7 8-bit pixels are 35 bytes; DICOM pads the value to 36 (PS3.5 8.1.1).
    stored = (np.arange(35, dtype=np.uint8) * 7).reshape(5, 7)
    data = retag(
        dicom_bytes(np.zeros((5, 7), np.uint16), pixel_data=stored.tobytes()),
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    assert len(pydicom.dcmread(io.BytesIO(data)).PixelData) == 36
    np.testing.assert_allclose(READER.decode(data, "odd"), stored / stored.max(), atol=1e-6)


def test_rle_decodes_like_the_uncompressed_file():
    np.testing.assert_array_equal(
        READER.decode(rle_bytes(gradient()), "r"), READER.decode(dicom_bytes(gradient()), "u")
    )


@pytest.mark.parametrize(
    "tags",
    [
        {"Rows": 65535, "Columns": 65535},
        {"Rows": 8000, "Columns": 8000, "NumberOfFrames": 2},
    ],
    ids=["65535-squared", "8000-squared-2-frames"],
)
@pytest.mark.parametrize("make", [dicom_bytes, rle_bytes], ids=["native", "rle"])
def test_a_header_declaring_a_huge_image_is_refused_before_decoding(make, tags):
    with pytest.raises(ItemError) as info:
        READER.decode(retag(make(gradient()), **tags), "big")
    assert info.value.reason is QuarantineReason.IMAGE_TOO_LARGE
    assert "over the 128 MiB budget" in info.value.detail


def test_the_budget_is_the_readers():
    data = dicom_bytes(gradient())  # 40 x 32 x 2 bytes = 2560
    assert DicomReader(max_decoded_bytes=2560).decode(data, "x").shape == (40, 32)
    with pytest.raises(ItemError) as info:
        DicomReader(max_decoded_bytes=2559).decode(data, "x")
    assert info.value.reason is QuarantineReason.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "slope", [float("nan"), float("inf"), "1e400"], ids=["nan", "inf", "overflows"]
)
def test_non_finite_values_after_the_modality_lut_are_named(slope):
    with pytest.raises(ItemError) as info:
        READER.decode(dicom_bytes(gradient(), rescale=(slope, 0.0)), "s")
    assert info.value.reason is QuarantineReason.NON_FINITE_PIXELS
    assert f"of {40 * 32} pixel values are NaN or infinite" in info.value.detail


def test_unsupported_syntax_names_the_extra():
    data = dicom_bytes(
        gradient(),
        transfer_syntax=UNDECODABLE_SYNTAX,
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


def _jpeg_declaring(height: int, width: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares ``height`` x ``width`` pixels."""
    data = bytearray(_jpeg(np.tile(np.arange(16, dtype=np.uint8), (16, 1))))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("height", "width", "detail"),
    [
        (12000, 12000, "over the 128 MiB budget"),  # 137 MiB: PIL only warns
        (60000, 60000, "decompression bomb"),  # PIL's DecompressionBombError, at open
    ],
)
def test_a_jpeg_declaring_a_huge_image_is_refused_before_decoding(height, width, detail):
    with pytest.raises(ItemError) as info:
        JpegReader().decode(_jpeg_declaring(height, width), "j")
    assert info.value.reason is QuarantineReason.IMAGE_TOO_LARGE
    assert detail in info.value.detail


def test_the_jpeg_budget_counts_bytes_per_pixel():
    data = _jpeg_declaring(16, 16)  # 256 bytes as 8-bit grey
    assert JpegReader(max_decoded_bytes=256).decode(data, "j").shape == (16, 16)
    with pytest.raises(ItemError) as info:
        JpegReader(max_decoded_bytes=255).decode(data, "j")
    assert info.value.reason is QuarantineReason.IMAGE_TOO_LARGE
