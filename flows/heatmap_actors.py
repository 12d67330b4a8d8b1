"""Heatmap workers: the UNet and classifier loaded once, batches of store images in, heatmaps out.

:class:`HeatmapWorker` is a plain callable class; :class:`RayHeatmapPool` runs N of them as
Ray actors (``ray`` is imported only there), :class:`LocalHeatmapComputer` runs one in the
calling process. Both implement :class:`storage.precompute.HeatmapComputer`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from daug_core.checkpoints import load_classifier, load_unet
from daug_core.config import DiffusionConfig
from daug_core.heatmaps import HeatmapResult, compute_heatmaps
from daug_core.model_input import to_model_space
from daug_core.targets import Target
from storage.precompute import BatchOutcome, HeatmapFailure, ImageBatch, ItemFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """What a worker loads: checkpoint folders, the config (with the translation numbers to
    use), targets in channel order, and its share of the machine."""

    generator_dir: str
    classifier_dir: str
    config: DiffusionConfig
    targets: tuple[str, ...]
    torch_threads: int = 1
    device: str = "cpu"


class HeatmapWorker:
    """Holds the models; ``worker(batch)`` returns heatmaps for the items that work and a
    per-item reason for those that do not (a bad item never fails its batch)."""

    def __init__(self, spec: WorkerSpec) -> None:
        torch.set_num_threads(max(1, spec.torch_threads))
        self.spec = spec
        self.device = torch.device(spec.device)
        self.unet = load_unet(spec.generator_dir, use_ema=True, device=self.device)
        self.classifier = load_classifier(spec.classifier_dir, device=self.device)
        names = tuple(self.classifier.config.class_names)
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

    def compute(self, images: np.ndarray, config: DiffusionConfig | None = None) -> HeatmapResult:
        """Heatmaps of store pixels (B, S, S) in [0, 1] for the spec's targets, with ``config``
        (default: the spec's; the quality sweep passes other translation numbers)."""
        cfg = config or self.spec.config
        x0 = to_model_space(images, cfg.image_size).to(self.device)
        return compute_heatmaps(self.unet, self.classifier, x0, self.targets, cfg)

    def _compute(self, images: np.ndarray) -> np.ndarray:
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


class LocalHeatmapComputer:
    """One worker in the calling process (tests, notebooks). Note: sets torch's thread count
    for the whole process."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.worker = HeatmapWorker(spec)

    def map_batches(self, batches: Sequence[ImageBatch]) -> Iterator[BatchOutcome]:
        for batch in batches:
            yield self.worker(batch)


class RayHeatmapPool:
    """``actors`` Ray actors each holding a :class:`HeatmapWorker`; batches go round-robin.

    Thread-safe (the flow's shard tasks share one pool). Ray restarts an actor that dies
    (``max_restarts``) and resubmits its pending call once. An actor that is dead for good
    (restarts used up, or its node gone) is replaced by a new one and its batch is sent
    again, once; if that fails too, the exception reaches the shard task, whose Prefect
    retries redo the shard on the (replaced) actors.
    """

    def __init__(
        self, spec: WorkerSpec, actors: int, cpus_per_actor: float, gpus_per_actor: float
    ) -> None:
        import ray

        if actors < 1:
            raise ValueError(f"need at least one actor, got {actors}")
        self._remote_cls: Any = ray.remote(
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            max_restarts=2,
            max_task_retries=1,
        )(HeatmapWorker)
        self.spec = spec
        self.actors: list[Any] = [self._remote_cls.remote(spec) for _ in range(actors)]
        ray.get([a.ready.remote() for a in self.actors])
        self.replaced = 0
        self._next = itertools.cycle(range(actors))
        self._lock = threading.Lock()

    def _slot(self) -> int:
        with self._lock:
            return next(self._next)

    def _replace(self, slot: int, dead: Any) -> Any:
        """A new actor in ``slot`` unless another thread already replaced ``dead``."""
        import ray

        with self._lock:
            if self.actors[slot] is dead:
                log.warning("heatmap actor %d is dead; starting a replacement", slot)
                self.actors[slot] = self._remote_cls.remote(self.spec)
                self.replaced += 1
            actor = self.actors[slot]
        ray.get(actor.ready.remote())
        return actor

    def map_batches(self, batches: Sequence[ImageBatch]) -> Iterator[BatchOutcome]:
        import ray
        from ray.exceptions import RayActorError

        calls = []
        for batch in batches:
            slot = self._slot()
            actor = self.actors[slot]
            calls.append((slot, actor, actor.__call__.remote(batch)))
        for (slot, actor, ref), batch in zip(calls, batches, strict=True):
            try:
                outcome: BatchOutcome = ray.get(ref)
            except RayActorError as exc:
                log.warning("batch lost with its actor (%s); resubmitting once", exc)
                outcome = ray.get(self._replace(slot, actor).__call__.remote(batch))
            yield outcome

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
