from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from storage.synthetic.dicom_writer import (
    CR_IMAGE_STORAGE,
    DX_IMAGE_STORAGE,
    DicomEncoding,
    ImageUids,
    Photometric,
    build_dataset,
    draw_encoding,
    write_dicom,
)
from storage.synthetic.ids import draw_uid
from storage.synthetic.render import render_image, sample_case
from tests.factories import synthetic_study
from tests.storage.synthetic.dicom_decoding import decode_for_display


def _phantom() -> np.ndarray:
    case = sample_case(2, "PA", 64)
    return render_image(case.anatomy, case.pose, case.findings.only(()), 0.01).pixels


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("rescale", [None, (2.0, -1024.0)])
@pytest.mark.parametrize("window", [False, True])
def test_round_trip_recovers_the_phantom(
    tmp_path: Path,
    photometric: Photometric,
    bits: int,
    rescale: tuple[float, float] | None,
    window: bool,
) -> None:
    pixels = _phantom()
    top = 2**bits - 1
    low, high = 40, int(top * 0.8)
    slope, intercept = rescale or (1.0, 0.0)
    encoding = DicomEncoding(
        sop_class=CR_IMAGE_STORAGE,
        photometric=photometric,
        bits_stored=bits,
        low=low,
        high=high,
        rescale=rescale,
        window=(slope * (low + high) / 2 + intercept, slope * (high - low) + 1.0)
        if window
        else None,
    )
    rng = np.random.default_rng(0)
    uids = ImageUids(sop_instance=draw_uid(rng), series=draw_uid(rng))
    ds = build_dataset(pixels, encoding, synthetic_study(rng), "PA", "Erect", 1, uids)
    path = tmp_path / "x.dcm"
    write_dicom(path, ds)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SOPClassUID == CR_IMAGE_STORAGE
    assert back.BitsAllocated == 16 and back.BitsStored == bits
    assert back.pixel_array.max() <= top
    decoded = decode_for_display(back)
    # equal up to quantisation (min-max without a window: up to an affine map)
    corr = np.corrcoef(decoded.ravel(), pixels.ravel())[0, 1]
    assert corr > 0.999
    if window:
        # the window spans exactly the stored range: decoding gives the phantom itself
        assert np.abs(decoded - pixels).max() < 0.005


def test_headers_are_valid_and_carry_fake_identity() -> None:
    rng = np.random.default_rng(1)
    encoding = draw_encoding(rng, monochrome1_rate=0.0, window_rate=1.0, rescale_rate=1.0)
    uids = ImageUids(sop_instance=draw_uid(rng), series=draw_uid(rng))
    ds = build_dataset(_phantom(), encoding, synthetic_study(rng), "LATERAL", "Erect", 2, uids)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert str(back.PatientName) == "Doe^Jane"
    assert back.PatientID == "123456789" and back.PatientBirthDate == "20900101"
    assert back.StudyTime == "084712.546" and back.StudyDate == "21800506"
    assert back.ViewPosition == "LATERAL"
    assert back.ViewCodeSequence[0].CodeMeaning == "lateral"
    assert back.PatientOrientationCodeSequence[0].CodeMeaning == "Erect"
    assert back.Rows != back.Columns
    assert "WindowCenter" in back and "RescaleSlope" in back


def test_encoding_draws_cover_all_variations() -> None:
    rng = np.random.default_rng(2)
    draws = [draw_encoding(rng, 0.15, 0.5, 0.4) for _ in range(200)]
    assert {d.photometric for d in draws} == {"MONOCHROME1", "MONOCHROME2"}
    assert {d.bits_stored for d in draws} == {12, 16}
    assert {d.sop_class for d in draws} == {CR_IMAGE_STORAGE, DX_IMAGE_STORAGE}
    assert any(d.window for d in draws) and any(d.window is None for d in draws)
    assert any(d.rescale for d in draws) and any(d.rescale is None for d in draws)
    assert all(0 <= d.low < d.high < 2**d.bits_stored for d in draws)
