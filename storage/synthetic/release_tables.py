"""The four MIMIC-CXR CSVs (metadata, split, chexpert, negbio): columns and writing.

Column lists are exactly those of /work/shared/MIMIC.md. Files are written byte-
deterministically: rows sorted by (subject_id, study_id, dicom_id), ``\\n`` line ends, and
for ``.csv.gz`` a gzip header with mtime 0 and no file name.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from daug_core.labels import CHEXPERT_LABELS

RELEASE_PREFIX = "mimic-cxr-2.0.0"

METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *CHEXPERT_LABELS)

Row = Sequence[str | int | float]


def table_path(root: Path, table: str, gzip_csv: bool) -> Path:
    """``root/mimic-cxr-2.0.0-<table>.csv`` or ``.csv.gz``."""
    return root / f"{RELEASE_PREFIX}-{table}.csv{'.gz' if gzip_csv else ''}"


def csv_text(columns: Sequence[str], rows: Iterable[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row has {len(row)} cells, expected {len(columns)}: {row!r}")
        writer.writerow(row)
    return buffer.getvalue()


def write_table(path: Path, columns: Sequence[str], rows: Iterable[Row]) -> None:
    """Write a CSV (gzip-compressed when ``path`` ends with .gz), deterministically."""
    data = csv_text(columns, rows).encode("utf-8")
    if path.suffix == ".gz":
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        ):
            gz.write(data)
    else:
        path.write_bytes(data)
