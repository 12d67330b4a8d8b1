"""Write a phantom image as a valid DICOM file (pydicom 3, Explicit VR Little Endian).

Header variation the release reader must handle, drawn per image (:class:`DicomEncoding`):

- SOP class CR (Computed Radiography) or DX (Digital X-Ray, for presentation);
- MONOCHROME2 (bright = dense) or MONOCHROME1 (stored values inverted: decoding with
  inversion gives the phantom back);
- BitsAllocated 16 with BitsStored 12 or 16, stored values occupying a sub-range
  [low, high] of the bit depth as real detectors do;
- optional Modality LUT (RescaleSlope / RescaleIntercept) and optional VOI window
  (WindowCenter / WindowWidth) that spans the stored range, so windowing keeps the whole
  phantom visible.

Decoding rule (DICOM PS3.3 C.11; implemented by the release reader, not here):
out = stored * slope + intercept; with a window y = clip((out - (c - 0.5)) / (w - 1) + 0.5,
0, 1), else min-max normalisation; MONOCHROME1 then y -> 1 - y. The result equals the
phantom up to quantisation.

Headers carry a FAKE PatientName / PatientID / PatientBirthDate (see
:class:`cohort.FakeIdentity`) and deterministic UIDs drawn from the study's stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from storage.synthetic.cohort import FakeIdentity

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # for presentation
# The writer's identity in the file meta, fixed so that a seed gives the same bytes whatever
# pydicom version writes them (pydicom's implementation UID root, our own version name).
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1")
IMPLEMENTATION_VERSION_NAME = "DAUG_SYNTH_1"

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]


@dataclass(frozen=True)
class DicomEncoding:
    """How one image's pixels and header are encoded."""

    sop_class: UID
    photometric: Photometric
    bits_stored: int
    low: int  # stored value of phantom 0 (MONOCHROME2) / phantom 1 (MONOCHROME1)
    high: int
    rescale: tuple[float, float] | None  # (slope, intercept)
    window: tuple[float, float] | None  # (center, width), in rescaled units

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Phantom in [0, 1] -> uint16 stored values."""
        p = np.clip(pixels, 0.0, 1.0)
        if self.photometric == "MONOCHROME1":
            p = 1.0 - p
        return np.round(self.low + p * (self.high - self.low)).astype(np.uint16)


def draw_encoding(
    rng: np.random.Generator, monochrome1_rate: float, window_rate: float, rescale_rate: float
) -> DicomEncoding:
    bits = 12 if rng.random() < 0.5 else 16
    top = 2**bits - 1
    low = int(rng.integers(0, top // 20))
    high = int(top * rng.uniform(0.55, 0.98))
    rescale = None
    slope, intercept = 1.0, 0.0
    if rng.random() < rescale_rate:
        slope = float(rng.choice([0.5, 1.0, 2.0]))
        intercept = float(rng.choice([-1024.0, 0.0, 100.0]))
        rescale = (slope, intercept)
    window = None
    if rng.random() < window_rate:
        center = slope * (low + high) / 2.0 + intercept
        width = slope * (high - low) * float(rng.uniform(1.0, 1.15)) + 1.0
        window = (round(center, 1), round(width, 1))
    return DicomEncoding(
        sop_class=CR_IMAGE_STORAGE if rng.random() < 0.5 else DX_IMAGE_STORAGE,
        photometric="MONOCHROME1" if rng.random() < monochrome1_rate else "MONOCHROME2",
        bits_stored=bits,
        low=low,
        high=high,
        rescale=rescale,
        window=window,
    )


@dataclass(frozen=True)
class ImageUids:
    """Deterministic per-image UIDs (drawn from the study's stream, see ids.draw_uid)."""

    sop_instance: UID
    series: UID


@dataclass(frozen=True)
class DicomStudyInfo:
    """Study-level header content shared by the images of a study."""

    identity: FakeIdentity
    study_uid: UID
    study_date: int
    study_time: float
    study_id: str  # DICOM StudyID (short, hospital-internal), NOT the MIMIC study_id
    accession: str
    description: str  # PerformedProcedureStepDescription
    procedure_code: str  # institution code for ProcedureCodeSequence


# (SNOMED-RT code value, code meaning) as found in MIMIC's ViewCodeSequence and
# PatientOrientationCodeSequence (the CSV's *_CodeMeaning columns come from these).
_VIEW_CODES = {
    "PA": ("R-44D8B", "postero-anterior"),
    "AP": ("R-10206", "antero-posterior"),
    "LATERAL": ("R-10232", "lateral"),
    "LL": ("R-10236", "left lateral"),
}
_ORIENTATION_CODES = {"Erect": ("F-10440", "Erect"), "Recumbent": ("F-10450", "Recumbent")}


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = meaning
    return item


def build_dataset(
    pixels: np.ndarray,
    encoding: DicomEncoding,
    study: DicomStudyInfo,
    view_position: str,
    orientation: str,
    instance: int,
    uids: ImageUids,
    pixel_spacing_mm: float = 0.139,
) -> Dataset:
    """A complete DICOM data set (with file meta) for one image."""
    stored = encoding.encode(pixels)
    sop_uid = uids.sop_instance
    series_uid = uids.series
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = encoding.sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # pydicom writes its own version here when the field is missing ("PYDICOM 3.0.2"), which
    # made the same seed give other file bytes (and source sha256s) under another pydicom.
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = encoding.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = f"{study.study_date:08d}"
    ds.StudyTime = _dicom_time(study.study_time)
    ds.AccessionNumber = study.accession
    ds.Modality = "CR" if encoding.sop_class == CR_IMAGE_STORAGE else "DX"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "SYNTHETIC GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "Physician^Fake"
    ds.StudyDescription = study.description
    ds.PerformedProcedureStepDescription = study.description
    ds.PatientName = study.identity.patient_name
    ds.PatientID = study.identity.patient_id
    ds.PatientBirthDate = study.identity.birth_date
    ds.PatientSex = study.identity.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    # display convention: frontal images show the patient's left on the image right
    # (rows run toward L), laterals face image left (rows run toward P); columns toward F
    ds.PatientOrientation = ["P", "F"] if view_position in ("LATERAL", "LL") else ["L", "F"]
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = instance
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewCodeSequence = [_code(*_VIEW_CODES.get(view_position, ("", "")))]
    if orientation:
        ds.PatientOrientationCodeSequence = [_code(*_ORIENTATION_CODES[orientation])]
    ds.ProcedureCodeSequence = [_code(study.procedure_code, study.description)]
    spacing = f"{pixel_spacing_mm:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    if encoding.rescale is not None:
        ds.RescaleIntercept = f"{encoding.rescale[1]:g}"
        ds.RescaleSlope = f"{encoding.rescale[0]:g}"
        ds.RescaleType = "US"
    if encoding.window is not None:
        ds.WindowCenter = f"{encoding.window[0]:g}"
        ds.WindowWidth = f"{encoding.window[1]:g}"
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_dicom(path: Path, dataset: Dataset) -> None:
    pydicom.dcmwrite(path, dataset, enforce_file_format=True)


def view_code_meaning(view_position: str) -> str:
    return _VIEW_CODES.get(view_position, ("", ""))[1]


def _dicom_time(hhmmss: float) -> str:
    """MIMIC's float time 84712.546 -> DICOM TM ``084712.546``."""
    whole = int(hhmmss)
    frac = round(hhmmss - whole, 3)
    return f"{whole:06d}.{round(frac * 1000):03d}"
