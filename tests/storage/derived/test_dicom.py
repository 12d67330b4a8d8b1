"""The heatmap Secondary Capture: readable by pydicom and highdicom, in the source's Study and a
new Series, referencing the source, pixels equal to the overlay, and nothing of the source
header beyond the Patient and General Study attributes it must carry."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from storage.derived.dicom import write_heatmap_capture
from storage.synthetic.dicom_writer import (
    ImageUids,
    build_dataset,
    draw_encoding,
    write_dicom,
)
from storage.synthetic.ids import draw_uid
from tests.factories import synthetic_study

TARGETS = ("Pleural Effusion", "Cardiomegaly", "+No Finding")
# What the derived object may carry over from the source: the Patient and General Study
# attributes the standard requires, their character set, and the orientation it keeps.
COPIED = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SpecificCharacterSet",
    "PatientOrientation",
}
# What the writer sets from the overlay and its arguments; a value may equal the source's.
OWN = {"InstanceNumber", "SeriesNumber", "PixelRepresentation", "Rows", "Columns"}
# Values in the source header that must appear nowhere in the derived file.
LEAKS = (
    "SYNTHETIC GENERAL HOSPITAL",
    "Nightshift^Oscar",
    "ACME-PRIVATE-PAYLOAD",
    "ACME CORP 1.0",
    "Station-7-Secret",
    "CHEST (PA AND LAT)",
    "CXR2V",
    "postero-anterior",
)


@pytest.fixture
def source(tmp_path: Path) -> Dataset:
    """A synthetic PA radiograph with what real headers carry beyond the copied modules:
    institution, operator, station, a private creator block; read back from its file."""
    rng = np.random.default_rng(5)
    study = synthetic_study(rng)
    encoding = draw_encoding(rng, 0.5, 0.5, 0.5)
    uids = ImageUids(sop_instance=draw_uid(rng), series=draw_uid(rng))
    pixels = rng.random((32, 32))
    ds = build_dataset(pixels, encoding, study, "PA", "Erect", 1, uids)
    ds.OperatorsName = "Nightshift^Oscar"
    ds.StationName = "Station-7-Secret"
    block = ds.private_block(0x0011, "ACME CORP 1.0", create=True)
    block.add_new(0x01, "LO", "ACME-PRIVATE-PAYLOAD")
    block.add_new(0x02, "DS", "3.25")
    path = tmp_path / "source.dcm"
    write_dicom(path, ds)
    return pydicom.dcmread(path)


def _overlay(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)


def _write_all(source: Dataset | None, out: Path) -> tuple[str, list[Path]]:
    series_uid = hd.UID()
    paths = []
    for i, target in enumerate(TARGETS):
        path = out / f"heatmap-{i}.dcm"
        write_heatmap_capture(
            overlay=_overlay(i),
            target=target,
            source=source,
            series_uid=series_uid,
            instance_number=i + 1,
            out=path,
            description="DAug heatmaps",
        )
        paths.append(path)
    return series_uid, paths


def test_the_captures_join_the_study_in_one_new_series_and_reference_the_source(source, tmp_path):
    series_uid, paths = _write_all(source, tmp_path / "out")
    read = [pydicom.dcmread(p) for p in paths]
    uids = {ds.SOPInstanceUID for ds in read}
    assert len(uids) == len(TARGETS) and source.SOPInstanceUID not in uids
    for i, (ds, target) in enumerate(zip(read, TARGETS, strict=True)):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID == series_uid != source.SeriesInstanceUID
        assert ds.InstanceNumber == i + 1
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription == "DAug heatmaps"
        assert ds.ImageComments == f"DAug heatmap: {target}"
        (reference,) = ds.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        assert ds.PhotometricInterpretation == "RGB"
        np.testing.assert_array_equal(ds.pixel_array, _overlay(i))
        for keyword in COPIED:
            assert ds[keyword].value == source[keyword].value, keyword
        image = hd.imread(paths[i])
        assert image.SOPClassUID == SecondaryCaptureImageStorage
        np.testing.assert_array_equal(image.get_frame(1), _overlay(i))
    assert not [p for p in (tmp_path / "out").iterdir() if p.suffix != ".dcm"]  # no tmp left


def test_nothing_of_the_source_header_outside_the_copied_modules(source, tmp_path):
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, source)
    assert all(text.encode() in buffer.getvalue() for text in LEAKS)  # the check can fail
    _, paths = _write_all(source, tmp_path / "out")
    for path in paths:
        ds = pydicom.dcmread(path)
        assert not [e.tag for e in ds if e.tag.is_private]
        for element in source:
            if element.tag in ds and element.keyword not in COPIED | OWN:
                assert ds[element.tag].value != element.value, element.keyword
        for keyword in ("InstitutionName", "OperatorsName", "StationName", "StudyDescription"):
            assert keyword not in ds
        raw = path.read_bytes()
        assert not [text for text in LEAKS if text.encode() in raw]


def test_a_non_dicom_input_starts_a_new_study_with_an_empty_identity(tmp_path):
    series_uid, paths = _write_all(None, tmp_path / "out")
    read = [pydicom.dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in read}) == len(TARGETS)
    for i, ds in enumerate(read):
        assert ds.SeriesInstanceUID == series_uid
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
            assert keyword in ds and not ds[keyword].value, keyword
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
        np.testing.assert_array_equal(ds.pixel_array, _overlay(i))


def test_a_wrong_overlay_or_a_long_description_is_refused(source, tmp_path):
    arguments = dict(target="Edema", source=source, series_uid=hd.UID(), instance_number=1)
    with pytest.raises(ValueError, match="uint8"):
        write_heatmap_capture(
            overlay=np.zeros((8, 8), np.uint8),
            out=tmp_path / "a.dcm",
            description="x",
            **arguments,
        )
    with pytest.raises(ValueError, match="64"):
        write_heatmap_capture(
            overlay=_overlay(0), out=tmp_path / "b.dcm", description="x" * 65, **arguments
        )
    assert not (tmp_path / "a.dcm").exists() and not (tmp_path / "b.dcm").exists()


def test_a_name_in_another_character_set_is_copied_readably_and_no_orientation_stays_empty(
    source, tmp_path
):
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "Müller^Jörg"
    del source.PatientOrientation
    path = tmp_path / "capture.dcm"
    write_heatmap_capture(
        overlay=_overlay(0),
        target="Edema",
        source=source,
        series_uid=hd.UID(),
        instance_number=1,
        out=path,
        description="DAug heatmaps",
    )
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jörg"
    assert "PatientOrientation" in ds and not ds.PatientOrientation
