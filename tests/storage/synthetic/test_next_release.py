"""The derived synthetic release: deterministic, disjoint changes that match changes.csv,
new ids that collide with nothing, files changed or removed as the truth says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import zarr

from storage.synthetic import SynthSummary
from storage.synthetic.next_release import (
    ReleaseChangeConfig,
    write_next_release,
)
from storage.synthetic.release_writer import ReleaseExistsError

CHANGES = ReleaseChangeConfig(
    new_fraction=0.1, relabel_fraction=0.1, report_fraction=0.1, pixel_fraction=0.05
)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def read(release: Path, table: str) -> pd.DataFrame:
    name = f"mimic-cxr-2.0.0-{table}.csv"
    path = release / name if (release / name).is_file() else release / f"{name}.gz"
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def derived(dicom_release: SynthSummary, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("next")
    write_next_release(dicom_release.release_dir.parent, out, CHANGES)
    return out


def test_same_base_config_and_seed_give_the_same_files(dicom_release, derived, tmp_path):
    write_next_release(dicom_release.release_dir.parent, tmp_path, CHANGES)
    assert tree_digest(tmp_path / "release") == tree_digest(derived / "release")
    other = tmp_path / "other"
    write_next_release(dicom_release.release_dir.parent, other, CHANGES, seed=99)
    assert tree_digest(other / "release") != tree_digest(derived / "release")
    with pytest.raises(ReleaseExistsError):
        write_next_release(dicom_release.release_dir.parent, tmp_path, CHANGES)


def test_tables_and_files_follow_the_truth(dicom_release, derived):
    base, new = dicom_release.release_dir, derived / "release"
    changes = pd.read_csv(derived / "ground_truth" / "changes.csv", dtype=str)
    assert set(changes["kind"]) == {
        "new",
        "pixels_changed",
        "labels_changed",
        "report_changed",
        "removed",
    }
    assert not changes["dicom_id"].duplicated().any()
    by_kind = changes.groupby("kind")["study_id"].agg(set)
    studies = [by_kind[k] for k in ("labels_changed", "report_changed", "removed")]
    assert not (studies[0] & studies[1]) and not (studies[0] | studies[1]) & studies[2]

    old_meta, new_meta = read(base, "metadata"), read(new, "metadata")
    removed = changes[changes["kind"] == "removed"]
    added = changes[changes["kind"] == "new"]
    assert set(new_meta["dicom_id"]) == (
        set(old_meta["dicom_id"]) - set(removed["dicom_id"])
    ) | set(added["dicom_id"])
    assert not set(added["subject_id"]) & set(old_meta["subject_id"])
    assert not set(added["study_id"]) & set(old_meta["study_id"])
    truth = pd.read_csv(derived / "ground_truth" / "labels.csv", dtype=str)
    assert set(truth["dicom_id"]) == set(new_meta["dicom_id"])
    masks = zarr.open_group(derived / "ground_truth" / "masks.zarr", mode="r")
    names = set(masks.array_keys())
    assert set(added["dicom_id"]) <= names and not set(removed["dicom_id"]) & names

    for row in changes.itertuples():
        folder = f"files/p{row.subject_id[:2]}/p{row.subject_id}"
        image = f"{folder}/s{row.study_id}/{row.dicom_id}.dcm"
        if row.kind == "removed":
            assert not (new / image).exists()
        elif row.kind == "pixels_changed":
            old_ds, new_ds = pydicom.dcmread(base / image), pydicom.dcmread(new / image)
            assert old_ds.SOPInstanceUID == new_ds.SOPInstanceUID
            assert (old_ds.pixel_array != new_ds.pixel_array).any()
        elif row.kind == "report_changed":
            report = f"{folder}/s{row.study_id}.txt"
            assert (new / report).read_text() != (base / report).read_text()
            assert (new / image).read_bytes() == (base / image).read_bytes()
    for table in ("chexpert", "negbio"):
        old, new_labels = read(base, table), read(new, table)
        flipped = set(changes.loc[changes["kind"] == "labels_changed", "study_id"])
        merged = old.merge(new_labels, on=["subject_id", "study_id"], suffixes=("", "_new"))
        columns = [c for c in old.columns if c not in ("subject_id", "study_id")]
        differs = merged[columns].to_numpy() != merged[[f"{c}_new" for c in columns]].to_numpy()
        assert set(merged.loc[differs.any(axis=1), "study_id"]) == flipped


def test_a_release_derived_from_a_derived_one_gets_fresh_patients(derived, tmp_path):
    third = write_next_release(derived, tmp_path, CHANGES)
    first = pd.read_csv(derived / "ground_truth" / "changes.csv", dtype=str)
    second = pd.read_csv(third.changes_csv, dtype=str)
    new_first = set(first.loc[first["kind"] == "new", "dicom_id"])
    new_second = set(second.loc[second["kind"] == "new", "dicom_id"])
    assert new_second and not new_first & new_second


def test_jpg_and_gzip_releases_are_derived_alike(jpg_release, tmp_path):
    summary = write_next_release(jpg_release.release_dir.parent, tmp_path, CHANGES)
    assert (tmp_path / "release" / "mimic-cxr-2.0.0-metadata.csv.gz").is_file()
    assert summary.counts["new"] > 0 and summary.counts["pixels_changed"] > 0
    assert not list((tmp_path / "release").rglob("*.dcm"))


@pytest.mark.parametrize(
    "bad",
    [
        {"new_fraction": -0.1},
        {"remove_fraction": 1.5},
        {"relabel_fraction": 0.5, "report_fraction": 0.5},
    ],
)
def test_bad_fractions_are_refused(bad):
    with pytest.raises(ValueError):
        ReleaseChangeConfig(**bad)
