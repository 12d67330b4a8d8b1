"""Repeated rows in a release's tables: identical repeats are one row; rows of one key that
disagree refuse every item they touch, with the lines named, and never pick one silently."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.release.reader import ReleaseReader
from tests.factories import MiniItem, dicom_bytes, dicom_id, gradient, subject, write_mini_release

GOOD = dicom_bytes(gradient())


def release(tmp_path: Path) -> Path:
    items = [
        MiniItem(dicom_id(n), **subject(n), labels={"Edema": 1.0}, content=GOOD) for n in range(4)
    ]
    return write_mini_release(tmp_path / "release", items)


def append_rows(path: Path, rows: pd.DataFrame) -> None:
    pd.concat([pd.read_csv(path, dtype=str), rows.astype(str)]).to_csv(path, index=False)


def reasons(root: Path) -> dict[str, list[str]]:
    rejected = ReleaseReader(root).index().rejected
    return rejected.groupby("dicom_id")["reason"].apply(list).to_dict()


def test_identical_repeats_of_every_table_are_one_row(tmp_path):
    root = release(tmp_path)
    for kind in ("metadata", "split", "chexpert"):
        path = root / f"mimic-cxr-2.0.0-{kind}.csv"
        append_rows(path, pd.read_csv(path, dtype=str).iloc[[1]])
    index = ReleaseReader(root).index()
    assert index.rejected.empty
    assert sorted(index.items["dicom_id"]) == [dicom_id(n) for n in range(4)]


def test_an_image_in_two_splits_is_refused_not_put_in_the_first(tmp_path):
    root = release(tmp_path)
    split = root / "mimic-cxr-2.0.0-split.csv"
    append_rows(split, pd.read_csv(split, dtype=str).iloc[[2]].assign(split="test"))
    index = ReleaseReader(root).index()
    assert reasons(root) == {
        dicom_id(2): [
            "conflicting_split: mimic-cxr-2.0.0-split.csv lines 4, 6 disagree "
            "(split: 'train' vs 'test')"
        ]
    }
    assert dicom_id(2) not in set(index.items["dicom_id"])
    assert (index.items["split"] == "train").all()  # the others are untouched


def test_a_study_with_two_label_rows_that_disagree_is_refused(tmp_path):
    root = release(tmp_path)
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    append_rows(labels, pd.read_csv(labels, dtype=str).iloc[[0]].assign(Edema="0.0"))
    index = ReleaseReader(root).index()
    assert reasons(root) == {
        dicom_id(0): [
            "conflicting_labels: mimic-cxr-2.0.0-chexpert.csv lines 2, 6 disagree "
            "(Edema: 1.0 vs 0.0)"
        ]
    }
    assert sorted(index.items["dicom_id"]) == [dicom_id(n) for n in (1, 2, 3)]
