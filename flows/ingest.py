"""Ingest flow: a MIMIC-CXR release into a Zarr image store, one Prefect task per shard."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from flows.reports.artifacts import ProgressReporter, artifact_key, table_artifact
from storage.geometry import FitMode
from storage.image_store import ImageStore
from storage.ingest import (
    ShardResult,
    ShardWork,
    ingest_shard,
    plan_ingest,
    summarise_store,
)
from storage.ingest_config import IngestConfig
from storage.lease import StoreLease
from storage.location import Location
from storage.release import ReleaseReader


def _run_name() -> str:
    params = flow_run.parameters
    release = Location.of(str(params.get("release", "release"))).name
    return f"ingest-{release}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@task(
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    task_run_name="ingest-shard-{work.shard}",
)
def ingest_shard_task(
    store: ImageStore,
    reader: ReleaseReader,
    work: ShardWork,
    image_format: Literal["dicom", "jpg"],
    fit: FitMode,
) -> ShardResult:
    return ingest_shard(store, reader, work, image_format, fit)


@flow(name="ingest", flow_run_name=_run_name)
def ingest_flow(release: str, store: str, ingest: IngestConfig = IngestConfig()) -> dict[str, Any]:
    """Read RELEASE (MIMIC-CXR or MIMIC-CXR-JPG layout) into the image store STORE.

    Idempotent and resumable: finished items are skipped, a killed run is completed by
    rerunning it. Bad items go to STORE/quarantine.csv and never stop the run. The run holds
    the store's lease while it writes (storage/lease.py): another writer is refused.

    Args:
        release: release root (holds ``files/`` and the ``mimic-cxr-2.0.0-*.csv[.gz]``).
        store: image store directory (created when missing).
        ingest: the store's geometry (size, shard_items, sharded: fixed when it is created),
            the fit, the reader (labeler, views: default frontal, [] all; uncertainty policy;
            image format) and whether to retry quarantined items.
    """
    reader = ReleaseReader(release, ingest.reader)
    Location.of(store).makedirs()  # the lease lives in it
    with StoreLease(store, owner="ingest", must_exist=False):
        return _ingest_locked(release, store, ingest, reader)


def _ingest_locked(
    release: str, store: str, config: IngestConfig, reader: ReleaseReader
) -> dict[str, Any]:
    """The writing part of :func:`ingest_flow`, run while holding the store's lock."""
    logger = get_run_logger()
    image_store = ImageStore.open_or_create(store, config.size, config.shard_items, config.sharded)
    plan = plan_ingest(image_store, reader, config)
    logger.info("plan: %s in %d shards", plan.counts, len(plan.shards))

    key = artifact_key("ingest", Location.of(store).name)
    progress = ProgressReporter(f"{key}-progress", plan.pending, "items ingested")
    futures = [
        ingest_shard_task.submit(image_store, reader, work, plan.image_format, config.fit)
        for work in plan.shards
    ]
    results: list[ShardResult] = []
    failed: list[str] = []
    sizes = {id(f): len(w.items) for f, w in zip(futures, plan.shards, strict=True)}
    for future in as_completed(futures):
        try:
            results.append(future.result())
        except Exception as exc:  # the shard is retried by Prefect first; then reported
            failed.append(f"{future.task_run_id}: {exc}")
            logger.error("shard task %s failed after retries: %s", future.task_run_id, exc)
        progress.advance(sizes[id(future)])

    image_store.consolidate()
    summary = summarise_store(image_store)
    quarantined_now = sum(sum(r.quarantined.values()) for r in results)
    run = {
        "release": Location.of(release).url,
        "reader": config.reader.as_dict(),
        "fit": config.fit.value,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ingested": sum(r.ok for r in results),
        "quarantined": quarantined_now,
        "failed_shards": len(failed),
    }
    image_store.record_ingest(run)
    table_artifact(
        f"{key}-summary",
        summary,
        f"Store {store}: items by split, view and label; quarantined by reason.",
    )
    table_artifact(
        f"{key}-quarantine",
        image_store.quarantine(),
        "Items not ingested, with the reason.",
    )
    if failed:
        raise RuntimeError(
            f"{len(failed)} shard(s) failed after retries; rerun to resume: {failed[:5]}"
        )
    logger.info(
        "ingest finished: %d ingested, %d quarantined, %d shard(s) failed",
        run["ingested"],
        run["quarantined"],
        run["failed_shards"],
    )
    logger.debug("ingest run: %s", run)
    return run | {
        "plan": plan.counts,
        "store": Location.of(store).url,
        "image_format": plan.image_format,
    }
