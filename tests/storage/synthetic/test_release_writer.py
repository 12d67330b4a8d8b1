"""The written release: MIMIC layout, CSVs, DICOM variation, ground truth, determinism."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import zarr
from PIL import Image

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic import (
    ReleaseExistsError,
    SynthConfig,
    SynthSummary,
    write_synthetic_release,
)
from storage.synthetic.dicom_writer import CR_IMAGE_STORAGE, DX_IMAGE_STORAGE
from storage.synthetic.release_tables import LABEL_COLUMNS, METADATA_COLUMNS, SPLIT_COLUMNS
from tests.storage.synthetic.dicom_decoding import decode_for_display

DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
IMAGE_PATH = re.compile(
    r"^files/p(1\d)/p(1\d{7})/s(5\d{7})/([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.(dcm|jpg)$"
)
REPORT_PATH = re.compile(r"^files/p(1\d)/p(1\d{7})/s(5\d{7})\.txt$")


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _csv(summary: SynthSummary, table: str, gz: bool = False) -> pd.DataFrame:
    path = summary.release_dir / f"mimic-cxr-2.0.0-{table}.csv{'.gz' if gz else ''}"
    return pd.read_csv(path, dtype={"dicom_id": str})


def test_layout_is_exactly_mimic(dicom_release: SynthSummary) -> None:
    root = dicom_release.release_dir
    top = sorted(p.name for p in root.iterdir())
    assert top == [
        "files",
        "mimic-cxr-2.0.0-chexpert.csv",
        "mimic-cxr-2.0.0-metadata.csv",
        "mimic-cxr-2.0.0-negbio.csv",
        "mimic-cxr-2.0.0-split.csv",
    ]
    images = reports = 0
    for path in root.joinpath("files").rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(root).as_posix()
        if m := IMAGE_PATH.match(rel):
            assert m.group(1) == m.group(2)[:2]
            assert m.group(5) == "dcm"
            images += 1
        elif m := REPORT_PATH.match(rel):
            assert m.group(1) == m.group(2)[:2]
            reports += 1
        else:
            pytest.fail(f"unexpected file {rel}")
    assert images == dicom_release.images
    assert reports == dicom_release.reports_written
    assert dicom_release.reports_missing >= 0
    assert sorted(p.name for p in dicom_release.ground_truth_dir.iterdir()) == [
        "labels.csv",
        "masks.zarr",
    ]


def test_csv_columns_and_values(dicom_release: SynthSummary) -> None:
    meta = _csv(dicom_release, "metadata")
    split = _csv(dicom_release, "split")
    chexpert = _csv(dicom_release, "chexpert")
    negbio = _csv(dicom_release, "negbio")
    assert tuple(meta.columns) == METADATA_COLUMNS
    assert tuple(split.columns) == SPLIT_COLUMNS
    assert tuple(chexpert.columns) == LABEL_COLUMNS == tuple(negbio.columns)
    assert len(meta) == dicom_release.images and meta["dicom_id"].is_unique
    assert meta["dicom_id"].map(lambda s: bool(DICOM_ID.match(s))).all()
    assert meta["subject_id"].between(10_000_000, 19_999_999).all()
    assert meta["study_id"].between(50_000_000, 59_999_999).all()
    assert set(meta["ViewPosition"]) <= {"PA", "AP", "LATERAL", "LL"}
    assert {"PA", "AP", "LATERAL"} <= set(meta["ViewPosition"])
    assert (meta["Rows"] != meta["Columns"]).all()
    assert meta["StudyDate"].between(21_000_101, 22_991_231).all()
    assert meta.groupby("subject_id")["study_id"].nunique().between(1, 3).all()
    assert meta.groupby("study_id")["dicom_id"].count().between(1, 3).all()
    # splits are per patient; a few images are missing from the split file
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()
    assert len(split) <= len(meta)
    # label CSVs are study level with MIMIC's values; some studies are missing
    for table in (chexpert, negbio):
        assert table["study_id"].is_unique
        values = set(np.unique(table[list(CHEXPERT_LABELS)].to_numpy(dtype=float)))
        assert values <= {1.0, 0.0, -1.0} | {v for v in values if np.isnan(v)}
        assert len(table) <= meta["study_id"].nunique()
    assert {1.0, 0.0, -1.0} <= set(np.unique(chexpert[list(CHEXPERT_LABELS)].to_numpy(float)))


def test_labels_agree_with_ground_truth(dicom_release: SynthSummary) -> None:
    truth = pd.read_csv(dicom_release.labels_csv).drop_duplicates("study_id")
    assert truth[list(CHEXPERT_LABELS)].isin([0, 1]).all().all()
    assert (
        truth["No Finding"]
        == (truth[[n for n in CHEXPERT_LABELS if n != "No Finding"]].sum(axis=1) == 0)
    ).all()
    for table in ("chexpert", "negbio"):
        labels = _csv(dicom_release, table).merge(truth, on="study_id", suffixes=("", "_true"))
        hits = positives = false_pos = negatives = 0
        for name in CHEXPERT_LABELS:
            true = labels[f"{name}_true"] == 1
            said = labels[name]
            positives += int(true.sum())
            hits += int(((said == 1.0) | (said == -1.0))[true].sum())
            negatives += int((~true).sum())
            false_pos += int((said == 1.0)[~true].sum())
        assert hits / positives >= 0.85, f"{table}: {hits}/{positives} positives found"
        assert false_pos / negatives <= 0.05


def test_dicoms_vary_like_the_real_release(dicom_release: SynthSummary) -> None:
    meta = _csv(dicom_release, "metadata").set_index("dicom_id")
    seen: dict[str, set[object]] = {k: set() for k in ("pi", "bits", "sop", "window", "rescale")}
    for path in sorted(dicom_release.release_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        row = meta.loc[path.stem]
        assert (ds.Rows, ds.Columns) == (row["Rows"], row["Columns"])
        assert ds.ViewPosition == row["ViewPosition"]
        assert ds.StudyDate == str(row["StudyDate"])
        assert ds.BitsAllocated == 16
        assert str(ds.PatientName) and ds.PatientID and ds.PatientBirthDate
        assert ds.PatientID != str(row["subject_id"])
        seen["pi"].add(ds.PhotometricInterpretation)
        seen["bits"].add(ds.BitsStored)
        seen["sop"].add(ds.SOPClassUID)
        seen["window"].add("WindowCenter" in ds)
        seen["rescale"].add("RescaleSlope" in ds)
        image = decode_for_display(ds)
        # bright = dense after decoding: the body centre is brighter than the image corner
        h, w = image.shape
        assert image[h // 2, w // 2] > image[-2, 1] or image[h // 2, w // 2] > 0.5
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 16}
    assert seen["sop"] == {CR_IMAGE_STORAGE, DX_IMAGE_STORAGE}
    assert seen["window"] == {True, False} and seen["rescale"] == {True, False}


def test_masks_zarr_matches_images(dicom_release: SynthSummary) -> None:
    group = zarr.open_group(str(dicom_release.masks_zarr), mode="r")
    assert group.attrs["label_order"] == list(CHEXPERT_LABELS)
    meta = _csv(dicom_release, "metadata")
    truth = pd.read_csv(dicom_release.labels_csv).set_index("dicom_id")
    assert set(truth.index) == set(meta["dicom_id"])
    for row in meta.itertuples():
        array = group[str(row.dicom_id)]
        assert isinstance(array, zarr.Array)
        masks = np.asarray(array[...])
        assert masks.dtype == np.uint8 and masks.shape == (14, row.Rows, row.Columns)
        labels = truth.loc[[str(row.dicom_id)], list(CHEXPERT_LABELS)].to_numpy(np.int64)[0]
        present = np.asarray(masks.reshape(14, -1).any(axis=1))
        # a mask only where the study truly has the finding
        assert not (present & (labels == 0)).any()
        if labels[CHEXPERT_LABELS.index("No Finding")]:
            assert not masks.any()
        if row.ViewPosition in ("PA", "AP"):
            for k, name in enumerate(CHEXPERT_LABELS):
                if labels[k] and name != "No Finding":
                    assert present[k], f"{row.dicom_id}: empty mask for {name}"


def test_reports_and_imperfections(tmp_path: Path) -> None:
    """Missing reports / label rows / split rows appear at the configured rates."""
    out = tmp_path
    config = SynthConfig(
        studies=40, size=32, missing_report_rate=0.3, missing_label_rate=0.2, missing_split_rate=0.2
    )
    summary = write_synthetic_release(out, config, seed=3)
    assert 0 < summary.reports_missing < 40
    chexpert = _csv(summary, "chexpert")
    assert len(chexpert) < summary.reports_written
    assert len(_csv(summary, "split")) < summary.images
    texts = [p.read_text() for p in summary.release_dir.rglob("*.txt")]
    assert all("FINAL REPORT" in t and "___" in t for t in texts)
    assert any("IMPRESSION:" in t and "FINDINGS" not in t for t in texts)
    assert any("FINDINGS AND IMPRESSION:" in t for t in texts)


def test_jpg_release_with_gzip_csvs(jpg_release: SynthSummary) -> None:
    root = jpg_release.release_dir
    assert not list(root.rglob("*.dcm"))
    jpgs = sorted(root.rglob("*.jpg"))
    assert len(jpgs) == jpg_release.images
    meta = _csv(jpg_release, "metadata", gz=True).set_index("dicom_id")
    for path in jpgs:
        with Image.open(path) as image:
            assert image.mode == "L" and image.format == "JPEG"
            assert image.size == (meta.loc[path.stem, "Columns"], meta.loc[path.stem, "Rows"])
    for table in ("split", "chexpert", "negbio"):
        assert len(_csv(jpg_release, table, gz=True)) > 0
    assert not list(root.glob("*.csv"))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    config = SynthConfig(studies=8, size=48)
    calls: list[tuple[int, int]] = []
    a = write_synthetic_release(
        tmp_path / "a", config, seed=1, progress=lambda d, t: calls.append((d, t))
    )
    b = write_synthetic_release(tmp_path / "b", config, seed=1)
    c = write_synthetic_release(tmp_path / "c", config, seed=2)
    digest_a = tree_digest(tmp_path / "a")
    assert digest_a == tree_digest(tmp_path / "b")
    assert len(digest_a) > 20
    assert digest_a != tree_digest(tmp_path / "c")
    assert a.studies == b.studies == c.studies == 8
    assert calls == [(i, 8) for i in range(1, 9)]
    gz = SynthConfig(studies=3, size=40, gzip_csv=True)
    write_synthetic_release(tmp_path / "g1", gz, seed=4)
    write_synthetic_release(tmp_path / "g2", gz, seed=4)
    assert tree_digest(tmp_path / "g1") == tree_digest(tmp_path / "g2")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    config = SynthConfig(studies=2, size=32)
    write_synthetic_release(tmp_path, config, seed=0)
    with pytest.raises(ReleaseExistsError):
        write_synthetic_release(tmp_path, config, seed=0)
    summary = write_synthetic_release(tmp_path, config, seed=0, overwrite=True)
    assert summary.studies == 2
    assert not list(tmp_path.glob("*.partial"))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="split_fractions"):
        SynthConfig(split_fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="not a renderable"):
        SynthConfig(prevalences=(("No Finding", 0.5),))
    with pytest.raises(ValueError, match="studies"):
        SynthConfig(studies=0)
