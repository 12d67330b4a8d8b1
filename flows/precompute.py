"""Precompute flow: DAug heatmaps for the ingested images of a store, one Prefect task per shard.

Each shard task reads its pending images and sends them in batches to a pool of Ray actors
that hold the UNet and classifier (loaded once per actor); the task then writes the shard's
heatmaps, its failure part and its ``heatmaps_done`` chunk (it is the shard's only writer).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from daug_core.checkpoints import checkpoint_sha256
from daug_core.config import DiffusionConfig, preset
from daug_core.guidance import Target, all_targets
from flows.heatmap_actors import RayHeatmapPool, WorkerSpec
from flows.monitoring import ProgressReporter, artifact_key, table_artifact
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

GENERATOR_DIR, CLASSIFIER_DIR = "generator", "classifier"
log = logging.getLogger(__name__)


def _run_name() -> str:
    params = flow_run.parameters
    store = Path(str(params.get("store", "store"))).name
    version = params.get("version", DEFAULT_VERSION)
    return f"precompute-{store}-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


@dataclass(frozen=True)
class TranslationOverrides:
    """Command-line overrides of the preset's translation numbers (None keeps the preset's)."""

    mode: str | None = None
    scale: float | None = None
    level: int | None = None
    steps: int | None = None
    inversion_refinements: int | None = None
    difference: str | None = None
    smoothing_sigma: float | None = None


def heatmap_config(preset_name: str, overrides: TranslationOverrides) -> DiffusionConfig:
    """The preset with its translation numbers replaced where an override is given."""
    config = preset(preset_name)
    changes = {k: v for k, v in dataclasses.asdict(overrides).items() if v is not None}
    return dataclasses.replace(
        config, translation=dataclasses.replace(config.translation, **changes)
    )


def default_targets(config: DiffusionConfig) -> tuple[str, ...]:
    """DAug's K = 7: ``+c`` for every class, ``+No Finding`` (class 0) first."""
    return tuple(str(t) for t in all_targets(config.class_names, direction=1))


def heatmap_provenance(
    config: DiffusionConfig, targets: tuple[str, ...], checkpoints: Path
) -> HeatmapProvenance:
    """Provenance of heatmaps computed with ``config`` from the checkpoints in ``checkpoints``."""
    canonical = tuple(str(Target.parse(t, config.class_names)) for t in targets)
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"targets repeat: {list(canonical)}")
    tr = config.translation
    return HeatmapProvenance(
        targets=canonical,
        mode=tr.mode,
        scale=float(tr.scale),
        level=tr.level,
        steps=tr.steps,
        inversion_refinements=tr.inversion_refinements,
        clip_denoised=tr.clip_denoised,
        preset=config.name,
        image_size=config.image_size,
        generator_sha256=checkpoint_sha256(checkpoints / GENERATOR_DIR),
        classifier_sha256=checkpoint_sha256(checkpoints / CLASSIFIER_DIR),
        difference=tr.difference,
        smoothing_sigma=float(tr.smoothing_sigma),
    )


def connect_ray(address: str | None) -> bool:
    """Use the running Ray, connect to ``address`` / ``RAY_ADDRESS``, or start a local one
    (2 CPUs, no dashboard, 256 MB object store). True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    return True


def actor_count(requested: int, cpus_per_actor: float, gpus_per_actor: float) -> int:
    """``requested`` actors, or with 0 as many as the Ray cluster fits: one single-threaded
    actor per core measured best here (benchmarks/RESULTS.md), one per GPU on GPU nodes."""
    if requested > 0:
        return requested
    import ray

    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9)))


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


def summary_table(
    results: list[HeatmapShardResult],
    targets: tuple[str, ...],
    already_done: int,
    skipped_failed: int,
    seconds: float,
) -> pd.DataFrame:
    """Items done / skipped / failed by reason, throughput and mean heat per target."""
    done = sum(r.done for r in results)
    failed: Counter[str] = Counter()
    for r in results:
        failed.update(r.failed)
    rows: list[dict[str, object]] = [
        {"group": "items", "value": "done", "number": done},
        {"group": "items", "value": "skipped (already done)", "number": already_done},
        {"group": "items", "value": "skipped (failed before)", "number": skipped_failed},
        *[
            {"group": "failed", "value": reason, "number": count}
            for reason, count in sorted(failed.items())
        ],
        {
            "group": "throughput",
            "value": "image·class/s",
            "number": round(done * len(targets) / seconds, 3) if seconds > 0 else 0.0,
        },
    ]
    heat = np.sum([r.heat_sum for r in results], axis=0) if results else np.zeros(len(targets))
    for target, total in zip(targets, np.atleast_1d(heat), strict=True):
        mean = float(total) / done if done else float("nan")
        rows.append({"group": "mean heat", "value": target, "number": round(mean, 5)})
    return pd.DataFrame(rows)


def plot_examples(
    images: ImageStore, heatmaps: HeatmapStore, indices: np.ndarray, out: Path
) -> Path | None:
    """A grid: one row per item, the image then each target's heatmap over it."""
    if len(indices) == 0:
        return None
    pixels = images.read_images(indices)
    maps = heatmaps.read_heatmaps(indices)
    k = len(heatmaps.targets)
    figure, axes = plt.subplots(
        len(indices), k + 1, figsize=(1.6 * (k + 1), 1.6 * len(indices)), squeeze=False
    )
    extent = (0.0, 1.0, 1.0, 0.0)  # image and heatmap may differ in pixels, not in area
    for row, (image, heat) in enumerate(zip(pixels, maps, strict=True)):
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        axes[row, 0].set_ylabel(str(indices[row]), fontsize=7)
        for col in range(k):
            ax = axes[row, col + 1]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
            ax.imshow(heat[col], cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
            if row == 0:
                ax.set_title(heatmaps.targets[col], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=7)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "examples.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


@flow(name="precompute", flow_run_name=_run_name)
def precompute_flow(
    store: str,
    checkpoints: str,
    targets: list[str] | None = None,
    mode: str | None = None,
    scale: float | None = None,
    level: int | None = None,
    steps: int | None = None,
    inversion_refinements: int | None = None,
    difference: str | None = None,
    smoothing_sigma: float | None = None,
    preset_name: str = "tiny",
    batch_size: int = 8,
    actors: int = 0,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    ray_address: str | None = None,
    splits: list[str] | None = None,
    version: str = DEFAULT_VERSION,
    retry_failed: bool = False,
    examples: int = 6,
) -> dict[str, Any]:
    """Compute DAug heatmaps for STORE's ingested images into STORE/heatmaps/VERSION.

    Idempotent and resumable: done items are skipped; a killed run is completed by rerunning
    it. A version holds one provenance: other checkpoints, targets or guidance numbers are
    refused unless written to a new ``version``. Items that fail are listed in
    ``heatmaps/VERSION/failures.csv`` and never stop the run. The run holds STORE/.daug.lock
    while it writes: another writer on the same store is refused.

    Args:
        store: image store directory (from the ingest flow).
        checkpoints: train-generator output holding ``generator/`` and ``classifier/``.
        targets: "+Class" / "-Class" in channel order; default "+c" for all 7 classes,
            "+No Finding" first.
        mode / scale / level / steps / inversion_refinements: override the preset's
            translation (softmax|sigmoid guidance, classifier scale, noise level L, DDIM steps).
        difference / smoothing_sigma: override how the heatmap compares x0 and x_cf
            (minmax|raw) and its Gaussian blur in px.
        preset_name: tiny (64 px) or paper (512 px): model size and default translation.
        batch_size: images per actor call.
        actors / cpus_per_actor / gpus_per_actor: Ray actor pool (torch threads = CPUs);
            actors=0 fits as many as the cluster has CPUs (or GPUs) for.
        ray_address: Ray cluster to use (default: RAY_ADDRESS, else a local 2-CPU Ray).
        splits: only items of these splits (default: all).
        version: heatmap version name (a sub-group of STORE/heatmaps).
        retry_failed: compute items that failed in an earlier run again.
        examples: items shown in the example overlay grid.
    """
    started = time.perf_counter()
    config = heatmap_config(
        preset_name,
        TranslationOverrides(
            mode, scale, level, steps, inversion_refinements, difference, smoothing_sigma
        ),
    )
    chosen = tuple(targets) if targets else default_targets(config)
    ckpt = Path(checkpoints)
    provenance = heatmap_provenance(config, chosen, ckpt)
    with StoreLock(Path(store), owner=f"precompute:{version}"):
        return _precompute_locked(
            store,
            version,
            ckpt,
            config,
            provenance,
            splits=splits,
            retry_failed=retry_failed,
            batch_size=batch_size,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            ray_address=ray_address,
            examples=examples,
            started=started,
        )


def _precompute_locked(
    store: str,
    version: str,
    ckpt: Path,
    config: DiffusionConfig,
    provenance: HeatmapProvenance,
    *,
    splits: list[str] | None,
    retry_failed: bool,
    batch_size: int,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    ray_address: str | None,
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
    if plan.shards:
        spec = WorkerSpec(
            generator_dir=str(ckpt / GENERATOR_DIR),
            classifier_dir=str(ckpt / CLASSIFIER_DIR),
            config=config,
            targets=provenance.targets,
            torch_threads=max(1, int(cpus_per_actor)),
            device="cuda" if gpus_per_actor > 0 else "cpu",
        )
        started_ray = connect_ray(ray_address)
        actors = actor_count(actors, cpus_per_actor, gpus_per_actor)
        pool = RayHeatmapPool(spec, actors, cpus_per_actor, gpus_per_actor)
        logger.info("%d heatmap actor(s) ready after %.1f s", actors, time.perf_counter() - started)
        compute_started = time.perf_counter()
        try:
            futures = [
                precompute_shard_task.submit(heatmap_store, image_store, work, pool, batch_size)
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
            pool.shutdown()
            if started_ray:
                import ray

                ray.shutdown()
    compute_seconds = time.perf_counter() - compute_started
    heatmap_store.consolidate()

    summary = summary_table(
        results, provenance.targets, plan.already_done, plan.skipped_failed, compute_seconds
    )
    done_now = sum(r.done for r in results)
    run_dir = Path(store) / "_runs" / f"precompute-{version}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(run_dir / "summary.csv", index=False)
    done_mask = heatmap_store.done_mask()
    example_indices = np.flatnonzero(done_mask)[: max(0, examples)]
    grid = plot_examples(image_store, heatmap_store, example_indices, run_dir)
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
        "batch_size": batch_size,
        "splits": splits,
    }
    heatmap_store.record_run(run)
    table_artifact(
        f"{key}-summary",
        summary,
        f"Heatmaps {version} of {store}: items, failures by reason, throughput, mean heat.",
    )
    table_artifact(f"{key}-failures", failures, "Items without heatmaps, with the reason.")
    create_markdown_artifact(
        key=f"{key}-examples",
        markdown="\n".join(
            [
                f"## precompute: {store} → heatmaps/{version}",
                "",
                f"Targets (channel order): {', '.join(provenance.targets)}; "
                f"{provenance.mode} guidance, scale {provenance.scale}, level {provenance.level}, "
                f"{provenance.steps} DDIM steps, preset {provenance.preset}.",
                "",
                f"Done now: {done_now}; already done: {plan.already_done}; "
                f"failed items: {len(failures)}; {compute_seconds:.1f} s.",
                "",
                f"![example heatmaps]({grid.resolve().as_uri()})" if grid else "No examples yet.",
                "",
                f"Run folder: `{run_dir.resolve()}`",
            ]
        ),
    )
    if failed_shards:
        raise RuntimeError(
            f"{len(failed_shards)} shard(s) failed after retries; rerun to resume: "
            f"{failed_shards[:5]}"
        )
    logger.info("precompute finished: %s", run)
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
