"""Repeated rows in a release's tables: the same row twice is one row; rows of one key that
disagree are a data fault, never resolved by picking one.

A dicom_id listed twice in ``split.csv`` with ``train`` and ``test``, or a study with two
different label rows, would otherwise be decided by row order (train/test leakage, or labels
nobody chose). Every item such a conflict touches is refused with the rows named (it lands in
quarantine.csv with the reason); the rest of the release is ingested.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from storage.errors import QuarantineReason

REJECT_COLUMNS = ("row", "dicom_id", "source_path", "reason")


def _lines(rows: pd.Index) -> str:
    """File lines of table rows (line 1 is the header)."""
    return ", ".join(str(int(row) + 2) for row in rows)


def conflicts(table: pd.DataFrame, key: str, columns: Sequence[str]) -> dict[str, str]:
    """Per value of ``key`` listed on rows that disagree on ``columns`` (identical repeats are
    no conflict): a description of the disagreement, naming the table's lines. The table's
    index is its row number in the file (as parsed)."""
    distinct = table.drop_duplicates([key, *columns])
    repeated = distinct[distinct[key].duplicated(keep=False)]
    found: dict[str, str] = {}
    for value, rows in repeated.groupby(key, sort=False):
        disagree = [c for c in columns if rows[c].nunique(dropna=False) > 1]
        shown = "; ".join(
            f"{c}: " + " vs ".join(repr(v) for v in rows[c].drop_duplicates()) for c in disagree
        )
        found[str(value)] = f"lines {_lines(rows.index)} disagree ({shown})"
    return found


def conflicting_metadata(meta: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rejects for every metadata row of a dicom_id whose rows disagree on ``columns``."""
    found = conflicts(meta, "dicom_id", columns)
    return rejects(meta, meta["dicom_id"], found, QuarantineReason.DUPLICATE_DICOM_ID, "metadata")


def rejects(
    meta: pd.DataFrame,
    keys: pd.Series,
    found: dict[str, str],
    reason: QuarantineReason,
    table: str,
) -> pd.DataFrame:
    """Rejects (the reader's rejected-rows table) for the metadata rows ``meta`` whose
    ``keys`` have a conflict in ``table``."""
    mask = keys.isin(list(found)).to_numpy()
    bad = meta[mask]
    return pd.DataFrame(
        {
            "row": bad.index,
            "dicom_id": bad["dicom_id"],
            "source_path": bad["source_path"],
            "reason": [f"{reason.value}: {table} {found[str(k)]}" for k in keys[mask]],
        },
        columns=list(REJECT_COLUMNS),
    )
