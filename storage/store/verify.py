"""Re-read every finished item of a store and its heatmap versions; un-finish the bad ones.

An item is *finished* when its flag in ``done`` (images) or ``heatmaps_done`` (a heatmap
version) is set. :func:`verify_store` reads each finished item's chunk again and reports it
when

- the read fails: a CRC-32C mismatch (chunks are written with ``Crc32cCodec``, see
  :func:`storage.store.image.pixel_compressors`; zarr raises a plain ``ValueError``
  "Stored and computed checksum do not match"), or any other decode failure. With Zarr
  sharding a damaged shard index makes every item of that shard unreadable: each is
  reported;
- the item holds non-finite values (NaN is the fill value of never-written chunks, so a
  finished item with NaN lost its chunk or was written wrongly);
- its flag chunk itself cannot be read: every item of that chunk is reported, since which
  of them were finished is unknown.

With ``repair`` the flag of every reported item is cleared (a flag chunk that cannot be read
is rewritten as all-clear), so the next ``daug ingest`` re-ingests the image (its status
stays ``ok`` but it is no longer ``done``, see :meth:`ImageStore.finished_mask`) and the
next ``daug precompute`` recomputes the heatmaps. The whole run holds the store's lock
(storage/store/lease.py), so no writer changes a flag chunk between the read and the write.

Stores written before chunks carried checksums still verify: only undecodable and
non-finite chunks can be found there, and :attr:`VerifyReport.unchecksummed` names them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec

from daug_core.strict_json import strict
from storage.errors import StoreFormatError
from storage.provenance import code_version
from storage.store.arrays import clear_flags
from storage.store.heatmaps import HEATMAPS_GROUP, HeatmapStore
from storage.store.image import ImageStore
from storage.store.items import ITEMS_TABLE, item_table_problems
from storage.store.lease import StoreLease

log = logging.getLogger(__name__)

PROBLEM_COLUMNS = ("index", "dicom_id", "array", "reason")
Progress = Callable[[int, int], None]


class CorruptionReason(StrEnum):
    """Why a finished item is not usable. Values start the ``reason`` column."""

    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNREADABLE = "unreadable"
    NON_FINITE = "non_finite"


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_store` found. ``problems`` has one row per (array, item):
    ``index, dicom_id, array, reason`` with ``reason`` = ``<CorruptionReason>: <detail>``."""

    at: str
    checked: int  # finished (array, item) pairs re-read
    corrupted: int  # rows of ``problems``
    cleared: int  # flags cleared by the repair (0 without repair)
    problems: pd.DataFrame
    unchecksummed: tuple[str, ...] = field(default=())  # arrays written without CRC-32C
    # What is wrong with items.csv against the arrays (not repaired: the table is the store's
    # only record of the items' ids, labels and reports).
    table_problems: tuple[str, ...] = field(default=())

    @property
    def clean(self) -> bool:
        return self.corrupted == 0 and not self.table_problems


@dataclass(frozen=True)
class _ArrayPair:
    """A data array and the flag array saying which of its items are finished."""

    name: str  # e.g. "images", "heatmaps/v1/heatmaps"
    data: zarr.Array
    flags_name: str
    flags: zarr.Array


@dataclass
class _Findings:
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # index, array, reason
    items_to_clear: dict[str, list[int]] = field(default_factory=dict)  # flags name -> idx
    chunks_to_reset: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def has_checksums(array: zarr.Array) -> bool:
    """Whether ``array``'s chunks carry a CRC-32C (in the inner codecs when sharded)."""
    codecs = list(array.metadata.codecs) if hasattr(array.metadata, "codecs") else []
    for codec in codecs:
        if isinstance(codec, ShardingCodec):
            codecs.extend(codec.codecs)
    return any(isinstance(c, Crc32cCodec) for c in codecs)


def read_failure_reason(exc: Exception) -> str:
    """``<CorruptionReason>: <detail>`` for an exception raised while reading a chunk."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, ValueError) and "checksum" in text.lower():
        return f"{CorruptionReason.CHECKSUM_MISMATCH.value}: {text}"
    return f"{CorruptionReason.UNREADABLE.value}: {type(exc).__name__}: {text}"


def _pairs(store: ImageStore) -> list[_ArrayPair]:
    pairs = [_ArrayPair("images", store.images, "done", store.done)]
    for version in HeatmapStore.versions(store):
        heat = HeatmapStore(store, version)
        prefix = f"{HEATMAPS_GROUP}/{version}"
        pairs.append(
            _ArrayPair(f"{prefix}/heatmaps", heat.heatmaps, f"{prefix}/heatmaps_done", heat.done)
        )
    return pairs


def _finished_items(pair: _ArrayPair, findings: _Findings) -> np.ndarray:
    """Indices whose flag is set, read chunk by chunk; unreadable flag chunks are reported."""
    n, step = int(pair.flags.shape[0]), int(pair.flags.chunks[0])
    finished: list[np.ndarray] = []
    for start in range(0, n, step):
        stop = min(start + step, n)
        try:
            flags = np.asarray(pair.flags[start:stop], dtype=bool)
        except Exception as exc:  # a damaged flag chunk: which items were done is lost
            reason = read_failure_reason(exc)
            findings.rows.extend((i, pair.flags_name, reason) for i in range(start, stop))
            findings.chunks_to_reset.setdefault(pair.flags_name, []).append((start, stop))
            continue
        finished.append(np.flatnonzero(flags) + start)
    return np.concatenate(finished) if finished else np.zeros(0, dtype=np.int64)


def _check_item(array: zarr.Array, index: int) -> str | None:
    """None when the item reads back finite, else the reason."""
    try:
        values = np.asarray(array[index])
    except Exception as exc:  # checksum mismatch or any other decode failure
        return read_failure_reason(exc)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        return f"{CorruptionReason.NON_FINITE.value}: {bad} of {values.size} values"
    return None


def _repair(store: ImageStore, pairs: list[_ArrayPair], findings: _Findings) -> int:
    by_name = {p.flags_name: p.flags for p in pairs}
    cleared = 0
    for name, spans in findings.chunks_to_reset.items():
        for start, stop in spans:
            by_name[name][start:stop] = np.zeros(stop - start, dtype=bool)
            cleared += stop - start
    for name, indices in findings.items_to_clear.items():
        clear_flags(by_name[name], indices)
        cleared += len(indices)
    log.info("%s: cleared %d finished flags", store.location, cleared)
    return cleared


def check_item_table(store: ImageStore) -> tuple[str, ...]:
    """items.csv against the arrays (:func:`~storage.store.image.item_table_problems`), read
    as text so that a table the typed reader cannot parse is reported too. A table cut short
    (a copy stopped midway, ``head -c``) fails here instead of reading as a smaller store."""
    text = store.tables.read_text(ITEMS_TABLE)
    if text is None:
        if store.finished_without_row(0):
            return (f"items.csv is missing; images holds {len(store)}",)
        return ()
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return (f"items.csv cannot be parsed: {' '.join(str(exc).split())}",)
    return item_table_problems(table, len(store), store.finished_without_row(len(table)))


def verify_store(
    store: ImageStore, repair: bool = True, progress: Progress | None = None
) -> VerifyReport:
    """Re-read every finished item of ``store`` and of each heatmap version (see the module
    docstring); with ``repair`` clear the flags of the reported ones. Holds the store's lock,
    and appends ``{at, checked, corrupted, cleared, repair, code_version}`` to the store's
    ``verifications`` attribute. ``progress(done, total)`` is called as items are read."""
    with StoreLease.for_store(store, owner="verify"):
        table_problems = check_item_table(store)
        pairs = _pairs(store)
        findings = _Findings()
        finished = [(pair, _finished_items(pair, findings)) for pair in pairs]
        total = sum(len(indices) for _, indices in finished)
        checked = 0
        for pair, indices in finished:
            for index in indices.tolist():
                reason = _check_item(pair.data, index)
                if reason is not None:
                    findings.rows.append((index, pair.name, reason))
                    findings.items_to_clear.setdefault(pair.flags_name, []).append(index)
                checked += 1
                if progress is not None:
                    progress(checked, total)
        cleared = _repair(store, pairs, findings) if repair else 0
        problems = _problem_table(store, findings)
        report = VerifyReport(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            checked=checked,
            corrupted=len(problems),
            cleared=cleared,
            problems=problems,
            unchecksummed=tuple(
                name
                for p in pairs
                for name, array in ((p.name, p.data), (p.flags_name, p.flags))
                if not has_checksums(array)
            ),
            table_problems=table_problems,
        )
        entry: dict[str, Any] = {
            "at": report.at,
            "checked": report.checked,
            "corrupted": report.corrupted,
            "cleared": report.cleared,
            "table_problems": list(report.table_problems),
            "repair": repair,
            "code_version": code_version(),
        }
        store.group.attrs.update(
            strict({"verifications": [*store.attrs.get("verifications", []), entry]})
        )
    for problem in report.table_problems:
        log.warning("%s: %s", store.location, problem)
    if report.corrupted:
        first = problems.iloc[0]
        log.warning(
            "%s: %d corrupted items, first %s[%d]: %s",
            store.location,
            report.corrupted,
            first["array"],
            first["index"],
            first["reason"],
        )
    return report


def _problem_table(store: ImageStore, findings: _Findings) -> pd.DataFrame:
    try:
        items = store.items()
        ids = dict(zip(items["index"].tolist(), items["dicom_id"].tolist(), strict=True))
    except StoreFormatError:  # a damaged item table (reported as such): no ids to name
        ids = {}
    table = pd.DataFrame(
        {
            "index": pd.Series([r[0] for r in findings.rows], dtype="int64"),
            "dicom_id": pd.Series([str(ids.get(r[0], "")) for r in findings.rows], dtype=str),
            "array": pd.Series([r[1] for r in findings.rows], dtype=str),
            "reason": pd.Series([r[2] for r in findings.rows], dtype=str),
        },
        columns=list(PROBLEM_COLUMNS),
    )
    return table.sort_values(["array", "index"], kind="stable").reset_index(drop=True)
