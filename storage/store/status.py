"""What a store holds, for people: releases seen, items by state, heatmap versions, the last
evaluation. Also where the store remembers its last evaluation (attrs ``last_evaluation``).

Item states: ``ok`` (ingested, usable), ``pending`` (registered but not ingested, or ``ok``
with ``done`` unset: waiting to be re-ingested), ``quarantined``, ``retired`` (in the store,
not in the latest release).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from daug_core.strict_json import float_or_nan, strict
from storage.release.update import release_history
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.items import ItemStatus
from storage.store.lease import StoreLease, StoreLockedError
from storage.store.location import Location

log = logging.getLogger(__name__)

LAST_EVALUATION_ATTR = "last_evaluation"
CURRENT_HEATMAPS_ATTR = "current_heatmap_version"
STATES: tuple[str, ...] = (
    ItemStatus.OK.value,
    ItemStatus.PENDING.value,
    ItemStatus.QUARANTINED.value,
    ItemStatus.RETIRED.value,
)


@dataclass(frozen=True)
class HeatmapVersionStatus:
    version: str
    done: int  # items with heatmaps
    usable_done: int  # of which ok and ingested now
    failures: int
    targets: tuple[str, ...]
    summary: str  # preset, guidance numbers, checkpoints (short sha256)
    created: str


@dataclass(frozen=True)
class StoreStatus:
    location: str
    size: int
    items: int
    states: pd.DataFrame  # one row per split, one column per state, plus "total"
    releases: list[dict[str, Any]]
    ingests: int
    heatmaps: tuple[HeatmapVersionStatus, ...]
    current_heatmaps: str | None
    last_evaluation: dict[str, Any] | None


def item_states(store: ImageStore) -> pd.Series:
    """The state of every item (index order; see the module docstring)."""
    items = store.items()
    state = items["status"].to_numpy(dtype=object).copy()
    done = store.done_mask()[items["index"].to_numpy()]
    state[(state == ItemStatus.OK.value) & ~done] = ItemStatus.PENDING.value
    return pd.Series(state, index=items["index"].to_numpy(), name="state")


def current_heatmap_version(store: ImageStore) -> str | None:
    """The version the store's last reprocess wrote (attrs), else the newest one created."""
    versions = HeatmapStore.versions(store)
    recorded = store.attrs.get(CURRENT_HEATMAPS_ATTR)
    if recorded in versions:
        return str(recorded)
    if not versions:
        return None
    created = {v: str(HeatmapStore(store, v).attrs.get("created", "")) for v in versions}
    return max(versions, key=lambda v: (created[v], v))


def store_status(store: ImageStore) -> StoreStatus:
    items = store.items()
    states = pd.crosstab(
        items["split"].to_numpy(), item_states(store).to_numpy(), rownames=["split"]
    ).reindex(columns=list(STATES), fill_value=0)
    states.columns.name = None
    states.loc["total"] = states.sum(axis=0)
    usable_indices = items["index"].to_numpy()[store.usable_mask(items)]
    versions = []
    for version in HeatmapStore.versions(store):
        heat = HeatmapStore(store, version)
        done = heat.done_mask()
        p = heat.provenance
        versions.append(
            HeatmapVersionStatus(
                version=version,
                done=int(done.sum()),
                usable_done=int(heat.done_for(usable_indices).sum()),
                failures=len(heat.failures()),
                targets=p.targets,
                summary=p.summary(),
                created=str(heat.attrs.get("created", "")),
            )
        )
    return StoreStatus(
        location=store.location,
        size=store.size,
        items=len(items),
        states=states,
        releases=release_history(store),
        ingests=len(store.attrs.get("ingests", [])),
        heatmaps=tuple(versions),
        current_heatmaps=current_heatmap_version(store),
        last_evaluation=last_evaluation(store),
    )


def format_status(status: StoreStatus) -> str:
    """Plain-text summary (what ``daug status`` prints)."""
    lines = [f"store {status.location}: {status.items} items of {status.size} px", ""]
    lines.append(f"releases seen ({len(status.releases)}; {status.ingests} ingest runs):")
    for r in status.releases or [{}]:
        if not r:
            lines.append("  none recorded")
            continue
        counts = ", ".join(f"{k} {v}" for k, v in r.get("counts", {}).items() if v)
        lines.append(
            f"  {r.get('release_id') or '(ingest)'}  {r.get('path')}  first {r.get('seen_at')}"
            f", last {r.get('last_seen_at')}, seen {r.get('times_seen', 1)}x"
            f"{': ' + counts if counts else ''}"
        )
    lines += ["", "items by state and split:"]
    lines += ["  " + line for line in status.states.to_string().splitlines()]
    lines += ["", "heatmap versions:"]
    if not status.heatmaps:
        lines.append("  none")
    for h in status.heatmaps:
        mark = " (current)" if h.version == status.current_heatmaps else ""
        lines.append(
            f"  {h.version}{mark}: {h.done} done ({h.usable_done} of ok items), "
            f"{h.failures} failed, K={len(h.targets)} [{', '.join(h.targets)}], "
            f"created {h.created}"
        )
        lines.append(f"      {h.summary}")
    lines += ["", "last evaluation:"]
    evaluation = status.last_evaluation
    if evaluation is None:
        lines.append("  none recorded")
    else:
        lines.append(
            f"  {evaluation.get('at')}  {evaluation.get('checkpoint')} "
            f"(heatmaps {evaluation.get('heatmap_version')}), metrics {evaluation.get('path')}"
        )
        for name, value in evaluation.get("headline", {}).items():
            lines.append(f"    {name}: {value:.4f}")
    return "\n".join(lines)


# ---- the last evaluation -------------------------------------------------------------------
def record_evaluation(
    store: ImageStore, metrics_path: str | os.PathLike[str], metrics: dict[str, Any]
) -> dict[str, Any]:
    """Remember an evaluation of a model on this store (attrs ``last_evaluation``): where
    its metrics.json is, the checkpoint and its headline metrics. Returns the entry."""
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "path": Location.of(metrics_path).url,
        "checkpoint": metrics.get("checkpoint"),
        "checkpoint_sha256": metrics.get("checkpoint_sha256"),
        "heatmap_version": metrics.get("heatmap_version"),
        "test_items": metrics.get("test_items"),
        "headline": {k: float(v) for k, v in metrics.get("headline", {}).items()},
    }
    store.group.attrs.update(strict({LAST_EVALUATION_ATTR: entry}))
    return entry


def remember_evaluation(
    store: str | os.PathLike[str], metrics_path: str | os.PathLike[str], metrics: dict[str, Any]
) -> dict[str, Any] | None:
    """:func:`record_evaluation` under the store's lease, like every write to a store. A store
    this run cannot write (read-only to it, or leased by a running writer) keeps its earlier
    record: the evaluation itself stands, the reason is logged, and None is returned."""
    try:
        with StoreLease(store, owner="evaluate"):
            return record_evaluation(ImageStore.open(store), metrics_path, metrics)
    except StoreLockedError as exc:
        reason = str(exc)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        reason = f"the store is not writable ({exc.strerror or exc})"
    log.warning("the evaluation is not recorded in %s (daug status): %s", store, reason)
    return None


def last_evaluation(store: ImageStore) -> dict[str, Any] | None:
    """The entry :func:`record_evaluation` wrote (an undefined headline metric, stored as
    ``null``, reads as NaN), or None."""
    entry = store.attrs.get(LAST_EVALUATION_ATTR)
    if not isinstance(entry, dict):
        return None
    headline = {k: float_or_nan(v) for k, v in dict(entry.get("headline", {})).items()}
    return dict(entry) | {"headline": headline}


def metric_deltas(before: dict[str, float] | None, after: dict[str, float]) -> pd.DataFrame:
    """``metric, before, after, delta`` for every headline metric of ``after`` (NaN
    where there is no earlier value)."""
    before = before or {}
    rows = [
        {
            "metric": name,
            "before": float(before.get(name, np.nan)),
            "after": float(value),
            "delta": float(value) - float(before.get(name, np.nan)),
        }
        for name, value in after.items()
    ]
    return pd.DataFrame(rows, columns=["metric", "before", "after", "delta"])
