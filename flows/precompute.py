"""Precompute flow: DAug heatmaps for the ingested images of a store, one Prefect task per shard.

Each shard task reads its pending images and sends them in batches to a pool of Ray actors
that hold the UNet and classifier (loaded once per actor); the task then writes the shard's
heatmaps, its failure part and its ``heatmaps_done`` chunk (it is the shard's only writer).
What the heatmaps are is one :class:`~daug_core.diffusion.heatmap_settings.HeatmapSettings`; how
they are
computed, one :class:`~flows.runtime.actors.PoolSettings`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR, MODEL_JSON, UNET_DIR
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import preset
from daug_core.settings import CheckpointError, ConfigError
from flows.reports import precompute as report
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder
from flows.runtime.actors import WorkerSpec, start_actors
from flows.runtime.dispatch import DispatchReport, dispatch
from flows.runtime.pool import PoolSettings, actor_count, connect_ray
from storage.datasets.teacher import stratified_selection
from storage.errors import StoreFormatError
from storage.provenance import code_version
from storage.store.checkpoint_cache import cached_checkpoint
from storage.store.heatmap_shards import ShardTask, plan_heatmaps
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore
from storage.store.lease import StoreLease
from storage.store.location import Location

log = logging.getLogger(__name__)


def heatmap_provenance(
    settings: HeatmapSettings, checkpoints: str | os.PathLike[str]
) -> HeatmapProvenance:
    """Provenance of heatmaps computed with ``settings`` from the checkpoints at
    ``checkpoints`` (a train-generator output folder or its URL: generator/, classifier/)."""
    check_sizes(settings, checkpoints)
    config = settings.config()
    root = Location.of(checkpoints)
    return HeatmapProvenance(
        targets=settings.target_names(config.class_names),
        translation=config.translation,
        preset=config.name,
        image_size=config.image_size,
        generator_sha256=checkpoint_digest(root.child(GENERATOR_DIR)),
        classifier_sha256=checkpoint_digest(root.child(CLASSIFIER_DIR)),
    )


def checkpoint_digest(where: Location) -> str:
    """The weights' sha256 of a checkpoint folder; one on object storage is fetched into this
    node's cache first (and then found there by the workers of this node)."""
    if where.is_local:
        return checkpoint_sha256(where.local_path())
    with tempfile.TemporaryDirectory(prefix="daug-checkpoint-") as tmp:
        digest = checkpoint_sha256(where.get_to(Path(tmp) / where.name))
    cached_checkpoint(where, digest, checkpoint_sha256)
    return digest


def student_provenance(student: str | os.PathLike[str]) -> HeatmapProvenance:
    """The provenance of heatmaps made by the student at ``student``: its teacher version's,
    with the student's weights' sha256 and the teacher version's name."""
    where = Location.of(student)
    header_file = where.child(MODEL_JSON)
    if not header_file.exists():
        raise CheckpointError(where.url, f"holds no {MODEL_JSON}: not a checkpoint")
    header = json.loads(header_file.read_text())
    if header.get("kind") != "student":
        raise CheckpointError(where.url, f"holds a {header.get('kind')} checkpoint, not a student")
    teacher = HeatmapProvenance.from_dict(header["teacher"])
    targets = tuple(header.get("targets", ()))
    if targets != teacher.targets:
        # Channel k of the student's output is heat for targets[k]: the version would label
        # its channels with the teacher's targets.
        raise CheckpointError(
            where.url,
            f"a student of targets {list(targets)} with the provenance of teacher targets "
            f"{list(teacher.targets)}",
        )
    size = int(header["config"]["image_size"])
    if size != teacher.image_size:
        raise CheckpointError(
            where.url, f"a {size} px student of {teacher.image_size} px teacher heatmaps"
        )
    return dataclasses.replace(
        teacher,
        student_sha256=checkpoint_digest(where),
        teacher_version=str(header["teacher_version"]),
    )


def student_spec(
    provenance: HeatmapProvenance, student: str | os.PathLike[str], pool: PoolSettings
) -> WorkerSpec:
    """What each actor loads to make a student's heatmaps: the student (one forward pass per
    image) at its teacher's image size."""
    config = dataclasses.replace(preset(provenance.preset), translation=provenance.translation)
    return WorkerSpec(
        generator_dir="",
        classifier_dir="",
        config=dataclasses.replace(config, inference=pool.inference.over(config.inference)),
        targets=provenance.targets,
        torch_threads=pool.torch_threads,
        device=pool.device,
        student_dir=Location.of(student).url,
        student_sha256=provenance.student_sha256,
    )


def check_sizes(
    settings: HeatmapSettings, checkpoints: str | os.PathLike[str], store: str | None = None
) -> None:
    """The preset's image size against the generator's (a UNet runs at any size, so a 64 px
    model under the 512 px paper preset would run, for hours, on upsampled images) and the
    store's (smaller images would be upsampled): a ConfigError / StoreFormatError before any
    work, as ``train-generator`` refuses a store smaller than its preset."""
    size = settings.config().image_size
    unet = Location.of(checkpoints).child(GENERATOR_DIR, UNET_DIR, "config.json")
    if unet.exists():
        trained = int(json.loads(unet.read_text())["sample_size"])
        if trained != size:
            raise ConfigError(
                f"{Location.of(checkpoints).child(GENERATOR_DIR)} holds a {trained} px generator; "
                f"the {settings.preset} preset computes heatmaps at {size} px: pass the preset "
                "the checkpoints were trained with"
            )
    if store is not None:
        check_store_size(size, f"the {settings.preset} preset", store)


def check_store_size(size: int, who: str, store: str) -> None:
    """A store smaller than the heatmaps' ``size`` is refused (its images would be
    upsampled)."""
    stored = ImageStore.open(store, read_only=True).size
    if stored < size:
        raise StoreFormatError(
            f"store {store} holds {stored} px images; {who} computes heatmaps at {size} px"
        )


def check_fraction(fraction: float) -> None:
    """A share of the items is in (0, 1]: a ConfigError before any work."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")


def check_precision(settings: HeatmapSettings, pool: PoolSettings) -> None:
    """fp16 heatmaps need GPU actors (float16 convolutions on a CPU are neither fast nor
    supported everywhere): a ConfigError before any actor starts."""
    precision = settings.translation.precision
    if precision == "fp16" and pool.device != "cuda":
        raise ConfigError(
            "precision fp16 needs GPU actors (--gpus-per-actor > 0); on CPUs use fp32 or bf16"
        )


def worker_spec(
    settings: HeatmapSettings,
    provenance: HeatmapProvenance,
    checkpoints: str | os.PathLike[str],
    pool: PoolSettings,
) -> WorkerSpec:
    """What each actor loads: the checkpoints (path or URL, with the sha256 they must have),
    the settings' config and the targets."""
    check_precision(settings, pool)
    root = Location.of(checkpoints)
    config = settings.config()
    return WorkerSpec(
        generator_dir=root.child(GENERATOR_DIR).url,
        classifier_dir=root.child(CLASSIFIER_DIR).url,
        config=dataclasses.replace(config, inference=pool.inference.over(config.inference)),
        targets=provenance.targets,
        torch_threads=pool.torch_threads,
        device=pool.device,
        generator_sha256=provenance.generator_sha256,
        classifier_sha256=provenance.classifier_sha256,
    )


@flow(
    name="precompute",
    flow_run_name=run_namer(
        "precompute", "store", detail=lambda p: str(p.get("heatmap_version", DEFAULT_VERSION))
    ),
)
def precompute_flow(
    store: str,
    checkpoints: str | None = None,
    heatmaps: HeatmapSettings = HeatmapSettings(),
    pool: PoolSettings = PoolSettings(),
    splits: list[str] | None = None,
    heatmap_version: str = DEFAULT_VERSION,
    retry_failed: bool = False,
    examples: int = 6,
    student: str | None = None,
    fraction: float = 1.0,
) -> dict[str, Any]:
    """Compute DAug heatmaps for STORE's ingested images into STORE/heatmaps/HEATMAP_VERSION.

    Idempotent and resumable: done items are skipped; a killed run is completed by rerunning
    it. A version holds one provenance: other checkpoints, targets or guidance numbers are
    refused unless written to a new ``heatmap_version``. Items that fail are listed in
    ``heatmaps/HEATMAP_VERSION/failures.csv`` and never stop the run. The run holds the
    store's lease while it writes (storage/store/lease.py): another writer is refused.

    Args:
        store: image store directory (from the ingest flow).
        checkpoints: train-generator output holding ``generator/`` and ``classifier/`` (the
            teacher; not with ``student``).
        heatmaps: what the heatmaps are: preset, targets (default +c for every class,
            +No Finding first) and translation numbers (None: the preset's).
        pool: the Ray actor pool: images per call, actors (0: as many as the cluster fits),
            CPUs and GPUs per actor, cluster address.
        splits: only items of these splits (default: all).
        heatmap_version: heatmap version name (a sub-group of STORE/heatmaps).
        retry_failed: compute items that failed in an earlier run again.
        examples: items shown in the example overlay grid.
        student: a heatmap student's checkpoint (``daug train-student``'s ``OUT/student``):
            its heatmaps, one forward pass per image, instead of the teacher's; the version
            records the student and its teacher version.
        fraction: only this deterministic, label-stratified share of the selected items
            (:func:`~storage.datasets.teacher.stratified_selection`; ``daug distill``'s teacher
            heatmaps); 1: all of them.
    """
    started = time.perf_counter()
    if (checkpoints is None) == (student is None):
        raise ConfigError("precompute takes the teacher's checkpoints or a student, one of them")
    check_fraction(fraction)
    if student is not None:
        provenance = student_provenance(student)
        spec = student_spec(provenance, student, pool)
        check_store_size(spec.config.image_size, f"the {provenance.preset} student", store)
    else:
        assert checkpoints is not None
        check_sizes(heatmaps, checkpoints, store)
        provenance = heatmap_provenance(heatmaps, checkpoints)
        spec = worker_spec(heatmaps, provenance, checkpoints, pool)
    with StoreLease(store, owner=f"precompute:{heatmap_version}") as lease:
        new = heatmap_version not in HeatmapStore.versions(ImageStore.open(store))
        try:
            return _precompute_leased(
                store,
                heatmap_version,
                spec,
                provenance,
                pool,
                lease,
                splits=splits,
                fraction=fraction,
                retry_failed=retry_failed,
                examples=examples,
                started=started,
            )
        except BaseException:
            # A version this run created and never wrote to is not left behind.
            if new and HeatmapStore.delete_if_unused(ImageStore.open(store), heatmap_version):
                get_run_logger().info("removed the empty heatmap version %s", heatmap_version)
            raise


def _precompute_leased(
    store: str,
    version: str,
    spec: WorkerSpec,
    provenance: HeatmapProvenance,
    pool: PoolSettings,
    lease: StoreLease,
    *,
    splits: list[str] | None,
    fraction: float,
    retry_failed: bool,
    examples: int,
    started: float,
) -> dict[str, Any]:
    """The writing part of :func:`precompute_flow`, run while holding the store's lease."""
    logger = get_run_logger()
    image_store = ImageStore.open(store)
    heatmap_store = HeatmapStore.open_or_create(image_store, provenance, version)
    items = stratified_selection(image_store, splits, fraction) if fraction < 1.0 else None
    plan = plan_heatmaps(heatmap_store, image_store, splits, retry_failed, items)
    logger.info(
        "heatmaps %s: %d selected, %d already done, %d failed before, %d to compute in %d shards",
        version,
        plan.selected,
        plan.already_done,
        plan.skipped_failed,
        plan.pending,
        len(plan.shards),
    )

    key = artifact_key("precompute", Location.of(store).name, version)
    progress = ProgressReporter(f"{key}-progress", plan.pending, "items with heatmaps")
    dispatched = DispatchReport()
    compute_started = time.perf_counter()
    actors = pool.actors
    if plan.shards:
        started_ray = connect_ray(pool.ray_address)
        try:
            pool_actors, group = start_actors(
                spec,
                actor_count(pool),
                pool.cpus_per_actor,
                pool.gpus_per_actor,
                pool.resource_map(),
                pool.placement_timeout,
            )
            actors = len(group.ready) + len(group.waiting)
            logger.info(
                "%d heatmap actor(s) ready after %.1f s",
                len(group.ready),
                time.perf_counter() - started,
            )
            compute_started = time.perf_counter()
            tasks = [
                ShardTask(
                    store=image_store.location,
                    heatmap_version=version,
                    work=work,
                    batch_size=pool.batch_size,
                    lease_holder=lease.holder if lease.held else None,
                )
                for work in plan.shards
            ]
            try:
                dispatched = dispatch(
                    tasks,
                    group.ready,
                    group.waiting,
                    in_flight=pool.in_flight,
                    on_result=lambda result, task: progress.advance(len(task.work.indices)),
                    replace=pool_actors.spawn,
                )
            finally:
                pool_actors.shutdown()
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    results = dispatched.results
    failed_shards = [f"shard {s}: {error}" for s, error in sorted(dispatched.failed.items())]
    compute_seconds = time.perf_counter() - compute_started
    heatmap_store.consolidate()

    summary = report.summary_table(
        results, provenance.targets, plan.already_done, plan.skipped_failed, compute_seconds
    )
    done_now = sum(r.done for r in results)
    stamp = f"precompute-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run_dir = RunFolder(Location.of(store).child("_runs", stamp))
    summary.to_csv(run_dir / "summary.csv", index=False)
    example_indices = np.flatnonzero(heatmap_store.done_mask())[: max(0, examples)]
    grid = report.plot_examples(image_store, heatmap_store, example_indices, run_dir.local)
    failures = heatmap_store.failures()
    run = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "done": done_now,
        "failed": int(sum(sum(r.failed.values()) for r in results)),
        "already_done": plan.already_done,
        "failed_shards": len(failed_shards),
        "seconds": round(compute_seconds, 2),
        # Model time inside the workers, summed over shards: / (actors x seconds) = how busy
        # the pool was.
        "worker_compute_seconds": round(sum(r.compute_seconds for r in results), 2),
        "actors": actors,
        "lost_actors": dispatched.lost_actors,
        "retried_shards": dispatched.retried,
        "batch_size": pool.batch_size,
        **dataclasses.asdict(spec.config.inference),  # max_batch, channels_last, compile
        "splits": splits,
        "fraction": fraction,
    }
    heatmap_store.record_run(run)
    report.publish(key, store, version, provenance, summary, failures, run, grid, run_dir.url)
    run_dir.sync()
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
        "store": image_store.location,
        "version": version,
        "targets": list(provenance.targets),
        "selected": plan.selected,
        "skipped_failed": plan.skipped_failed,
        "failures": len(failures),
        "run_dir": run_dir.url,
        "examples": run_dir.location.child(grid.name).url if grid else None,
        "image_class_per_second": (
            done_now * len(provenance.targets) / compute_seconds if compute_seconds > 0 else 0.0
        ),
    }
