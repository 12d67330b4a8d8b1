"""New images outside any release (``daug explain``): files and folders of DICOM, JPG or PNG
to a store's pixels, through the reader and the geometry the store was ingested with.

An input the model must not see is refused with a reason, before its pixels are decoded where
the header tells: a DICOM object that is not a radiograph (CT, MR, ... by its Modality), a
multi-frame object, a view the store did not keep (a lateral, by ViewPosition), a body part
other than the chest (BodyPartExamined, when present), or pixels over the decode budget. A
JPG or PNG carries no header: it is taken as the chest view it is said to be.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from storage.errors import ItemError
from storage.geometry import fit_to_square
from storage.release.decode import DicomReader, ImageReader, JpegReader
from storage.release.ingest_config import IngestConfig

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_LAT", "PORT CHEST"})
PICTURE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


class InputRefusal(StrEnum):
    """Why an input is not explained (``failures.csv``'s reason, before the detail); the
    decoder's own reasons (``not_dicom``, ``image_too_large``, ...) come as they are."""

    NOT_A_FILE = "not_a_file"
    UNKNOWN_FORMAT = "unknown_format"
    NOT_A_RADIOGRAPH = "not_a_radiograph"
    MULTI_FRAME = "multi_frame"
    VIEW_NOT_KEPT = "view_not_kept"
    NOT_A_CHEST = "not_a_chest"


class InputError(Exception):
    """One input cannot be explained; the others are."""

    def __init__(self, path: str, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class InputImage:
    """One input as the store would hold it: ``pixels`` (S, S) float32 in [0, 1]."""

    path: str
    sha256: str
    pixels: np.ndarray
    dataset: pydicom.Dataset | None  # the DICOM header (without pixels), None for JPG/PNG


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """The files named and the files under the folders named (recursively, sorted; hidden
    files skipped), each once, in the order given."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found.extend(
                p
                for p in sorted(given.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
            )
        else:
            found.append(given)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def is_dicom(data: bytes, path: Path) -> bool:
    """A DICOM Part 10 file (the ``DICM`` preamble) or one named ``.dcm``."""
    return data[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


def read_input(path: Path, config: IngestConfig) -> InputImage:
    """``path`` decoded and fitted as the store of ``config`` holds its images, or an
    :class:`InputError` naming the path and the reason."""
    name = str(path)
    if not path.is_file():
        raise InputError(name, InputRefusal.NOT_A_FILE, "not a regular file")
    data = path.read_bytes()
    budget = int(config.reader.max_decoded_bytes)
    reader: ImageReader
    dataset = None
    if is_dicom(data, path):
        dataset = _dicom_header(data, name)
        check_chest_radiograph(dataset, name, config.reader.views)
        reader = DicomReader(max_decoded_bytes=budget)
    elif path.suffix.lower() in PICTURE_SUFFIXES:
        reader = JpegReader(max_decoded_bytes=budget)
    else:
        raise InputError(
            name, InputRefusal.UNKNOWN_FORMAT, "neither DICOM nor a JPG/PNG picture by its name"
        )
    try:
        unit = reader.decode(data, name)
    except ItemError as exc:
        raise InputError(name, exc.reason.value, exc.detail) from exc
    pixels = fit_to_square(unit, config.size, config.fit)
    return InputImage(name, hashlib.sha256(data).hexdigest(), pixels, dataset)


def _dicom_header(data: bytes, name: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise InputError(name, "not_dicom", str(exc) or type(exc).__name__) from exc


def check_chest_radiograph(ds: pydicom.Dataset, name: str, views: tuple[str, ...]) -> None:
    """Refuse, by the header, what is not one frame of a chest radiograph in a kept view
    (``views`` empty keeps every view; an absent element is not held against the input)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise InputError(
            name,
            InputRefusal.NOT_A_RADIOGRAPH,
            f"Modality {modality} (a {ds.get('SOPClassUID', 'unknown SOP class')!s} object); "
            f"the model reads projection radiographs ({', '.join(sorted(RADIOGRAPH_MODALITIES))})",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(name, InputRefusal.MULTI_FRAME, f"{frames} frames; one radiograph has one")
    body = str(ds.get("BodyPartExamined", "") or "").upper()
    if body and body not in CHEST_BODY_PARTS:
        raise InputError(name, InputRefusal.NOT_A_CHEST, f"BodyPartExamined {body}")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if views and view and view not in views:
        raise InputError(
            name,
            InputRefusal.VIEW_NOT_KEPT,
            f"ViewPosition {view}; the model's store keeps {', '.join(views)}",
        )
