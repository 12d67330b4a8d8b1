"""The item table of an image store: its columns and types, the item statuses, the table
names, and the check of a table read back (typed or as text)."""

from __future__ import annotations

import re
from enum import StrEnum

import numpy as np
import pandas as pd

from daug_core.labels import CHEXPERT_LABELS, LABEL_COLUMNS, SUPER_CLASS_COLUMNS

# The index columns every item carries, from the release reader's join.
INDEX_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "study_id",
    "subject_id",
    "split",
    "view",
    "source_path",
    "report_path",
)


class ItemStatus(StrEnum):
    PENDING = "pending"
    OK = "ok"
    QUARANTINED = "quarantined"
    # In the store but not in the latest release (storage/release/update.py): pixels, labels
    # and heatmaps are kept, never used (only ``ok`` items are), never ingested again.
    RETIRED = "retired"


RESULT_COLUMNS: dict[str, str] = {
    "status": "str",
    "reason": "str",
    "source_sha256": "str",
    "report_missing": "bool",
    "report_source": "str",
    "findings": "str",
    "impression": "str",
}
ITEM_DTYPES: dict[str, str] = (
    {"index": "int"}
    | {c: "str" for c in INDEX_COLUMNS}
    | {c: "float" for c in (*CHEXPERT_LABELS, *LABEL_COLUMNS, *SUPER_CLASS_COLUMNS)}
    | {"labels_missing": "bool"}
    | RESULT_COLUMNS
)
QUARANTINE_DTYPES: dict[str, str] = {"dicom_id": "str", "source_path": "str", "reason": "str"}
PART_DTYPES: dict[str, str] = {"index": "int"} | RESULT_COLUMNS

ITEMS_TABLE = "items"
QUARANTINE_TABLE = "quarantine"
REJECTS_TABLE = "_tables/index_rejects"
PARTS_PREFIX = "_parts/shard-"


def _empty(dtypes: dict[str, str]) -> pd.DataFrame:
    kinds = {"str": str, "float": "float64", "int": "int64", "bool": bool}
    return pd.DataFrame({c: pd.Series(dtype=kinds[t]) for c, t in dtypes.items()})  # type: ignore[call-overload]


def _normalise(table: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """Columns in schema order with schema types (CSV round trips lose bool/int types)."""
    out = table.reindex(columns=list(dtypes))
    for column, kind in dtypes.items():
        if kind == "str":
            out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
        elif kind == "bool":
            out[column] = (
                out[column]
                .map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
                .astype(bool)
            )
        elif kind == "int":
            out[column] = out[column].astype("int64")
        else:
            out[column] = out[column].astype("float64")
    return out


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def item_table_problems(
    table: pd.DataFrame, images: int, finished_without_row: int
) -> tuple[str, ...]:
    """What is wrong with an item table (read typed or as text) of a store whose ``images``
    holds ``images`` items: every column present, one row per index in order, statuses known,
    source hashes whole. Fewer rows than images is harmless when none of the indices without a
    row is finished (a registration cut short between growing the arrays and writing the
    table: the next ingest registers them again); ``finished_without_row`` > 0 means the table
    was cut (a copy stopped midway, ``head -c``), which must not read as a smaller store."""
    found: list[str] = []
    missing = [c for c in ITEM_DTYPES if c not in table.columns]
    if missing:
        found.append(f"items.csv lacks columns {missing}")
    rows = len(table)
    if rows > images or finished_without_row:
        found.append(
            f"items.csv has {rows} rows; images holds {images} items"
            + (f", {finished_without_row} finished without a row" if finished_without_row else "")
        )
    if "index" in table.columns:
        indices = pd.to_numeric(table["index"], errors="coerce")
        if indices.isna().any() or not np.array_equal(indices.to_numpy(), np.arange(rows)):
            found.append("items.csv's index column is not 0, 1, 2, ... in order")
    if "status" in table.columns:
        unknown = sorted(set(table["status"].astype(str)) - {s.value for s in ItemStatus})
        if unknown:
            found.append(f"items.csv has unknown statuses {unknown[:5]}")
    if "source_sha256" in table.columns:
        hashes = table["source_sha256"].astype(str)
        cut = hashes[(hashes != "") & ~hashes.str.fullmatch(SHA256_HEX)]
        if len(cut):
            found.append(f"items.csv has {len(cut)} malformed source_sha256 value(s)")
    return tuple(found)
