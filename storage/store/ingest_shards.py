"""Release -> image store: plan the work in shards, then ingest one shard at a time.

Plain functions with no orchestration: the Prefect flow (flows/ingest.py) runs
:func:`ingest_shard` as one task per shard, and the benchmark calls the same functions in
a loop to measure the flow's overhead.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from daug_core.labels import SUPER_CLASS_COLUMNS
from storage.errors import ItemError, QuarantineReason, StoreFormatError
from storage.geometry import FitMode, fit_to_square
from storage.release.ingest_config import IngestConfig
from storage.release.reader import ReleaseReader
from storage.store.image import ImageStore
from storage.store.items import ItemStatus

log = logging.getLogger(__name__)


def store_fit_mode(store: ImageStore) -> FitMode:
    """How the store's images were fitted into their square (its ingests' ``fit``): what a
    ground-truth mask must go through to land on the same pixels. Pad for a store that
    records no fit (stores made before it was recorded were padded)."""
    fits = {str(run.get("fit", FitMode.PAD.value)) for run in store.attrs.get("ingests", [])}
    if len(fits) > 1:
        raise StoreFormatError(
            f"{store.location} was ingested with several fit modes {sorted(fits)}: its images "
            "do not share one geometry"
        )
    return FitMode(fits.pop()) if fits else FitMode.PAD


@dataclass(frozen=True)
class ShardItem:
    index: int
    dicom_id: str
    source_path: str
    report_path: str


@dataclass(frozen=True)
class ShardWork:
    """The items of one store shard that still need ingesting (one writer owns a shard)."""

    shard: int
    items: tuple[ShardItem, ...]


@dataclass(frozen=True)
class IngestPlan:
    image_format: Literal["dicom", "jpg"]
    shards: tuple[ShardWork, ...]
    counts: dict[str, int]

    @property
    def pending(self) -> int:
        return sum(len(s.items) for s in self.shards)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    ok: int
    quarantined: dict[str, int]  # reason -> count
    report_missing: int
    seconds: float


def plan_ingest(store: ImageStore, reader: ReleaseReader, config: IngestConfig) -> IngestPlan:
    """Index the release, register new items in the store, and list unfinished work.

    Leftover results of an interrupted run are folded in first, so that what was
    finished is not redone.
    """
    store.hold_policy(config)
    store.consolidate()
    index = reader.index()
    rejected_now = store.add_rejects(index.rejected)
    registered = store.register(index.items)
    finished = store.finished_mask(config.retry_quarantined)
    todo = registered[~finished[registered["index"].to_numpy()]].sort_values("index")
    shards = tuple(
        ShardWork(
            shard=int(shard),
            items=tuple(
                ShardItem(int(r.index), str(r.dicom_id), str(r.source_path), str(r.report_path))
                for r in group.itertuples(index=False)
            ),
        )
        for shard, group in todo.groupby(todo["index"] // store.shard_items, sort=True)
    )
    counts = dict(index.counts) | {
        "already_finished": int(len(registered) - len(todo)),
        "to_ingest": len(todo),
        "rejected_now": rejected_now,
    }
    return IngestPlan(index.image_format, shards, counts)


def ingest_shard(
    store: ImageStore,
    reader: ReleaseReader,
    work: ShardWork,
    image_format: Literal["dicom", "jpg"],
    fit: FitMode = FitMode.PAD,
) -> ShardResult:
    """Decode, resize and write the items of one shard; bad items go to quarantine.

    Write order: pixels, then the shard's result table, then ``done`` (see
    storage/store/image.py for why this order makes a crash at any point harmless).
    """
    start = time.perf_counter()
    pixels: list[np.ndarray] = []
    ok_indices: list[int] = []
    rows: list[dict[str, object]] = []
    reasons: Counter[str] = Counter()
    for item in work.items:
        row: dict[str, object] = {"index": item.index}
        try:
            read = reader.read_item(item.dicom_id, item.source_path, item.report_path, image_format)
            pixels.append(fit_to_square(read.pixels, store.size, fit))
        except ItemError as exc:
            reason = exc.reason.value
            row |= {"status": ItemStatus.QUARANTINED.value, "reason": f"{reason}: {exc.detail}"}
            reasons[reason] += 1
            log.warning("quarantined %s", exc)
        except Exception as exc:  # an unforeseen decoder failure must not stop the run
            reason = QuarantineReason.DECODE_ERROR.value
            row |= {
                "status": ItemStatus.QUARANTINED.value,
                "reason": f"{reason}: {type(exc).__name__}: {exc}",
            }
            reasons[reason] += 1
            log.exception("unexpected failure decoding %s", item.dicom_id)
        else:
            ok_indices.append(item.index)
            row |= {
                "status": ItemStatus.OK.value,
                "reason": "",
                "source_sha256": read.source_sha256,
                "report_missing": read.report_missing,
                "report_source": read.report.source,
                "findings": read.report.findings,
                "impression": read.report.impression,
            }
        rows.append(row)
    # A refused item's pixels are NaN (the store's fill) again, so that what an interrupted
    # earlier attempt wrote there does not stay behind.
    by_index = dict(zip(ok_indices, pixels, strict=True))
    blank = np.full((store.size, store.size), np.nan, dtype=np.float32)
    store.write_images(
        [item.index for item in work.items],
        np.stack([by_index.get(item.index, blank) for item in work.items]),
    )
    store.write_part(work.shard, pd.DataFrame(rows))
    store.mark_done(ok_indices)
    missing = sum(1 for r in rows if r.get("report_missing") is True)
    return ShardResult(
        shard=work.shard,
        ok=len(ok_indices),
        quarantined=dict(reasons),
        report_missing=missing,
        seconds=time.perf_counter() - start,
    )


def summarise_store(store: ImageStore) -> pd.DataFrame:
    """Counts by split, view and super-class label (positives overall and per split), and
    quarantined items by reason."""
    items = store.items()
    ok = items[items["status"] == ItemStatus.OK.value]
    rows: list[dict[str, object]] = []
    for column in ("split", "view"):
        for value, count in ok[column].value_counts().sort_index().items():
            rows.append({"group": column, "value": value, "items": int(count)})
    # Positives per super-class, all splits and per split: a release's train-split counts can be
    # compared with a paper's (the official DAug counts are of its train split).
    for column in SUPER_CLASS_COLUMNS:
        rows.append({"group": "positive", "value": column, "items": int((ok[column] == 1).sum())})
    for split, part in ok.groupby("split", sort=True):
        for column in SUPER_CLASS_COLUMNS:
            positives = int((part[column] == 1).sum())
            rows.append({"group": f"positive, {split}", "value": column, "items": positives})
    quarantine = store.quarantine()
    reasons = quarantine["reason"].str.split(":").str[0].value_counts().sort_index()
    for reason, count in reasons.items():
        rows.append({"group": "quarantined", "value": reason, "items": int(count)})
    rows.append({"group": "total", "value": "ok", "items": len(ok)})
    rows.append(
        {"group": "total", "value": "report_missing", "items": int(ok["report_missing"].sum())}
    )
    return pd.DataFrame(rows)
