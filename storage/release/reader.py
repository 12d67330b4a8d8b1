"""MIMIC-CXR release reader: the four CSVs joined per image, paths, reports, pixels.

Works unchanged on MIMIC-CXR (DICOM) and MIMIC-CXR-JPG, with ``.csv`` or ``.csv.gz``
tables. Indexing reads only the CSVs (hash joins in pandas, linear in the number of
rows); pixels and reports are read per item, later, by whoever processes that item.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

from daug_core.labels import (
    CHEXPERT_LABELS,
    LABEL_COLUMNS,
    SUPER_CLASS_COLUMNS,
    binarize,
    super_class_targets,
)
from storage.errors import ItemError, QuarantineReason, ReleaseFormatError
from storage.release.conflicts import conflicting_metadata, conflicts, rejects
from storage.release.decode import READER_TYPES, ImageReader
from storage.release.ingest_config import ReaderConfig
from storage.release.reports import ReportSections, decode_report, parse_report
from storage.store.items import INDEX_COLUMNS
from storage.store.location import Location, NotRegularFileError

log = logging.getLogger(__name__)

CSV_PREFIX = "mimic-cxr-2.0.0-"
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "metadata": ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    "split": ("dicom_id", "split"),
    "chexpert": ("subject_id", "study_id", *CHEXPERT_LABELS),
    "negbio": ("subject_id", "study_id", *CHEXPERT_LABELS),
}
UNASSIGNED_SPLIT = "unassigned"
MAX_REPORT_BYTES = 64 * 1024
SPLITS: tuple[str, ...] = ("train", "validate", "test")  # the split CSV's values


@dataclass(frozen=True)
class ReleaseIndex:
    """Every image the reader keeps, one row each, plus those it rejected and why."""

    items: pd.DataFrame
    rejected: pd.DataFrame  # dicom_id, source_path, reason
    image_format: Literal["dicom", "jpg"]
    filtered_by_view: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleaseItem:
    """One image read from the release: pixels in [0, 1], its report and its hash.
    ``report_encoding`` is how the report's bytes were read (``utf-8``; ``cp1252`` or
    ``latin-1`` when they were not UTF-8; empty when the report is missing)."""

    dicom_id: str
    pixels: np.ndarray
    source_sha256: str
    report: ReportSections
    report_missing: bool
    report_encoding: str = ""


def _file_line(table: pd.DataFrame, row: object) -> int:
    """The 1-based line of a table row in its CSV file (line 1 is the header)."""
    return int(table.index.get_loc(row)) + 2  # type: ignore[arg-type]


def _check_values(table: pd.DataFrame, column: str, allowed: set[str], path: Location) -> None:
    values = table[column].dropna().astype(str).str.strip()
    wrong = values[~values.isin(allowed)]
    if len(wrong):
        row = wrong.index[0]
        raise ReleaseFormatError(
            f"{path}: line {_file_line(table, row)}, column {column}: {wrong.iloc[0]!r} is not "
            f"one of {sorted(allowed)} ({len(wrong)} such row(s))"
        )


def _check_label_values(table: pd.DataFrame, path: Location) -> pd.DataFrame:
    """Label cells as numbers; anything but 1, 0, -1 or blank is refused (it would otherwise
    silently become a negative label)."""
    for column in CHEXPERT_LABELS:
        cells = table[column]
        numbers = pd.to_numeric(cells, errors="coerce")
        wrong = (cells.notna() & numbers.isna()) | (numbers.notna() & ~numbers.isin([1, 0, -1]))
        if wrong.any():
            row = cells.index[wrong.to_numpy()][0]
            raise ReleaseFormatError(
                f"{path}: line {_file_line(table, row)}, column {column}: {cells[row]!r} is not "
                f"a label (1, 0, -1 or blank; {int(wrong.sum())} such cell(s) in the column)"
            )
        table[column] = numbers.astype(np.float64)
    return table


class ReleaseReader:
    """Reads one release root laid out as MIMIC-CXR (see ../shared/MIMIC.md), on a local disk
    or at a URL (``s3://bucket/mimic-cxr``: MIMIC-CXR is distributed through cloud buckets)."""

    def __init__(self, root: Path | str | Location, config: ReaderConfig | None = None) -> None:
        self.root = Location.of(root)
        self.config = config or ReaderConfig()
        if not self.root.is_dir():
            raise ReleaseFormatError(f"release root {self.root} is not a directory")
        budget = self.config.max_decoded_bytes
        # sha256 of each table's bytes as it was parsed, by path: what the release diff's
        # content id is made of, so no table is read twice.
        self.table_sha256: dict[str, str] = {}
        self.image_readers: dict[str, ImageReader] = {
            fmt: reader_type(max_decoded_bytes=budget) for fmt, reader_type in READER_TYPES.items()
        }

    # ---- tables -------------------------------------------------------------------------
    def csv_path(self, kind: str) -> Location:
        """``mimic-cxr-2.0.0-<kind>.csv`` or its ``.csv.gz`` twin, whichever exists."""
        for suffix in (".csv", ".csv.gz"):
            path = self.root.child(f"{CSV_PREFIX}{kind}{suffix}")
            if path.is_file():
                return path
        raise ReleaseFormatError(f"{self.root}: missing {CSV_PREFIX}{kind}.csv (or .csv.gz)")

    def read_table(self, kind: str) -> pd.DataFrame:
        """Read one of the release CSVs and check its columns and values: ids as text, label
        cells 1, 0, -1 or blank, splits train/validate/test. A table that cannot be parsed
        (empty, cut, not CSV, not gzip) or holds other values is a :class:`ReleaseFormatError`
        naming the file and, for a value, its row (the file's line) and column."""
        path = self.csv_path(kind)
        text: tuple[str, ...] = ("dicom_id", "subject_id", "study_id", "ViewPosition", "split")
        if kind in ("chexpert", "negbio"):
            text += CHEXPERT_LABELS  # read as written, so a refusal quotes the cell
        table = self._parse_table(path, text)
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in table.columns]
        if missing:
            raise ReleaseFormatError(f"{path}: missing required columns {missing}")
        if table.empty and kind == "metadata":  # no images (label tables may be empty)
            raise ReleaseFormatError(f"{path}: the table has a header and no rows")
        if kind in ("chexpert", "negbio"):
            table = _check_label_values(table, path)
        if kind == "split":
            _check_values(table, "split", set(SPLITS), path)
        return table

    def labels_path(self) -> Location:
        """Where the labels come from: ``config.labels``, else the release's labeler CSV."""
        if self.config.labels is None:
            return self.csv_path(self.config.labeler)
        return Location.of(self.config.labels)

    def read_labels(self) -> tuple[pd.DataFrame, str]:
        """The label table and its key column: the release's ``labeler`` CSV (per study), or
        the external file of ``config.labels`` (per image when it has ``dicom_id``, else per
        study), its cells checked like the release's."""
        if self.config.labels is None:
            return self.read_table(self.config.labeler), "study_id"
        table = self._parse_table(
            Location.of(self.config.labels), ("dicom_id", "study_id", *CHEXPERT_LABELS)
        )
        key = "dicom_id" if "dicom_id" in table.columns else "study_id"
        missing = [c for c in (key, *CHEXPERT_LABELS) if c not in table.columns]
        if missing:
            raise ReleaseFormatError(
                f"{self.config.labels}: missing columns {missing} (needs dicom_id or study_id and "
                "the 14 CheXpert labels)"
            )
        return _check_label_values(table, Location.of(self.config.labels)), key

    def _parse_table(self, path: Location, text_columns: tuple[str, ...]) -> pd.DataFrame:
        """One table (CSV, CSV.gz or Parquet; a CSV's ``text_columns`` as written); anything that
        cannot be parsed (missing, empty, cut, not CSV, not gzip) is a
        :class:`ReleaseFormatError` naming the file. Records the sha256 of the bytes parsed."""
        parquet = path.path.endswith(".parquet")
        try:
            data = path.read_bytes()
            self.table_sha256[str(path)] = hashlib.sha256(data).hexdigest()
            if parquet:
                table = pd.read_parquet(io.BytesIO(data))
                # typed columns: only the ids need to be text (labels stay numbers or nulls)
                return table.astype({c: str for c in table.columns if c.endswith("_id")})
            compression: Literal["gzip"] | None = "gzip" if path.path.endswith(".gz") else None
            dtypes = dict.fromkeys(text_columns, str)
            return pd.read_csv(io.BytesIO(data), compression=compression, dtype=dtypes)
        except FileNotFoundError as exc:
            raise ReleaseFormatError(f"{path} does not exist") from exc
        except pd.errors.EmptyDataError as exc:
            raise ReleaseFormatError(f"{path}: empty file, not a CSV table") from exc
        except (ValueError, UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
            # pandas' ParserError and pyarrow's errors are ValueErrors; EOFError: a cut .csv.gz
            # (left alone it reaches typer, which prints "Aborted.").
            detail = " ".join(str(exc).split()) or type(exc).__name__
            form = "Parquet" if parquet else "CSV"
            raise ReleaseFormatError(f"{path}: not a readable {form} table ({detail})") from exc

    def detect_format(self, first: pd.Series) -> Literal["dicom", "jpg"]:
        if self.config.image_format != "auto":
            return self.config.image_format
        fmt: Literal["dicom", "jpg"]
        for fmt in ("dicom", "jpg"):
            if self.root.child(self.relative_image_path(first, fmt)).is_file():
                return fmt
        if self.root.is_local:
            any_dcm = next((self.root.local_path() / "files").rglob("*.dcm"), None)
            return "dicom" if any_dcm is not None else "jpg"
        found = self.root.fs.glob(self.root.child("files").path + "/p1*/p*/s*/*.dcm", maxdepth=4)
        return "dicom" if found else "jpg"

    # ---- paths --------------------------------------------------------------------------
    @staticmethod
    def relative_image_path(row: pd.Series, fmt: str) -> str:
        subject = str(row["subject_id"])
        suffix = READER_TYPES[fmt].suffix
        return f"files/p{subject[:2]}/p{subject}/s{row['study_id']}/{row['dicom_id']}{suffix}"

    @staticmethod
    def relative_report_path(row: pd.Series) -> str:
        subject = str(row["subject_id"])
        return f"files/p{subject[:2]}/p{subject}/s{row['study_id']}.txt"

    def resolve(self, relative: str, item_id: str) -> Location:
        """The place of a release-relative path; refuses anything outside the root (on a
        local disk symbolic links are followed first, so a link out of the release is
        refused too)."""
        if self.root.is_local:
            root = self.root.local_path()
            path = (root / relative).resolve()
            if not path.is_relative_to(root):
                raise ItemError(
                    item_id, QuarantineReason.PATH_ESCAPES_ROOT, f"{relative} resolves to {path}"
                )
            return Location.of(path)
        try:
            return self.root.child(relative)
        except ValueError as exc:
            raise ItemError(item_id, QuarantineReason.PATH_ESCAPES_ROOT, str(exc)) from exc

    def read_file(self, relative: str, item_id: str, limit: int = -1) -> bytes:
        """The bytes of a release file (at most ``limit``; -1: all), after :meth:`resolve`'s
        checks. Only a regular file is opened: a FIFO (whose open blocks forever), a device, a
        socket or a folder is an :class:`ItemError` ``not_a_file``; a missing file is
        ``missing_file``."""
        path = self.resolve(relative, item_id)
        try:
            with path.open_regular() as handle:
                return handle.read(limit)
        except NotRegularFileError as exc:
            raise ItemError(
                item_id, QuarantineReason.NOT_A_FILE, f"{relative} is a {exc.kind}"
            ) from exc
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ItemError(
                item_id, QuarantineReason.MISSING_FILE, f"{relative} is not a file"
            ) from exc

    def _report_bytes(self, report_path: str, dicom_id: str) -> bytes:
        """A report's bytes, at most :data:`MAX_REPORT_BYTES` (a MIMIC-CXR report is 1-3 KB;
        a runaway file would otherwise go whole into items.csv and every ingest's memory), cut
        before a character the limit would split (logged)."""
        data = self.read_file(report_path, dicom_id, MAX_REPORT_BYTES + 1)
        if len(data) <= MAX_REPORT_BYTES:
            return data
        log.warning(
            "report of %s (%s) is over %d KiB: its first %d KiB are kept",
            dicom_id,
            report_path,
            MAX_REPORT_BYTES // 1024,
            MAX_REPORT_BYTES // 1024,
        )
        data = data[:MAX_REPORT_BYTES]
        for end in range(len(data), len(data) - 4, -1):  # a UTF-8 character is 1-4 bytes
            try:
                data[:end].decode("utf-8")
            except UnicodeDecodeError:
                continue
            return data[:end]
        return data  # not UTF-8: read as cp1252 / Latin-1, one byte a character

    # ---- index --------------------------------------------------------------------------
    def index(self) -> ReleaseIndex:
        """Join metadata + split + labels per image, filter views, apply the label policy."""
        meta = self.read_table("metadata")
        split = self.read_table("split")
        labels, label_key = self.read_labels()
        n_rows = len(meta)
        csv_columns = [c for c in meta.columns if c != "dicom_id"]

        meta = meta.assign(
            dicom_id=meta["dicom_id"].fillna("").astype(str).str.strip(),
            subject_id=meta["subject_id"].fillna("").astype(str).str.strip(),
            study_id=meta["study_id"].fillna("").astype(str).str.strip(),
            view=meta["ViewPosition"].fillna("").astype(str).str.strip(),
        )
        fmt = self.detect_format(meta.iloc[0]) if n_rows else "dicom"
        suffix = READER_TYPES[fmt].suffix
        prefix = "files/p" + meta["subject_id"].str[:2] + "/p" + meta["subject_id"]
        meta["source_path"] = prefix + "/s" + meta["study_id"] + "/" + meta["dicom_id"] + suffix
        meta["report_path"] = prefix + "/s" + meta["study_id"] + ".txt"

        split = split.assign(dicom_id=split["dicom_id"].astype(str).str.strip())
        labels = labels.assign(**{label_key: labels[label_key].astype(str).str.strip()})
        split_conflicts = conflicts(split, "dicom_id", ["split"])
        label_conflicts = conflicts(labels, label_key, CHEXPERT_LABELS)
        rejected = [
            self._blank_id_rows(meta),
            self._escaping_rows(meta),
            conflicting_metadata(meta, csv_columns),
            rejects(
                meta,
                meta["dicom_id"],
                split_conflicts,
                QuarantineReason.CONFLICTING_SPLIT,
                self.csv_path("split").name,
            ),
            rejects(
                meta,
                meta[label_key],
                label_conflicts,
                QuarantineReason.CONFLICTING_LABELS,
                self.labels_path().name,
            ),
        ]
        bad = pd.concat(rejected, ignore_index=True).drop_duplicates("row")
        # Identical repeats of a row are one row; rows that disagree were refused above.
        meta = meta[~meta.index.isin(bad["row"])].drop_duplicates("dicom_id")

        if self.config.views:
            keep = meta["view"].isin(self.config.views)
            filtered = int((~keep).sum())
            meta = meta[keep]
        else:
            filtered = 0

        split = split.drop_duplicates("dicom_id")[["dicom_id", "split"]]
        items = meta.merge(split, on="dicom_id", how="left", validate="one_to_one")
        items["split"] = items["split"].fillna(UNASSIGNED_SPLIT)

        labels = labels.drop_duplicates(label_key)[[label_key, *CHEXPERT_LABELS]]
        items = items.merge(labels, on=label_key, how="left", validate="many_to_one")
        items["labels_missing"] = items[list(CHEXPERT_LABELS)].isna().all(axis=1) & ~items[
            label_key
        ].isin(labels[label_key])

        raw = items[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)
        binary = binarize(raw, self.config.uncertainty)
        items[list(LABEL_COLUMNS)] = binary
        items[list(SUPER_CLASS_COLUMNS)] = super_class_targets(binary)

        items = items[
            [
                *INDEX_COLUMNS,
                *CHEXPERT_LABELS,
                *LABEL_COLUMNS,
                *SUPER_CLASS_COLUMNS,
                "labels_missing",
            ]
        ].reset_index(drop=True)
        rejected_table = bad.drop(columns="row").reset_index(drop=True)
        counts = {
            "metadata_rows": n_rows,
            "kept": len(items),
            "rejected": len(rejected_table),
            "filtered_by_view": filtered,
            "unassigned_split": int((items["split"] == UNASSIGNED_SPLIT).sum()),
            "labels_missing": int(items["labels_missing"].sum()),
        }
        log.info("indexed %s: %s", self.root, counts)
        return ReleaseIndex(items, rejected_table, fmt, filtered, counts)

    def _escaping_rows(self, meta: pd.DataFrame) -> pd.DataFrame:
        """Rows whose ids would make a path outside the release (e.g. ``../``)."""

        def escapes(path: str) -> bool:
            norm = PurePosixPath(os.path.normpath(path))
            return norm.is_absolute() or norm.parts[:1] != ("files",) or ".." in norm.parts

        mask = meta["source_path"].map(escapes) | meta["report_path"].map(escapes)
        bad = meta[mask]
        return pd.DataFrame(
            {
                "row": bad.index,
                "dicom_id": bad["dicom_id"],
                "source_path": bad["source_path"],
                "reason": QuarantineReason.PATH_ESCAPES_ROOT.value
                + ": ids make a path outside the release root",
            }
        )

    @staticmethod
    def _blank_id_rows(meta: pd.DataFrame) -> pd.DataFrame:
        """Rows without a dicom_id, subject_id or study_id: no file can be found for them."""
        columns = ["dicom_id", "subject_id", "study_id"]
        blank = meta[columns].isin(["", "nan"])
        rows = blank.any(axis=1).to_numpy()
        bad = meta[rows]
        reasons = [
            f"{QuarantineReason.MISSING_ID.value}: blank "
            + ", ".join(c for c, is_blank in zip(columns, flags, strict=True) if is_blank)
            for flags in blank[rows].itertuples(index=False)
        ]
        return pd.DataFrame(
            {
                "row": bad.index,
                "dicom_id": bad["dicom_id"],
                "source_path": bad["source_path"],
                "reason": pd.Series(reasons, index=bad.index, dtype=object),
            }
        )

    # ---- items --------------------------------------------------------------------------
    def read_item(
        self,
        dicom_id: str,
        source_path: str,
        report_path: str,
        image_format: Literal["dicom", "jpg"],
    ) -> ReleaseItem:
        """Read, hash and decode one image and parse its report.

        The file is read once: its bytes are hashed (``source_sha256``, used to detect
        changed pixels in a new release) and decoded from memory. A missing report keeps
        the item (text empty, ``report_missing``), and so does a report that is no regular
        file (never opened, logged); a missing image is an :class:`ItemError`. A report that is
        not UTF-8 is read as cp1252 or Latin-1 (logged, and kept in ``report_encoding``).
        """
        data = self.read_file(source_path, dicom_id)
        pixels = self.image_readers[image_format].decode(data, dicom_id)
        try:
            report = decode_report(self._report_bytes(report_path, dicom_id))
        except ItemError as exc:
            if exc.reason is QuarantineReason.NOT_A_FILE:
                log.warning("report of %s ignored: %s", dicom_id, exc.detail)
            elif exc.reason is not QuarantineReason.MISSING_FILE:
                raise
            text, encoding, missing = "", "", True
        else:
            if report.fallback:
                log.warning(
                    "report of %s (%s) is not UTF-8: read as %s",
                    dicom_id,
                    report_path,
                    report.encoding,
                )
            text, encoding, missing = report.text, report.encoding, False
        return ReleaseItem(
            dicom_id=dicom_id,
            pixels=pixels,
            source_sha256=hashlib.sha256(data).hexdigest(),
            report=parse_report(text),
            report_missing=missing,
            report_encoding=encoding,
        )
