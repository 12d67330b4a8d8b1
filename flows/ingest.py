"""Ingest flow: a MIMIC-CXR release into a Zarr image store, one Prefect task per shard."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer, table_artifact
from flows.runtime.retry import worth_retrying
from storage.geometry import FitMode
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.store.image import ImageStore
from storage.store.ingest_shards import (
    IngestPlan,
    ShardResult,
    ShardWork,
    ingest_shard,
    plan_ingest,
    summarise_store,
)
from storage.store.lease import StoreLease
from storage.store.location import Location, location_error


@task(
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=worth_retrying,
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


def ingest_shard_at(
    store: str,
    release: str,
    reader: ReaderConfig,
    work: ShardWork,
    image_format: Literal["dicom", "jpg"],
    fit: FitMode,
) -> ShardResult:
    """:func:`~storage.store.ingest_shards.ingest_shard` in a worker process: it opens the store
    and the
    release at their URLs itself, so only the shard's item list goes to it and counts come
    back (the pixels never pass through the flow's process)."""
    return ingest_shard(
        ImageStore.open(store), ReleaseReader(release, reader), work, image_format, fit
    )


@flow(name="ingest", flow_run_name=run_namer("ingest", "release"))
def ingest_flow(
    release: str, store: str, ingest: IngestConfig = IngestConfig(), workers: int = 1
) -> dict[str, Any]:
    """Read RELEASE (MIMIC-CXR or MIMIC-CXR-JPG layout) into the image store STORE.

    Idempotent and resumable: finished items are skipped, a killed run is completed by
    rerunning it. Bad items go to STORE/quarantine.csv and never stop the run. The run holds
    the store's lease while it writes (storage/store/lease.py): another writer is refused.

    Args:
        release: release root (holds ``files/`` and the ``mimic-cxr-2.0.0-*.csv[.gz]``).
        store: image store directory (created when missing).
        ingest: the store's geometry (size, shard_items, sharded: fixed when it is created),
            the fit, the reader (labeler, views: default frontal, [] all; uncertainty policy;
            image format) and whether to retry quarantined items.
        workers: processes decoding shards (each owns its shards' chunks; pydicom holds the
            GIL, so threads would not help); 1 decodes in this process, as Prefect tasks; 0
            uses one process per CPU.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    reader = ReleaseReader(release, ingest.reader)
    Location.of(store).makedirs()  # the lease lives in it
    with StoreLease(store, owner="ingest", must_exist=False):
        return _ingest_locked(release, store, ingest, reader, workers or os.cpu_count() or 1)


def _in_processes(
    image_store: ImageStore,
    release: str,
    config: IngestConfig,
    plan: IngestPlan,
    workers: int,
    progress: ProgressReporter,
    attempts: int = 3,
) -> tuple[list[ShardResult], list[str]]:
    """Every shard on a pool of ``workers`` processes (spawned: no state shared with this
    one), each shard tried up to ``attempts`` times."""
    context = multiprocessing.get_context("spawn")
    results: list[ShardResult] = []
    failed: list[str] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:

        def submit(work: ShardWork) -> Future[ShardResult]:
            return pool.submit(
                ingest_shard_at,
                image_store.location,
                Location.of(release).url,
                config.reader,
                work,
                plan.image_format,
                config.fit,
            )

        pending = {submit(work): (work, 1) for work in plan.shards}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                work, attempt = pending.pop(future)
                try:
                    results.append(future.result())
                except Exception as exc:
                    if location_error(exc) is not None:  # a full disk: no shard can succeed
                        pool.shutdown(cancel_futures=True)
                        raise
                    if attempt < attempts:
                        pending[submit(work)] = (work, attempt + 1)
                        continue
                    failed.append(f"shard {work.shard}: {exc}")
                    get_run_logger().error("shard %d failed %d times: %s", work.shard, attempt, exc)
                progress.advance(len(work.items))
    return results, failed


def _stop_writers(futures: list[Any]) -> None:
    """Cancel the shard tasks not started and wait for the running ones: the caller releases
    the store's lease afterwards, so no writer of this run outlives it (a shard thread left
    running would write into a store another run may hold by then)."""
    for future in futures:
        wrapped = getattr(future, "wrapped_future", None)
        if wrapped is not None:
            wrapped.cancel()
    for future in futures:
        with contextlib.suppress(BaseException):  # only waiting; the caller re-raises
            future.wait()


def _ingest_locked(
    release: str, store: str, config: IngestConfig, reader: ReleaseReader, workers: int
) -> dict[str, Any]:
    """The writing part of :func:`ingest_flow`, run while holding the store's lock."""
    logger = get_run_logger()
    image_store = ImageStore.open_or_create(store, config.size, config.shard_items, config.sharded)
    plan = plan_ingest(image_store, reader, config)
    logger.info("plan: %s in %d shards", plan.counts, len(plan.shards))

    key = artifact_key("ingest", Location.of(store).name)
    progress = ProgressReporter(f"{key}-progress", plan.pending, "items ingested")
    results: list[ShardResult] = []
    failed: list[str] = []
    if workers > 1 and len(plan.shards) > 1:
        results, failed = _in_processes(image_store, release, config, plan, workers, progress)
    else:
        futures = [
            ingest_shard_task.submit(image_store, reader, work, plan.image_format, config.fit)
            for work in plan.shards
        ]
        sizes = {id(f): len(w.items) for f, w in zip(futures, plan.shards, strict=True)}
        try:
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except Exception as exc:  # the shard is retried by Prefect first; then reported
                    if location_error(exc) is not None:  # not retried; no other shard can succeed
                        raise
                    failed.append(f"{future.task_run_id}: {exc}")
                    logger.error("shard task %s failed after retries: %s", future.task_run_id, exc)
                progress.advance(sizes[id(future)])
        except BaseException:  # SIGTERM / Ctrl-C (KeyboardInterrupt), or a failure here
            _stop_writers(futures)
            raise

    image_store.consolidate()
    summary = summarise_store(image_store)
    # Items refused at decode plus those refused from the tables, new in this run.
    quarantined_now = sum(sum(r.quarantined.values()) for r in results)
    quarantined_now += plan.counts["rejected_now"]
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
