from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daug_core.labels import UncertaintyPolicy
from storage.errors import ItemError, QuarantineReason, ReleaseFormatError
from storage.release.ingest_config import ReaderConfig
from storage.release.reader import MAX_REPORT_BYTES, ReleaseReader
from tests.factories import (
    MiniItem,
    call_within,
    dicom_bytes,
    dicom_id,
    gradient,
    replace_with_fifo,
    write_mini_release,
)

GOOD = dicom_bytes(gradient())


def mini(tmp_path: Path, gzip: bool = False) -> Path:
    items = [
        MiniItem(dicom_id(1), labels={"Cardiomegaly": 1.0, "Edema": -1.0}, content=GOOD),
        MiniItem(dicom_id(2), view="LATERAL", content=GOOD),
        MiniItem(
            dicom_id(3),
            subject_id="11000001",
            study_id="51000001",
            view="AP",
            split=None,
            labels={"No Finding": 1.0},
            content=GOOD,
        ),
        MiniItem(
            dicom_id(4),
            subject_id="12000001",
            study_id="52000001",
            view="AP AXIAL",
            split="test",
            labels=None,
            content=GOOD,
            report=None,
        ),
        # the same row twice is one item; two rows of one dicom_id that disagree are refused
        MiniItem(dicom_id(1), labels={"Cardiomegaly": 1.0, "Edema": -1.0}, content=GOOD),
        MiniItem(dicom_id(7), content=GOOD),
        MiniItem(dicom_id(7), study_id="50414268", content=GOOD),
        MiniItem("../../../../etc", subject_id="13000001", study_id="53000001", content=None),
        MiniItem(dicom_id(5), subject_id="14000001", study_id="54000001", view="", content=GOOD),
    ]
    return write_mini_release(tmp_path / "release", items, gzip=gzip)


@pytest.mark.parametrize("gzip", [False, True], ids=["csv", "csv.gz"])
def test_index_joins_filters_and_rejects(tmp_path, gzip):
    index = ReleaseReader(mini(tmp_path, gzip)).index()
    items = index.items.set_index("dicom_id")
    assert index.image_format == "dicom"
    # Frontal by default: PA, AP, AP AXIAL; lateral and empty views filtered.
    assert list(items.index) == [dicom_id(1), dicom_id(3), dicom_id(4)]
    assert index.filtered_by_view == 2
    assert items.loc[dicom_id(1), "source_path"] == (
        f"files/p10/p10000032/s50414267/{dicom_id(1)}.dcm"
    )
    assert items.loc[dicom_id(1), "report_path"] == "files/p10/p10000032/s50414267.txt"
    assert items.loc[dicom_id(3), "split"] == "unassigned"
    assert items.loc[dicom_id(4), "split"] == "test"
    assert items.loc[dicom_id(4), "labels_missing"]
    assert not items.loc[dicom_id(1), "labels_missing"]
    # Raw labels kept as in the CSV; policy labels and super-classes beside them.
    assert items.loc[dicom_id(1), "Edema"] == -1.0
    assert np.isnan(items.loc[dicom_id(1), "Pneumonia"])
    assert items.loc[dicom_id(1), "y_cardiomegaly"] == 1.0
    assert items.loc[dicom_id(1), "y_edema"] == 0.0  # u-zeros
    assert items.loc[dicom_id(1), "super_cardiomediastinal"] == 1.0
    assert items.loc[dicom_id(3), "super_no_finding"] == 1.0
    reasons = index.rejected.groupby("dicom_id")["reason"].apply(list).to_dict()
    assert reasons == {
        # both rows of the dicom_id whose metadata rows disagree, the disagreement named
        dicom_id(7): [
            "duplicate_dicom_id: metadata lines 7, 8 disagree (study_id: '50414267' vs '50414268')"
        ]
        * 2,
        "../../../../etc": ["path_escapes_root: ids make a path outside the release root"],
    }


def test_all_views_and_u_ones(tmp_path):
    config = ReaderConfig(views=(), uncertainty=UncertaintyPolicy.U_ONES, labeler="negbio")
    items = ReleaseReader(mini(tmp_path), config).index().items.set_index("dicom_id")
    assert len(items) == 5
    assert items.loc[dicom_id(1), "y_edema"] == 1.0
    assert items.loc[dicom_id(1), "super_parenchymal"] == 1.0


def test_missing_columns_fail_fast_naming_file_and_columns(tmp_path):
    root = mini(tmp_path)
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv").drop(columns=["ViewPosition"])
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    with pytest.raises(ReleaseFormatError, match=r"metadata\.csv: missing required .*ViewPos"):
        ReleaseReader(root).index()


def test_missing_csv_fails_fast(tmp_path):
    root = mini(tmp_path)
    (root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(ReleaseFormatError, match=r"split\.csv \(or \.csv\.gz\)"):
        ReleaseReader(root).index()


def test_read_item_hashes_decodes_and_parses(tmp_path):
    reader = ReleaseReader(mini(tmp_path))
    row = reader.index().items.iloc[0]
    item = reader.read_item(row["dicom_id"], row["source_path"], row["report_path"], "dicom")
    assert item.pixels.shape == (40, 32)
    assert len(item.source_sha256) == 64
    assert item.report.findings == "Normal heart."
    assert not item.report_missing


def test_missing_report_keeps_the_item(tmp_path):
    reader = ReleaseReader(mini(tmp_path))
    row = reader.index().items.set_index("dicom_id").loc[dicom_id(4)]
    item = reader.read_item(dicom_id(4), row["source_path"], row["report_path"], "dicom")
    assert item.report_missing and item.report.text == ""


def test_missing_file_and_symlink_escape(tmp_path):
    reader = ReleaseReader(mini(tmp_path))
    with pytest.raises(ItemError) as info:
        reader.read_item("x", "files/p10/p10000032/s1/nothing.dcm", "files/none.txt", "dicom")
    assert info.value.reason is QuarantineReason.MISSING_FILE
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(GOOD)
    link = reader.root.local_path() / "files" / "p10" / "link.dcm"
    link.symlink_to(outside)
    with pytest.raises(ItemError) as info:
        reader.read_item("y", "files/p10/link.dcm", "files/none.txt", "dicom")
    assert info.value.reason is QuarantineReason.PATH_ESCAPES_ROOT


def test_not_a_release(tmp_path):
    with pytest.raises(ReleaseFormatError, match="not a directory"):
        ReleaseReader(tmp_path / "nowhere")


def test_what_is_no_regular_file_is_not_a_file_and_never_opened(tmp_path):
    reader = ReleaseReader(mini(tmp_path))
    items = reader.index().items.set_index("dicom_id")
    root = reader.root.local_path()
    fifo = replace_with_fifo(root / items.loc[dicom_id(1), "source_path"])
    folder = root / items.loc[dicom_id(3), "source_path"]
    folder.unlink()
    folder.mkdir()
    (root / "files" / "p10" / "fifo-link.dcm").symlink_to(fifo)  # inside the root, to a FIFO
    cases = {
        dicom_id(1): (items.loc[dicom_id(1), "source_path"], "FIFO"),
        dicom_id(3): (items.loc[dicom_id(3), "source_path"], "folder"),
        "link": ("files/p10/fifo-link.dcm", "FIFO"),
    }
    for item_id, (source, kind) in cases.items():
        with pytest.raises(ItemError) as info:
            call_within(10, lambda s=source, i=item_id: reader.read_item(i, s, "none.txt", "dicom"))
        assert info.value.reason is QuarantineReason.NOT_A_FILE
        assert info.value.detail == f"{source} is a {kind}"


def test_a_report_that_is_no_regular_file_is_missing_and_never_opened(tmp_path, caplog):
    reader = ReleaseReader(mini(tmp_path))
    row = reader.index().items.set_index("dicom_id").loc[dicom_id(1)]
    replace_with_fifo(reader.root.local_path() / row["report_path"])
    item = call_within(
        10, lambda: reader.read_item(dicom_id(1), row["source_path"], row["report_path"], "dicom")
    )
    assert item.report_missing and item.report.text == "" and item.pixels.shape == (40, 32)
    assert f"report of {dicom_id(1)} ignored" in caplog.text and "FIFO" in caplog.text


FRENCH = "FINDINGS: Cœur normal, épanchement — minime.\nIMPRESSION: Rien d’aigu.\n"


@pytest.mark.parametrize(
    ("data", "encoding", "findings"),
    [
        (FRENCH.encode("utf-8"), "utf-8", "Cœur normal, épanchement — minime."),
        # œ, — and ’ exist in cp1252 only (0x9c, 0x97, 0x92), é in both.
        (FRENCH.encode("cp1252"), "cp1252", "Cœur normal, épanchement — minime."),
        # 0x81 is undefined in cp1252: only Latin-1 reads it.
        (b"FINDINGS: \xe9panchement \x81.\n", "latin-1", "épanchement \x81."),
    ],
)
def test_reports_keep_their_letters_whatever_the_encoding(
    tmp_path, caplog, data, encoding, findings
):
    reader = ReleaseReader(mini(tmp_path))
    row = reader.index().items.set_index("dicom_id").loc[dicom_id(1)]
    (reader.root.local_path() / row["report_path"]).write_bytes(data)
    item = reader.read_item(dicom_id(1), row["source_path"], row["report_path"], "dicom")
    assert item.report_encoding == encoding
    assert item.report.findings == findings
    warned = f"report of {dicom_id(1)}" in caplog.text and f"read as {encoding}" in caplog.text
    assert warned == (encoding != "utf-8")


def test_a_runaway_report_is_cut_at_the_limit_between_characters(tmp_path, caplog):
    reader = ReleaseReader(mini(tmp_path))
    row = reader.index().items.set_index("dicom_id").loc[dicom_id(1)]
    # "é" is two bytes in UTF-8: the limit falls inside one of them
    text = "FINDINGS: " + "x" + "é" * (MAX_REPORT_BYTES // 2 + 10) + "\n" + "y" * 5_000_000
    (reader.root.local_path() / row["report_path"]).write_text(text, encoding="utf-8")
    item = reader.read_item(dicom_id(1), row["source_path"], row["report_path"], "dicom")
    assert item.report_encoding == "utf-8"
    kept = item.report.findings
    assert kept.startswith("xé") and set(kept[1:]) == {"é"}
    assert MAX_REPORT_BYTES - 12 <= len(kept.encode()) <= MAX_REPORT_BYTES
    assert f"report of {dicom_id(1)}" in caplog.text and "first 64 KiB are kept" in caplog.text


def _edit_csv(root: Path, kind: str, edit) -> None:
    path = root / f"mimic-cxr-2.0.0-{kind}.csv"
    table = pd.read_csv(path, dtype=str)
    edit(table)
    table.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("kind", "column", "value", "message"),
    [
        ("chexpert", "Edema", "abc", r"chexpert\.csv: line 2, column Edema: 'abc' is not a label"),
        ("chexpert", "Edema", "5", r"chexpert\.csv: line 2, column Edema: '5' is not a label"),
        ("chexpert", "Edema", "-7", r"column Edema: '-7' is not a label"),
        ("split", "split", "valid", r"split\.csv: line 2, column split: 'valid' is not one of"),
    ],
)
def test_values_outside_the_release_vocabulary_fail_fast_naming_file_line_and_column(
    tmp_path, kind, column, value, message
):
    root = mini(tmp_path)

    def edit(table: pd.DataFrame) -> None:
        table.loc[0, column] = value

    _edit_csv(root, kind, edit)
    with pytest.raises(ReleaseFormatError, match=message):
        ReleaseReader(root).index()


def test_unreadable_tables_are_one_release_error(tmp_path):
    root = mini(tmp_path, gzip=True)
    metadata = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    metadata.write_bytes(metadata.read_bytes()[:40])  # a cut download
    with pytest.raises(ReleaseFormatError, match=r"metadata\.csv\.gz: not a readable CSV"):
        ReleaseReader(root).index()
    metadata.unlink()
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("")
    with pytest.raises(ReleaseFormatError, match="empty file"):
        ReleaseReader(root).index()
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,ViewPosition\n"
    )
    with pytest.raises(ReleaseFormatError, match="a header and no rows"):
        ReleaseReader(root).index()


def test_a_row_with_a_blank_id_is_rejected_and_the_ids_stay_text(tmp_path):
    root = mini(tmp_path)

    def blank(table: pd.DataFrame) -> None:
        table.loc[table["dicom_id"] == dicom_id(3), "subject_id"] = ""

    _edit_csv(root, "metadata", blank)
    index = ReleaseReader(root).index()
    reasons = dict(zip(index.rejected["dicom_id"], index.rejected["reason"], strict=True))
    assert reasons[dicom_id(3)] == "missing_id: blank subject_id"
    # A blank cell must not turn the column into floats ("10000032.0"): paths stay right.
    item = index.items.set_index("dicom_id").loc[dicom_id(1)]
    assert item["source_path"] == f"files/p10/p10000032/s50414267/{dicom_id(1)}.dcm"


def _labels(rows: dict[str, dict[str, float]], key: str) -> pd.DataFrame:
    """A label table in the CheXpert layout, one row per key value."""
    from daug_core.labels import CHEXPERT_LABELS

    return pd.DataFrame([{key: k, **dict.fromkeys(CHEXPERT_LABELS), **v} for k, v in rows.items()])


def test_an_external_label_file_replaces_the_labeler_per_image_or_per_study(tmp_path):
    root = mini(tmp_path)
    per_image = tmp_path / "chexbert.csv"
    _labels(
        {dicom_id(1): {"Pleural Effusion": 1.0}, dicom_id(3): {"Edema": 1.0}}, "dicom_id"
    ).to_csv(per_image, index=False)
    config = ReaderConfig(labels=str(per_image))
    items = ReleaseReader(root, config).index().items.set_index("dicom_id")
    assert items.loc[dicom_id(1), "super_pleural"] == 1.0
    assert items.loc[dicom_id(1), "super_cardiomediastinal"] == 0.0  # the release's 1 is gone
    assert items.loc[dicom_id(3), "super_parenchymal"] == 1.0
    assert items.loc[dicom_id(4), "labels_missing"]  # not in the file
    assert ReaderConfig.from_dict(config.as_dict()) == config  # recorded with the ingest

    per_study = tmp_path / "chexbert.parquet"
    _labels({"50414267": {"Support Devices": 1.0}}, "study_id").to_parquet(per_study)
    items = ReleaseReader(root, ReaderConfig(labels=str(per_study))).index().items
    items = items.set_index("dicom_id")
    assert items.loc[dicom_id(1), "super_support_devices"] == 1.0
    assert items.loc[dicom_id(3), "labels_missing"]


def test_the_reader_records_the_hash_of_each_table_it_parsed(tmp_path):
    """What the release diff's content id is made of: the bytes each table was parsed from, so
    no table is read twice; an external label file stands in for the labeler."""
    import hashlib

    root = mini(tmp_path)
    reader = ReleaseReader(root)
    reader.index()
    names = {path.rsplit("/", 1)[-1]: sha for path, sha in reader.table_sha256.items()}
    expected = [f"mimic-cxr-2.0.0-{kind}.csv" for kind in ("chexpert", "metadata", "split")]
    assert sorted(names) == expected
    assert names[expected[1]] == hashlib.sha256((root / expected[1]).read_bytes()).hexdigest()

    labels = tmp_path / "chexbert.csv"
    _labels({dicom_id(1): {"Edema": 1.0}}, "dicom_id").to_csv(labels, index=False)
    reader = ReleaseReader(root, ReaderConfig(labels=str(labels)))
    reader.index()
    assert sorted(p.rsplit("/", 1)[-1] for p in reader.table_sha256) == [
        "chexbert.csv",
        *expected[1:],
    ]


def test_a_bad_external_label_file_is_one_error_naming_it(tmp_path):
    root = mini(tmp_path)
    bad = tmp_path / "labels.csv"
    _labels({dicom_id(1): {"Edema": 5.0}}, "dicom_id").to_csv(bad, index=False)
    with pytest.raises(ReleaseFormatError, match=r"labels\.csv: line 2, column Edema: '5\.0'"):
        ReleaseReader(root, ReaderConfig(labels=str(bad))).index()
    _labels({dicom_id(1): {}}, "path").to_csv(bad, index=False)
    with pytest.raises(ReleaseFormatError, match="missing columns \\['study_id'\\]"):
        ReleaseReader(root, ReaderConfig(labels=str(bad))).index()
    with pytest.raises(ReleaseFormatError, match="does not exist"):
        ReleaseReader(root, ReaderConfig(labels=str(tmp_path / "none.csv"))).index()
    with pytest.raises(ValueError, match="must end in one of"):
        ReaderConfig(labels=str(tmp_path / "labels.xlsx"))
