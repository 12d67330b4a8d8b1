"""A heatmap over its source image as a DICOM Secondary Capture (highdicom), one per target.

Secondary Capture, not Parametric Map: every DICOM viewer (OHIF, Weasis, a PACS workstation)
shows an RGB Secondary Capture as an image, so the overlay a person sees in the viewer is the
PNG ``daug explain`` writes, pixel for pixel. A Parametric Map would carry the float heatmap
itself, but it needs the source's patient geometry (plane position and orientation, which
CR/DX images lack) and most viewers do not render it as an overlay, or at all.

The object joins the source's Study in a new Series (one per input: every target of an input
shares it), gets a new SOP Instance UID, ``ImageType`` ``DERIVED\\SECONDARY`` and references
the source SOP Instance (Source Image Sequence, and the Common Instance Reference module for
the source's Series). From the source header it takes only what the Patient and General Study
modules require (PS3.3 C.7.1.1, C.7.2.1): patient name, ID, birth date and sex; study UID,
date, time, ID, accession number and referring physician; the character set those are written
in; and the patient orientation, which the derived image keeps (decoding neither flips nor
rotates). Nothing else: no institution, operator, device, private tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from storage.store.tables import replace_atomically

MANUFACTURER = "DAug"
MODEL_NAME = "daug explain"
# Derived series sort after the acquired ones in a viewer's series list.
SERIES_NUMBER = 9000
_LO_LENGTH = 64  # SeriesDescription is LO: at most 64 characters
_BIPED = {value.value for value in hd.PatientOrientationValuesBiped}


def write_heatmap_capture(
    *,
    overlay: np.ndarray,
    target: str,
    source: pydicom.Dataset | None,
    series_uid: str,
    instance_number: int,
    out: Path,
    description: str,
    series_number: int = SERIES_NUMBER,
) -> pydicom.Dataset:
    """The ``(H, W, 3)`` uint8 ``overlay`` of ``target`` as a Secondary Capture at ``out``
    (atomically); returns the written data set.

    ``description`` is the Series Description, so it must be the same for every target that
    shares ``series_uid`` (a series-level attribute); the target is named per instance in
    Image Comments and Derivation Description (``DAug heatmap: <target>``).

    ``source`` is the input's DICOM header. For an input that is not DICOM (JPG/PNG,
    ``source=None``) the object starts a new Study with an empty patient identity (the Type 2
    patient and study attributes present but empty) and references nothing.
    """
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(
            f"{out}: the overlay of {target!r} must be (H, W, 3) uint8, "
            f"got {overlay.shape} {overlay.dtype}"
        )
    if len(description) > _LO_LENGTH:
        raise ValueError(
            f"{out}: the series description is {len(description)} characters, "
            f"DICOM allows {_LO_LENGTH}: {description!r}"
        )
    label = f"DAug heatmap: {target}"
    identity = _Identity.of(source)
    capture = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=identity.study_uid,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        series_description=description,
        # Replaced below: the source's orientation, or empty where it is unknown.
        patient_orientation=("L", "F"),
        patient_name=identity.patient_name,
        patient_id=identity.patient_id,
        patient_birth_date=identity.birth_date,
        patient_sex=identity.sex,
        study_id=identity.study_id,
        study_date=identity.study_date,
        study_time=identity.study_time,
        accession_number=identity.accession,
        referring_physician_name=identity.referring_physician,
        specific_character_set=identity.character_set,
    )
    capture.PatientOrientation = _orientation(source)
    capture.ImageComments = label
    capture.DerivationDescription = f"{label}, blended over the source image by daug explain"
    if source is not None:
        _reference(capture, source)
    replace_atomically(out, lambda tmp: pydicom.dcmwrite(tmp, capture, enforce_file_format=True))
    return capture


@dataclass(frozen=True)
class _Identity:
    """The Patient and General Study attributes (PS3.3 C.7.1.1, C.7.2.1) the object carries."""

    study_uid: str
    patient_name: str | None = None
    patient_id: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession: str | None = None
    referring_physician: str | None = None
    character_set: str | list[str] | None = None

    @classmethod
    def of(cls, source: Dataset | None) -> _Identity:
        """The source's attributes; a new Study with an empty identity without a source."""
        if source is None:
            return cls(study_uid=hd.UID())

        def text(keyword: str) -> str | None:
            value = source.get(keyword)
            return None if value is None or str(value) == "" else str(value)

        sex = text("PatientSex")
        charset = source.get("SpecificCharacterSet") or None
        return cls(
            study_uid=str(source.StudyInstanceUID),
            patient_name=text("PatientName"),
            patient_id=text("PatientID"),
            birth_date=text("PatientBirthDate"),
            # highdicom accepts M, F and O only; anything else stays empty (Type 2)
            sex=sex if sex in ("M", "F", "O") else None,
            study_id=text("StudyID"),
            study_date=text("StudyDate"),
            study_time=text("StudyTime"),
            accession=text("AccessionNumber"),
            referring_physician=text("ReferringPhysicianName"),
            # the copied names are only readable in the character set they were written in
            character_set=(
                charset if charset is None or isinstance(charset, str) else [*map(str, charset)]
            ),
        )


def _orientation(source: Dataset | None) -> list[str]:
    """The source's Patient Orientation when it is a valid biped pair, else empty (Type 2C)."""
    values = list(source.get("PatientOrientation") or []) if source is not None else []
    if len(values) == 2 and all(str(v) in _BIPED for v in values):
        return [str(v) for v in values]
    return []


def _reference(capture: Dataset, source: Dataset) -> None:
    """Source Image Sequence (General Image / General Reference module) and the source's
    Series in Referenced Series Sequence (Common Instance Reference module)."""
    image = Dataset()
    image.ReferencedSOPClassUID = source.SOPClassUID
    image.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    capture.SourceImageSequence = [image]
    if "SeriesInstanceUID" in source:
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedInstanceSequence = [instance]
        capture.ReferencedSeriesSequence = [series]
