"""Precompute flow: DAug heatmaps for the ingested images of a store, one Prefect task per shard.

Each shard task reads its pending images and sends them in batches to a pool of Ray actors
that hold the UNet and classifier (loaded once per actor); the task then writes the shard's
heatmaps, its failure part and its ``heatmaps_done`` chunk (it is the shard's only writer).
What the heatmaps are is one :class:`~daug_core.heatmap_settings.HeatmapSettings`; how they are
computed, one :class:`~flows.heatmap_actors.PoolSettings`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from daug_core.checkpoints import CLASSIFIER_DIR, GENERATOR_DIR, checkpoint_sha256
from daug_core.heatmap_settings import HeatmapSettings
from flows.heatmap_actors import RayHeatmapPool, WorkerSpec
from flows.pool import PoolSettings, actor_count, connect_ray
from flows.reports import precompute as report
from flows.reports.artifacts import ProgressReporter, artifact_key
from storage.heatmap_store import DEFAULT_VERSION, HeatmapProvenance, HeatmapStore
from storage.image_store import ImageStore
from storage.locks import StoreLock
from storage.precompute import (
    HeatmapComputer,
    HeatmapShardResult,
    HeatmapShardWork,
    plan_heatmaps,
    precompute_shard,
)
from storage.provenance import code_version

log = logging.getLogger(__name__)


def _run_name() -> str:
    params = flow_run.parameters
    store = Path(str(params.get("store", "store"))).name
    version = params.get("heatmap_version", DEFAULT_VERSION)
    return f"precompute-{store}-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def heatmap_provenance(settings: HeatmapSettings, checkpoints: Path) -> HeatmapProvenance:
    """Provenance of heatmaps computed with ``settings`` from the checkpoints in
    ``checkpoints`` (generator/ and classifier/)."""
    config = settings.config()
    return HeatmapProvenance(
        targets=settings.target_names(config.class_names),
        translation=config.translation,
        preset=config.name,
        image_size=config.image_size,
        generator_sha256=checkpoint_sha256(checkpoints / GENERATOR_DIR),
        classifier_sha256=checkpoint_sha256(checkpoints / CLASSIFIER_DIR),
    )


def worker_spec(
    settings: HeatmapSettings, targets: tuple[str, ...], checkpoints: Path, pool: PoolSettings
) -> WorkerSpec:
    """What each actor loads: the checkpoints, the settings' config and targets."""
    return WorkerSpec(
        generator_dir=str(checkpoints / GENERATOR_DIR),
        classifier_dir=str(checkpoints / CLASSIFIER_DIR),
        config=settings.config(),
        targets=targets,
        torch_threads=pool.torch_threads,
        device=pool.device,
    )


@task(
    retries=2,
    retry_delay_seconds=[2, 10],
    cache_policy=NO_CACHE,
    task_run_name="heatmaps-shard-{work.shard}",
)
def precompute_shard_task(
    heatmaps: HeatmapStore,
    images: ImageStore,
    work: HeatmapShardWork,
    computer: HeatmapComputer,
    batch_size: int,
) -> HeatmapShardResult:
    return precompute_shard(heatmaps, images, work, computer, batch_size)


@flow(name="precompute", flow_run_name=_run_name)
def precompute_flow(
    store: str,
    checkpoints: str,
    heatmaps: HeatmapSettings = HeatmapSettings(),
    pool: PoolSettings = PoolSettings(),
    splits: list[str] | None = None,
    heatmap_version: str = DEFAULT_VERSION,
    retry_failed: bool = False,
    examples: int = 6,
) -> dict[str, Any]:
    """Compute DAug heatmaps for STORE's ingested images into STORE/heatmaps/HEATMAP_VERSION.

    Idempotent and resumable: done items are skipped; a killed run is completed by rerunning
    it. A version holds one provenance: other checkpoints, targets or guidance numbers are
    refused unless written to a new ``heatmap_version``. Items that fail are listed in
    ``heatmaps/HEATMAP_VERSION/failures.csv`` and never stop the run. The run holds STORE/.daug.lock
    while it writes: another writer on the same store is refused.

    Args:
        store: image store directory (from the ingest flow).
        checkpoints: train-generator output holding ``generator/`` and ``classifier/``.
        heatmaps: what the heatmaps are: preset, targets (default +c for every class,
            +No Finding first) and translation numbers (None: the preset's).
        pool: the Ray actor pool: images per call, actors (0: as many as the cluster fits),
            CPUs and GPUs per actor, cluster address.
        splits: only items of these splits (default: all).
        heatmap_version: heatmap version name (a sub-group of STORE/heatmaps).
        retry_failed: compute items that failed in an earlier run again.
        examples: items shown in the example overlay grid.
    """
    started = time.perf_counter()
    ckpt = Path(checkpoints)
    provenance = heatmap_provenance(heatmaps, ckpt)
    with StoreLock(Path(store), owner=f"precompute:{heatmap_version}"):
        return _precompute_locked(
            store,
            heatmap_version,
            worker_spec(heatmaps, provenance.targets, ckpt, pool),
            provenance,
            pool,
            splits=splits,
            retry_failed=retry_failed,
            examples=examples,
            started=started,
        )


def _precompute_locked(
    store: str,
    version: str,
    spec: WorkerSpec,
    provenance: HeatmapProvenance,
    pool: PoolSettings,
    *,
    splits: list[str] | None,
    retry_failed: bool,
    examples: int,
    started: float,
) -> dict[str, Any]:
    """The writing part of :func:`precompute_flow`, run while holding the store's lock."""
    logger = get_run_logger()
    image_store = ImageStore.open(store)
    heatmap_store = HeatmapStore.open_or_create(image_store, provenance, version)
    plan = plan_heatmaps(heatmap_store, image_store, splits, retry_failed)
    logger.info(
        "heatmaps %s: %d selected, %d already done, %d failed before, %d to compute in %d shards",
        version,
        plan.selected,
        plan.already_done,
        plan.skipped_failed,
        plan.pending,
        len(plan.shards),
    )

    key = artifact_key("precompute", Path(store).name, version)
    progress = ProgressReporter(f"{key}-progress", plan.pending, "items with heatmaps")
    results: list[HeatmapShardResult] = []
    failed_shards: list[str] = []
    compute_started = time.perf_counter()
    actors = pool.actors
    if plan.shards:
        started_ray = connect_ray(pool.ray_address)
        actors = actor_count(pool)
        ray_pool = RayHeatmapPool(spec, actors, pool.cpus_per_actor, pool.gpus_per_actor)
        logger.info("%d heatmap actor(s) ready after %.1f s", actors, time.perf_counter() - started)
        compute_started = time.perf_counter()
        try:
            futures = [
                precompute_shard_task.submit(
                    heatmap_store, image_store, work, ray_pool, pool.batch_size
                )
                for work in plan.shards
            ]
            sizes = {id(f): len(w.indices) for f, w in zip(futures, plan.shards, strict=True)}
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except Exception as exc:  # retried by Prefect first; then reported
                    failed_shards.append(f"{future.task_run_id}: {exc}")
                    logger.error("shard task %s failed after retries: %s", future.task_run_id, exc)
                progress.advance(sizes[id(future)])
        finally:
            ray_pool.shutdown()
            if started_ray:
                import ray

                ray.shutdown()
    compute_seconds = time.perf_counter() - compute_started
    heatmap_store.consolidate()

    summary = report.summary_table(
        results, provenance.targets, plan.already_done, plan.skipped_failed, compute_seconds
    )
    done_now = sum(r.done for r in results)
    run_dir = Path(store) / "_runs" / f"precompute-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(run_dir / "summary.csv", index=False)
    example_indices = np.flatnonzero(heatmap_store.done_mask())[: max(0, examples)]
    grid = report.plot_examples(image_store, heatmap_store, example_indices, run_dir)
    failures = heatmap_store.failures()
    run = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "done": done_now,
        "failed": int(sum(sum(r.failed.values()) for r in results)),
        "already_done": plan.already_done,
        "failed_shards": len(failed_shards),
        "seconds": round(compute_seconds, 2),
        "actors": actors,
        "batch_size": pool.batch_size,
        "max_batch": spec.config.inference.max_batch,
        "splits": splits,
    }
    heatmap_store.record_run(run)
    report.publish(key, store, version, provenance, summary, failures, run, grid, run_dir)
    if failed_shards:
        raise RuntimeError(
            f"{len(failed_shards)} shard(s) failed after retries; rerun to resume: "
            f"{failed_shards[:5]}"
        )
    logger.info(
        "precompute finished: %d done, %d failed, %d already done, %.1f s",
        run["done"],
        run["failed"],
        run["already_done"],
        run["seconds"],
    )
    logger.debug("precompute run: %s", run)
    return run | {
        "store": str(Path(store).resolve()),
        "version": version,
        "targets": list(provenance.targets),
        "selected": plan.selected,
        "skipped_failed": plan.skipped_failed,
        "failures": len(failures),
        "run_dir": str(run_dir.resolve()),
        "examples": str(grid) if grid else None,
        "image_class_per_second": (
            done_now * len(provenance.targets) / compute_seconds if compute_seconds > 0 else 0.0
        ),
    }
