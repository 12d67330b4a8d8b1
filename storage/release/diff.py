"""A new release against an image store: which items are new, changed or gone.

The store is matched to the release by ``dicom_id``; pixels are compared by the sha256 of
the source file (the ingest recorded ``source_sha256`` from the same bytes it decoded), labels
by the raw CheXpert values of the store's labeler, reports by the parsed FINDINGS and
IMPRESSION. Every item gets exactly one kind, by priority::

    new             in the release, not in the store (or only as a retired item)
    removed         in the store (not retired), not in the release
    pixels_changed  the source file's sha256 differs (or the file is gone)
    labels_changed  pixels equal; a raw label or ``labels_missing`` differs
    report_changed  pixels and labels equal; findings, impression or report_missing differ
    unchanged       none of the above

The boolean columns ``labels_differ`` / ``report_differs`` say what else differs (a
pixel-changed item may have new labels too), so applying the diff can update both.

Cost: the release CSVs are indexed once, every image file of the index is read once (hashed
in a thread pool, 1 MiB at a time: hashlib and file reads release the GIL), every report once;
the label and report comparisons are vectorised in pandas. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeVar

import numpy as np
import pandas as pd

from daug_core.labels import CHEXPERT_LABELS
from storage.release.reader import ReleaseReader
from storage.release.reports import decode_report, parse_report
from storage.store.image import ImageStore
from storage.store.items import ItemStatus
from storage.store.location import Location, NotRegularFileError

log = logging.getLogger(__name__)

HASH_BLOCK = 1 << 20
REPORT_COLUMNS: tuple[str, ...] = ("findings", "impression", "report_missing")
LABEL_COMPARED: tuple[str, ...] = (*CHEXPERT_LABELS, "labels_missing")
T = TypeVar("T")


class ChangeKind(StrEnum):
    """How an item of the store or the release changed (values name the kinds in reports)."""

    NEW = "new"
    PIXELS_CHANGED = "pixels_changed"
    LABELS_CHANGED = "labels_changed"
    REPORT_CHANGED = "report_changed"
    REMOVED = "removed"
    UNCHANGED = "unchanged"


CHANGE_COLUMNS: tuple[str, ...] = (
    "index",
    "dicom_id",
    "study_id",
    "kind",
    "pixels_differ",
    "labels_differ",
    "report_differs",
    "detail",
)


@dataclass(frozen=True)
class ReleaseDiff:
    """The outcome of :func:`diff_release`.

    ``changes``: one row per item of the store (retired ones only when they reappear) or of
    the release: ``index`` (the store's, -1 for an item the store never saw), ``dicom_id``,
    ``study_id``, ``kind``, the three ``*_differ*`` flags and a human ``detail``.
    ``release``: the release index (:meth:`ReleaseReader.index` items) with
    ``source_sha256`` and the parsed report (``findings``, ``impression``,
    ``report_source``, ``report_missing``), by ``dicom_id``; what applying the diff copies.
    """

    changes: pd.DataFrame
    release: pd.DataFrame
    release_id: str
    release_path: str
    image_format: Literal["dicom", "jpg"]
    files_hashed: int
    bytes_hashed: int
    seconds: float

    def of_kind(self, kind: ChangeKind) -> pd.DataFrame:
        return self.changes[self.changes["kind"] == kind.value]

    def counts(self) -> dict[str, int]:
        """Items per kind, every kind present (0 when none)."""
        found = self.changes["kind"].value_counts()
        return {kind.value: int(found.get(kind.value, 0)) for kind in ChangeKind}

    @property
    def needs_work(self) -> bool:
        """Whether anything but ``unchanged`` was found."""
        counts = self.counts()
        return any(n for kind, n in counts.items() if kind != ChangeKind.UNCHANGED.value)


def file_sha256(path: Location) -> tuple[str, int]:
    """(hex sha256, size) of a file, read once in 1 MiB blocks; ("", 0) when it is missing or
    no regular file (a FIFO is never opened: its open would wait forever; ingest quarantines it
    as ``not_a_file``)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open_regular() as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, NotRegularFileError):
        return "", 0
    return digest.hexdigest(), size


def _parallel(
    function: Callable[[Location], T], paths: Iterable[Location], workers: int
) -> list[T]:
    paths = list(paths)
    if workers <= 1 or len(paths) < 2:
        return [function(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="release-diff") as pool:
        return list(pool.map(function, paths))


def _read_report(path: Location) -> tuple[str, bytes | None]:
    """Text and bytes of a report, read as ingest reads it (:meth:`ReleaseReader.read_item`)."""
    try:
        data = path.read_regular_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, NotRegularFileError):
        return "", None
    return decode_report(data).text, data


def _release_reports(reader: ReleaseReader, paths: pd.Series, workers: int) -> pd.DataFrame:
    """Parsed report of every distinct report path, plus the sha256 of its bytes."""
    unique = sorted(set(paths.tolist()))
    read = _parallel(_read_report, (reader.resolve(p, p) for p in unique), workers)
    rows = []
    for relative, (text, data) in zip(unique, read, strict=True):
        sections = parse_report(text)
        rows.append(
            {
                "report_path": relative,
                "findings": sections.findings,
                "impression": sections.impression,
                "report_source": sections.source,
                "report_missing": data is None,
                "report_sha256": hashlib.sha256(data).hexdigest() if data is not None else "",
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "report_path",
            "findings",
            "impression",
            "report_source",
            "report_missing",
            "report_sha256",
        ],
    )


def _release_id(reader: ReleaseReader, release: pd.DataFrame, reports: pd.DataFrame) -> str:
    """Content hash of the release as the store sees it: the tables the index read (metadata,
    split and the labels in use; by file name, so a moved copy keeps its id), every indexed
    image and every report. Equal ids mean nothing the diff looks at changed."""
    digest = hashlib.sha256()
    for path, sha in sorted(reader.table_sha256.items()):
        digest.update(f"{path.rsplit('/', 1)[-1]}:{sha}\n".encode())
    for dicom_id, sha in sorted(zip(release["dicom_id"], release["source_sha256"], strict=True)):
        digest.update(f"{dicom_id}:{sha}\n".encode())
    for path, sha in sorted(zip(reports["report_path"], reports["report_sha256"], strict=True)):
        digest.update(f"{path}:{sha}\n".encode())
    return digest.hexdigest()[:16]


def _label_detail(
    store_raw: np.ndarray,
    store_missing: np.ndarray,
    release_raw: np.ndarray,
    release_missing: np.ndarray,
    differ: np.ndarray,
) -> list[str]:
    """``"Edema: blank -> 1.0"`` per row of changed items (columns: the 14 raw labels, then
    ``labels_missing``)."""

    def text(value: float) -> str:
        return "blank" if np.isnan(value) else str(value)

    details = []
    for row in range(len(differ)):
        old = [*(text(v) for v in store_raw[row]), str(bool(store_missing[row]))]
        new = [*(text(v) for v in release_raw[row]), str(bool(release_missing[row]))]
        parts = [f"{LABEL_COMPARED[c]}: {old[c]} -> {new[c]}" for c in np.flatnonzero(differ[row])]
        details.append("; ".join(parts))
    return details


def diff_release(
    store: ImageStore, reader: ReleaseReader, workers: int | None = None
) -> ReleaseDiff:
    """Compare the release read by ``reader`` (use the reader config the store was ingested
    with) against ``store``; see the module docstring for the kinds."""
    start = time.perf_counter()
    workers = workers if workers is not None else min(8, (os.cpu_count() or 1) + 2)
    index = reader.index()
    release = index.items.copy()
    items = store.items()

    paths = [reader.root.child(p) for p in release["source_path"]]
    hashed = _parallel(file_sha256, paths, workers)
    release["source_sha256"] = [sha for sha, _ in hashed]
    bytes_hashed = sum(size for _, size in hashed)
    reports = _release_reports(reader, release["report_path"], workers)
    release = release.merge(reports, on="report_path", how="left", validate="many_to_one")

    active = items[items["status"] != ItemStatus.RETIRED.value]
    in_release = active["dicom_id"].isin(release["dicom_id"])
    removed = active[~in_release]
    known_active = set(active["dicom_id"])
    new = release[~release["dicom_id"].isin(known_active)]
    retired_index = dict(
        zip(
            items.loc[items["status"] == ItemStatus.RETIRED.value, "dicom_id"],
            items.loc[items["status"] == ItemStatus.RETIRED.value, "index"],
            strict=True,
        )
    )

    both = active[in_release].merge(
        release, on="dicom_id", how="inner", suffixes=("_store", ""), validate="one_to_one"
    )
    ingested = (both["status"] == ItemStatus.OK.value).to_numpy() & (
        both["source_sha256_store"] != ""
    ).to_numpy()
    pixels = ingested & (both["source_sha256_store"] != both["source_sha256"]).to_numpy()

    store_raw = both[[f"{c}_store" for c in CHEXPERT_LABELS]].to_numpy(dtype=np.float64)
    release_raw = both[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)
    store_missing = both["labels_missing_store"].to_numpy(dtype=bool)
    release_missing = both["labels_missing"].to_numpy(dtype=bool)
    label_cells = np.column_stack(
        [
            ~((store_raw == release_raw) | (np.isnan(store_raw) & np.isnan(release_raw))),
            store_missing != release_missing,
        ]
    )
    labels = label_cells.any(axis=1)

    report_cells = np.stack(
        [
            (both[f"{c}_store"].astype(str) != both[c].astype(str)).to_numpy()
            for c in REPORT_COLUMNS
        ],
        axis=1,
    )
    # Reports of quarantined or pending items were never read into the store.
    report = report_cells.any(axis=1) & ingested

    kind = np.full(len(both), ChangeKind.UNCHANGED.value, dtype=object)
    kind[report] = ChangeKind.REPORT_CHANGED.value
    kind[labels] = ChangeKind.LABELS_CHANGED.value
    kind[pixels] = ChangeKind.PIXELS_CHANGED.value
    detail = np.full(len(both), "", dtype=object)
    detail[report] = [
        "report: " + ", ".join(c for c, d in zip(REPORT_COLUMNS, row, strict=True) if d)
        for row in report_cells[report]
    ]
    detail[labels] = _label_detail(
        store_raw[labels],
        store_missing[labels],
        release_raw[labels],
        release_missing[labels],
        label_cells[labels],
    )
    detail[pixels] = [
        f"sha256 {old[:12]} -> {new_sha[:12] or 'missing file'}"
        for old, new_sha in zip(
            both.loc[pixels, "source_sha256_store"], both.loc[pixels, "source_sha256"], strict=True
        )
    ]
    matched = pd.DataFrame(
        {
            "index": both["index"].astype("int64"),
            "dicom_id": both["dicom_id"],
            "study_id": both["study_id"],
            "kind": kind,
            "pixels_differ": pixels,
            "labels_differ": labels,
            "report_differs": report,
            "detail": detail,
        }
    )
    new_rows = pd.DataFrame(
        {
            "index": [int(retired_index.get(d, -1)) for d in new["dicom_id"]],
            "dicom_id": new["dicom_id"],
            "study_id": new["study_id"],
            "kind": ChangeKind.NEW.value,
            "pixels_differ": False,
            "labels_differ": False,
            "report_differs": False,
            "detail": [
                "retired before, back in this release" if d in retired_index else ""
                for d in new["dicom_id"]
            ],
        }
    )
    removed_rows = pd.DataFrame(
        {
            "index": removed["index"].astype("int64"),
            "dicom_id": removed["dicom_id"],
            "study_id": removed["study_id"],
            "kind": ChangeKind.REMOVED.value,
            "pixels_differ": False,
            "labels_differ": False,
            "report_differs": False,
            "detail": "status " + removed["status"],
        }
    )
    frames = [f for f in (matched, new_rows, removed_rows) if len(f)]
    changes = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({c: pd.Series(dtype=object) for c in CHANGE_COLUMNS})
    )
    changes = changes[list(CHANGE_COLUMNS)].sort_values(["kind", "dicom_id"], ignore_index=True)
    diff = ReleaseDiff(
        changes=changes,
        release=release.reset_index(drop=True),
        release_id=_release_id(reader, release, reports),
        release_path=str(reader.root),
        image_format=index.image_format,
        files_hashed=len(paths),
        bytes_hashed=bytes_hashed,
        seconds=time.perf_counter() - start,
    )
    log.info(
        "diff of %s against %s: %s in %.2f s (%d files, %.1f MB hashed)",
        reader.root,
        store.location,
        diff.counts(),
        diff.seconds,
        diff.files_hashed,
        bytes_hashed / 1e6,
    )
    return diff
