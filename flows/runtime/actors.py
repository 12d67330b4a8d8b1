"""Heatmap workers: the UNet and classifier loaded once; shards of a store in, heatmaps out.

:class:`HeatmapWorker` is a plain class: ``worker(batch)`` computes one batch of images, and
``worker.run_shard(task)`` does a whole shard the way the cluster runs it: it opens the stores
at their URLs, reads its images, computes, and writes heatmaps, failures and ``done`` flags
itself (checking the store's lease before each commit), returning only counts. As Ray actors
(:func:`start_actors`, ``ray`` imported only there) they need nothing on their node but the
package: checkpoints are fetched by URL into a node-local cache and checked against the
sha256 the provenance records (:mod:`storage.store.checkpoint_cache`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from daug_core.checkpoints.diffusion import load_classifier, load_unet
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.checkpoints.student import load_student
from daug_core.diffusion.config import DiffusionConfig, Precision
from daug_core.diffusion.heatmaps import HeatmapResult, compute_heatmaps, prepare_model
from daug_core.diffusion.targets import Target
from daug_core.model_input import to_model_space
from daug_core.student.model import HeatmapStudent
from flows.runtime.notices import quiet_notices
from storage.store.checkpoint_cache import cached_checkpoint
from storage.store.heatmap_shards import (
    BatchOutcome,
    HeatmapFailure,
    HeatmapShardResult,
    ImageBatch,
    ItemFailure,
    ShardTask,
    precompute_shard,
)
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.lease import check_holder

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a worker loads: checkpoint folders, the config (with the translation numbers to
    use), targets in channel order, and its share of the machine."""

    generator_dir: str  # a local folder or a URL
    classifier_dir: str
    config: DiffusionConfig
    targets: tuple[str, ...]
    torch_threads: int = 1
    device: str = "cpu"
    # The weights' sha256 (the heatmap provenance's); given, a worker loads only those.
    generator_sha256: str | None = None
    classifier_sha256: str | None = None
    # A heatmap student (daug train-student) instead of the generator and classifier.
    student_dir: str | None = None
    student_sha256: str | None = None


class HeatmapWorker:
    """Holds the models; ``worker(batch)`` returns heatmaps for the items that work and a
    per-item reason for those that do not (a bad item never fails its batch)."""

    def __init__(self, spec: WorkerSpec) -> None:
        quiet_notices()  # a Ray actor is a process of its own (flows.runtime.notices)
        torch.set_num_threads(max(1, spec.torch_threads))
        self.spec = spec
        self.device = torch.device(spec.device)
        self._stores: dict[tuple[str, str], tuple[ImageStore, HeatmapStore]] = {}
        self.student: HeatmapStudent | None = None
        if spec.student_dir is not None:
            local = _local_checkpoint(spec.student_dir, spec.student_sha256)
            self.student = load_student(local, self.device).student
            names = spec.config.class_names
            self.targets = tuple(Target.parse(t, names) for t in spec.targets)
            return
        generator = _local_checkpoint(spec.generator_dir, spec.generator_sha256)
        classifier = _local_checkpoint(spec.classifier_dir, spec.classifier_sha256)
        use_ema = spec.config.translation.generator_ema
        # The source weights stay in host memory; the device holds one prepared copy per
        # precision asked for (the spec's; the quality sweep may ask for others), cast once:
        # an fp16 spec on a CPU fails here, when the pool starts. On a CPU worker in fp32 the
        # prepared models are the loaded ones (no copy).
        self.unet = load_unet(generator, use_ema=use_ema, device="cpu")
        self.classifier = load_classifier(classifier, device="cpu")
        self._models: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        self.models(spec.config.translation.precision)
        names = tuple(self.classifier.class_names)
        if names != spec.config.class_names:
            raise ValueError(
                f"classifier {spec.classifier_dir} predicts {names}, the config expects "
                f"{spec.config.class_names}"
            )
        self.targets = tuple(Target.parse(t, names) for t in spec.targets)

    def ready(self) -> bool:
        """Returns once the models are loaded (lets a pool surface load errors early)."""
        return True

    def pid(self) -> int:
        """The worker's process id (operations: find or kill an actor's process)."""
        return os.getpid()

    def node(self) -> str:
        """The Ray node this worker runs on (tests: actors spread over nodes)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run_shard(self, task: ShardTask) -> HeatmapShardResult:
        """Compute, write and commit one shard (see
        :func:`storage.store.heatmap_shards.precompute_shard`),
        reading and writing the stores at ``task.store`` itself."""
        images, heatmaps = self._open(task.store, task.heatmap_version)
        fence = None
        if task.lease_holder is not None and images.root is not None:
            root, holder = images.root, task.lease_holder
            fence = lambda: check_holder(root, holder)  # noqa: E731
        return precompute_shard(heatmaps, images, task.work, self, task.batch_size, fence)

    def _open(self, store: str, version: str) -> tuple[ImageStore, HeatmapStore]:
        key = (store, version)
        if key not in self._stores:
            images = ImageStore.open(store)
            self._stores[key] = (images, HeatmapStore(images, version))
        images, heatmaps = self._stores[key]
        heatmaps.grow()
        return images, heatmaps

    def compute(self, images: np.ndarray, config: DiffusionConfig | None = None) -> HeatmapResult:
        """Heatmaps of store pixels (B, S, S) in [0, 1] for the spec's targets, with ``config``
        (default: the spec's; the quality sweep passes other translation numbers)."""
        cfg = config or self.spec.config
        x0 = to_model_space(images, cfg.image_size, cfg.translation.input_range).to(self.device)
        unet, classifier = self.models(cfg.translation.precision)
        return compute_heatmaps(unet, classifier, x0, self.targets, cfg)

    def models(self, precision: Precision) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The UNet and the classifier with weights in ``precision``, in the memory format
        and compiled as the spec's inference settings say."""
        if precision not in self._models:
            self._models[precision] = (
                prepare_model(self.unet, precision, self.spec.config.inference, self.device),
                prepare_model(self.classifier, precision, self.spec.config.inference, self.device),
            )
        return self._models[precision]

    def _compute(self, images: np.ndarray) -> np.ndarray:
        if self.student is not None:  # one forward pass
            x = to_model_space(images, self.spec.config.image_size, "signed").to(self.device)
            with torch.inference_mode():
                return self.student.heatmaps(x).cpu().numpy()
        return self.compute(images).heatmaps.detach().cpu().numpy()

    def __call__(self, batch: ImageBatch) -> BatchOutcome:
        start = time.perf_counter()
        indices = np.asarray(batch.indices, dtype=np.int64)
        finite = np.isfinite(batch.images).all(axis=(1, 2))
        failures = [
            ItemFailure(int(i), f"{HeatmapFailure.NON_FINITE_PIXELS.value}: image holds NaN/inf")
            for i in indices[~finite]
        ]
        ok = indices[finite]
        heat = np.zeros((0,), dtype=np.float32)
        if len(ok):
            try:
                heat = self._compute(batch.images[finite])
            except Exception as exc:  # one bad item must not cost its batch: retry one by one
                log.warning("batch of %d failed (%s); computing items one by one", len(ok), exc)
                heat, ok, item_failures = self._one_by_one(ok, batch.images[finite])
                failures.extend(item_failures)
        if len(ok):
            good = np.isfinite(heat).all(axis=(1, 2, 3))
            failures.extend(
                ItemFailure(int(i), f"{HeatmapFailure.NON_FINITE_HEATMAP.value}: NaN/inf output")
                for i in ok[~good]
            )
            ok, heat = ok[good], heat[good]
        k, s = len(self.targets), self.spec.config.image_size
        heatmaps = heat.astype(np.float16) if len(ok) else np.zeros((0, k, s, s), np.float16)
        return BatchOutcome(ok, heatmaps, tuple(failures), time.perf_counter() - start)

    def _one_by_one(
        self, indices: np.ndarray, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[ItemFailure]]:
        kept: list[int] = []
        maps: list[np.ndarray] = []
        failures: list[ItemFailure] = []
        for index, image in zip(indices, images, strict=True):
            try:
                maps.append(self._compute(image[None]))
                kept.append(int(index))
            except Exception as exc:
                reason = f"{HeatmapFailure.COMPUTE_ERROR.value}: {type(exc).__name__}: {exc}"
                failures.append(ItemFailure(int(index), reason[:500]))
        k, s = len(self.targets), self.spec.config.image_size
        heat = np.concatenate(maps) if maps else np.zeros((0, k, s, s), np.float32)
        return heat, np.asarray(kept, dtype=np.int64), failures


class HeatmapActors:
    """Ray actors holding a :class:`HeatmapWorker` each, spread over the nodes, each with
    ``cpus`` CPUs, ``gpus`` GPUs and the custom ``resources``.

    :meth:`start` places ``count`` of them, waiting up to ``placement_timeout`` seconds: the run
    starts with those that are up and the others join as the cluster (or its autoscaler)
    finds room; none at all raises :class:`PlacementError`. An actor whose process or node
    dies is not restarted in place (a node-bound restart could wait forever for a lost node's
    resources): the dispatcher hands its shards to the others and :meth:`spawn` asks for a
    replacement, which joins when placed. A retried shard skips its committed batches.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        cpus: float,
        gpus: float,
        resources: dict[str, float] | None = None,
    ) -> None:
        import ray

        self.spec = spec
        self.cpus, self.gpus, self.resources = cpus, gpus, dict(resources or {})
        self._remote: Any = ray.remote(
            num_cpus=cpus,
            num_gpus=gpus,
            resources=self.resources,
            max_restarts=0,
            scheduling_strategy="SPREAD",
        )(HeatmapWorker)
        self.started: list[Any] = []

    def spawn(self) -> tuple[Any, Any]:
        """A new actor and the reference that resolves once its models are loaded."""
        actor = self._remote.remote(self.spec)
        self.started.append(actor)
        return actor.ready.remote(), actor

    def start(self, count: int, placement_timeout: float = 600.0) -> ActorGroup:
        import ray

        if count < 1:
            raise ValueError(f"need at least one actor, got {count}")
        waiting = dict(self.spawn() for _ in range(count))
        done, _ = ray.wait(list(waiting), num_returns=count, timeout=placement_timeout)
        ready = []
        for ref in done:
            ray.get(ref)  # a model that fails to load raises here, naming the checkpoint
            ready.append(waiting.pop(ref))
        if not ready:
            self.shutdown()
            raise PlacementError(
                f"asked for {count} heatmap actor(s) with {self.cpus:g} CPU, {self.gpus:g} "
                f"GPU{_resources_text(self.resources)} each; the cluster placed none after "
                f"{placement_timeout:.0f} s (it has {ray.cluster_resources()})"
            )
        if waiting:
            log.warning(
                "asked for %d heatmap actors, the cluster can place %d after %.0f s; starting "
                "with them, the others join when it has room",
                count,
                len(ready),
                placement_timeout,
            )
        return ActorGroup(ready, waiting)

    def shutdown(self) -> None:
        import ray

        for actor in self.started:
            ray.kill(actor)
        self.started = []


@dataclass(frozen=True)
class ActorGroup:
    """Heatmap actors that started (models loaded) and those still waiting for a node."""

    ready: list[Any]
    waiting: dict[Any, Any]  # ready() reference -> actor


def start_actors(
    spec: WorkerSpec,
    count: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    resources: dict[str, float] | None = None,
    placement_timeout: float = 600.0,
) -> tuple[HeatmapActors, ActorGroup]:
    """``count`` :class:`HeatmapActors` started (see there)."""
    actors = HeatmapActors(spec, cpus_per_actor, gpus_per_actor, resources)
    return actors, actors.start(count, placement_timeout)


class PlacementError(RuntimeError):
    """The Ray cluster could not start a single heatmap actor in time."""


def _resources_text(resources: dict[str, float] | None) -> str:
    return "".join(f", {v:g} {k}" for k, v in (resources or {}).items())


def _local_checkpoint(where: str, sha256: str | None) -> str:
    """A local folder with the checkpoint (fetched into the node's cache when ``where`` is a
    URL), its weights checked against ``sha256`` when given."""
    if sha256 is None:
        return where
    return str(cached_checkpoint(where, sha256, checkpoint_sha256))
