"""Apply a :class:`~storage.release.diff.ReleaseDiff` to the store, and keep its release history.

What each kind of change does to the store (nothing is deleted):

- ``labels_changed``: the raw labels, ``y_*``, ``super_*`` and ``labels_missing`` are
  replaced in items.csv (one atomic rewrite); pixels and heatmaps stay.
- ``report_changed``: ``findings``, ``impression``, ``report_source``, ``report_missing``
  replaced the same way.
- ``pixels_changed``: its heatmaps are invalidated in every version (``heatmaps_done``
  cleared, dropped from failures.csv), then its image ``done`` flag is cleared and its
  labels updated. Status stays ``ok`` with ``done`` unset, the state of an interrupted
  ingest: the ingest plan (``finished_mask``) re-ingests it, readers skip it meanwhile, and
  a rerun of the diff still sees the old sha256 and finds it again.
- ``removed``: status ``retired`` (pixels, labels and heatmaps kept, never read: only
  ``ok`` items are used; never ingested again: retired counts as finished).
- ``new``: nothing here; the ingest plan registers and ingests it. A retired item that is
  back in the release gets status ``pending``, its index columns from the release and its
  ``done`` flag cleared, so it is ingested again under its old index.

The order is heatmaps, then image flags, then items.csv: a crash in between leaves only work
that the next run redoes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from daug_core.labels import CHEXPERT_LABELS, LABEL_COLUMNS, SUPER_CLASS_COLUMNS
from daug_core.strict_json import strict
from storage.release.diff import ChangeKind, ReleaseDiff
from storage.store.arrays import clear_flags
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.items import INDEX_COLUMNS, ItemStatus

log = logging.getLogger(__name__)

RELEASES_ATTR = "releases"
LABEL_UPDATE_COLUMNS: tuple[str, ...] = (
    *CHEXPERT_LABELS,
    *LABEL_COLUMNS,
    *SUPER_CLASS_COLUMNS,
    "labels_missing",
)
REPORT_UPDATE_COLUMNS: tuple[str, ...] = (
    "findings",
    "impression",
    "report_source",
    "report_missing",
)


@dataclass(frozen=True)
class AppliedChanges:
    """What :func:`apply_release_diff` changed in the store."""

    labels_updated: int
    reports_updated: int
    pixels_invalidated: int  # image ``done`` cleared: re-ingested by the next ingest
    retired: int
    restored: int  # retired items back in the release: pending again
    heatmaps_invalidated: dict[str, int] = field(default_factory=dict)  # version -> items

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _release_rows(
    diff: ReleaseDiff, changes: pd.DataFrame, columns: tuple[str, ...]
) -> pd.DataFrame:
    """``index`` + ``columns`` of the release's rows for the given changes."""
    release = diff.release.set_index("dicom_id")
    rows = release.loc[changes["dicom_id"], list(columns)].reset_index(drop=True)
    return rows.assign(index=changes["index"].to_numpy(dtype=np.int64))


def apply_release_diff(store: ImageStore, diff: ReleaseDiff) -> AppliedChanges:
    """Update ``store`` in place for ``diff`` (see the module docstring). The caller holds
    the store's writer lock. Idempotent: applying the same diff again changes nothing."""
    changes = diff.changes
    pixels = changes[changes["pixels_differ"]]
    restored = changes[(changes["kind"] == ChangeKind.NEW.value) & (changes["index"] >= 0)]
    removed = changes[changes["kind"] == ChangeKind.REMOVED.value]
    labels = changes[changes["labels_differ"]]
    reports = changes[changes["report_differs"] & ~changes["pixels_differ"]]

    invalidated: dict[str, int] = {}
    pixel_indices = pixels["index"].to_numpy(dtype=np.int64)
    if len(pixel_indices):
        for version in HeatmapStore.versions(store):
            heatmaps = HeatmapStore(store, version)
            was_done = heatmaps.done_mask()
            touched = pixel_indices[pixel_indices < len(was_done)]
            heatmaps.invalidate(touched)
            invalidated[version] = int(was_done[touched].sum())
    redo = np.concatenate([pixel_indices, restored["index"].to_numpy(dtype=np.int64)])
    if len(redo):
        clear_flags(store.done, redo)

    updates: list[pd.DataFrame] = []
    if len(labels):
        updates.append(_release_rows(diff, labels, LABEL_UPDATE_COLUMNS))
    if len(reports):
        updates.append(_release_rows(diff, reports, REPORT_UPDATE_COLUMNS))
    if len(restored):
        back = _release_rows(
            diff,
            restored,
            tuple(c for c in INDEX_COLUMNS if c != "dicom_id") + LABEL_UPDATE_COLUMNS,
        )
        updates.append(back.assign(status=ItemStatus.PENDING.value, reason=""))
    if len(removed):
        updates.append(
            pd.DataFrame(
                {
                    "index": removed["index"].to_numpy(dtype=np.int64),
                    "status": ItemStatus.RETIRED.value,
                    "reason": f"retired: not in release {diff.release_id} ({diff.release_path})",
                }
            )
        )
    # One rewrite of items.csv per group of columns; each group is a whole-table atomic write.
    for update in updates:
        store.update_items(update)
    applied = AppliedChanges(
        labels_updated=len(labels),
        reports_updated=len(reports),
        pixels_invalidated=len(pixels),
        retired=len(removed),
        restored=len(restored),
        heatmaps_invalidated=invalidated,
    )
    log.info("applied release %s to %s: %s", diff.release_id, store.location, applied)
    return applied


# ---- release history ---------------------------------------------------------------------
def release_history(store: ImageStore) -> list[dict[str, Any]]:
    """Every release the store has seen, oldest first: ``release_id`` (None for releases
    only ingested, before a reprocess recorded them), ``path``, ``seen_at``,
    ``last_seen_at``, ``counts`` (items per kind when first reprocessed; ingested and
    quarantined for ingest-only entries) and ``times_seen``."""
    attrs = store.attrs
    if RELEASES_ATTR in attrs:
        return [dict(r) for r in attrs[RELEASES_ATTR]]
    seen: dict[str, dict[str, Any]] = {}
    for run in attrs.get("ingests", []):
        path = str(run.get("release", ""))
        entry = seen.setdefault(
            path,
            {
                "release_id": None,
                "path": path,
                "name": Path(path).name,
                "seen_at": run.get("at"),
                "last_seen_at": run.get("at"),
                "counts": {"ingested": 0, "quarantined": 0},
                "times_seen": 0,
                "via": "ingest",
            },
        )
        entry["last_seen_at"] = run.get("at")
        entry["times_seen"] += 1
        entry["counts"]["ingested"] += int(run.get("ingested", 0))
        entry["counts"]["quarantined"] += int(run.get("quarantined", 0))
    return list(seen.values())


def record_release(
    store: ImageStore, diff: ReleaseDiff, seen_at: datetime | None = None
) -> dict[str, Any]:
    """Add ``diff``'s release to the store's history (attrs ``releases``); a release seen
    before (same content id) only gets ``last_seen_at`` and ``times_seen`` updated.
    Returns the entry."""
    at = (seen_at or datetime.now(UTC)).isoformat(timespec="seconds")
    history = release_history(store)
    for entry in history:
        if entry.get("release_id") == diff.release_id:
            entry["last_seen_at"] = at
            entry["times_seen"] = int(entry.get("times_seen", 1)) + 1
            entry["path"] = diff.release_path
            break
    else:
        entry = {
            "release_id": diff.release_id,
            "path": diff.release_path,
            "name": Path(diff.release_path).name,
            "seen_at": at,
            "last_seen_at": at,
            "counts": diff.counts(),
            "times_seen": 1,
            "via": "reprocess",
        }
        history.append(entry)
    store.group.attrs.update(strict({RELEASES_ATTR: history}))
    return entry
