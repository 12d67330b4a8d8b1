"""MIMIC-CXR style identifiers and release paths.

- subject_id: 8 digits, 10000000-19999999; its first two digits name the ``pXX`` folder.
- study_id: 8 digits starting with 5.
- dicom_id: 40 hex digits in five dash-separated groups of 8 (44 characters).
- DICOM UIDs: deterministic, derived from the generator (never from the clock).
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
from pydicom.uid import UID, generate_uid

SUBJECT_ID_RANGE = (10_000_000, 20_000_000)
STUDY_ID_RANGE = (50_000_000, 60_000_000)


def draw_unique_ids(rng: np.random.Generator, low: int, high: int, count: int) -> list[int]:
    """``count`` distinct integers in [low, high), in draw order.

    Rejection sampling: the id spaces hold 10^7 values and a release has far fewer, so
    collisions are rare and the loop is short.
    """
    if count > (high - low) // 2:
        raise ValueError(f"cannot draw {count} unique ids from [{low}, {high})")
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < count:
        for value in rng.integers(low, high, size=count - len(out)).tolist():
            if value not in seen:
                seen.add(value)
                out.append(value)
    return out


def draw_dicom_id(rng: np.random.Generator) -> str:
    """44-character dicom_id like ``02aa804e-bde0afdd-112c0b34-7bc16630-4e384014``."""
    digits = rng.bytes(20).hex()
    return "-".join(digits[i : i + 8] for i in range(0, 40, 8))


def draw_uid(rng: np.random.Generator) -> UID:
    """A DICOM UID under pydicom's root, hashed from 128 random bits of ``rng``."""
    return generate_uid(entropy_srcs=[rng.bytes(16).hex()])


def patient_dir(subject_id: int) -> PurePosixPath:
    """``files/p10/p10000032`` relative to the release root."""
    text = f"{subject_id:08d}"
    return PurePosixPath("files") / f"p{text[:2]}" / f"p{text}"


def study_dir(subject_id: int, study_id: int) -> PurePosixPath:
    """``files/p10/p10000032/s50414267`` (holds the study's images)."""
    return patient_dir(subject_id) / f"s{study_id}"


def report_path(subject_id: int, study_id: int) -> PurePosixPath:
    """``files/p10/p10000032/s50414267.txt``: the report sits in the PATIENT folder."""
    return patient_dir(subject_id) / f"s{study_id}.txt"


def image_path(subject_id: int, study_id: int, dicom_id: str, suffix: str) -> PurePosixPath:
    """``files/p10/p10000032/s50414267/<dicom_id>.dcm`` (or ``.jpg``)."""
    return study_dir(subject_id, study_id) / f"{dicom_id}{suffix}"
