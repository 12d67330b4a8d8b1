"""Data-parallel training on the Ray cluster: the settings and the Ray Train launcher.

One worker (the default) trains in the flow's own process, as before. More workers run the same
per-rank training function (:func:`flows.runtime.contrastive.train_contrastive`, the generator
and classifier loops) in Ray Train's ``TorchTrainer``: Ray places the workers over the cluster's
nodes (a GPU each, or CPUs), sets up the torch process group (NCCL on GPUs, gloo on CPUs) and,
after a lost worker or node, restarts the group up to ``max_failures`` times; every restart
resumes from the last checkpoint rank 0 wrote.

Why Ray Train rather than torchrun: Ray is already this project's cluster (the heatmap pool
runs on it), so the same ``ray start`` nodes, resources and ``RAY_ADDRESS`` train the models,
with placement, restarts and multi-node rendezvous handled by Ray; torchrun would need its own
launcher on every node and a rendezvous endpoint. The per-rank code only needs an initialised
process group (:class:`daug_core.distributed.Ranks`), so torchrun remains possible.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daug_core.compute import Compute, ComputeSettings
from daug_core.settings import ConfigError, described
from flows.runtime.pool import connect_ray

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScalingSettings:
    """How many processes train one model, and where they run."""

    workers: int = described(
        1, "data-parallel workers (1: in this process; more: Ray Train workers, one per GPU)"
    )
    gpus_per_worker: float = described(0.0, "GPUs per worker (0: CPU workers over gloo)")
    cpus_per_worker: float = described(1.0, "CPUs (= torch threads) per worker")
    max_failures: int = described(
        0, "worker-group restarts after a lost worker or node (each resumes from the checkpoint)"
    )
    ray_address: str | None = described(
        None, "Ray cluster to train on (default: RAY_ADDRESS, else a local Ray of 2 CPUs)"
    )

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"ScalingSettings.workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ConfigError("ScalingSettings: gpus_per_worker >= 0 and cpus_per_worker > 0")
        if self.max_failures < 0:
            raise ConfigError(f"ScalingSettings.max_failures must be >= 0, got {self.max_failures}")

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    def check(self, compute: ComputeSettings, global_batch: int) -> None:
        """Refuse what cannot run before any worker starts: a batch that does not split, a
        CUDA request without GPUs per worker."""
        if global_batch % self.workers:
            raise ConfigError(
                f"batch size {global_batch} does not split over {self.workers} workers; "
                f"use a multiple of {self.workers}"
            )
        if self.distributed and compute.device.startswith("cuda") and self.gpus_per_worker == 0:
            raise ConfigError(
                f"device {compute.device!r} with {self.workers} workers needs "
                f"--gpus-per-worker (Ray gives each worker its GPU)"
            )


def worker_compute(settings: ComputeSettings, scaling: ScalingSettings) -> Compute:
    """This Ray Train worker's device (its GPU, or the CPU when asked for or given no GPU) in
    the run's precision; torch threads = the worker's CPUs."""
    import ray.train.torch
    import torch

    torch.set_num_threads(max(1, int(scaling.cpus_per_worker)))
    device = torch.device("cpu") if settings.device == "cpu" else ray.train.torch.get_device()
    return Compute(device=device, precision=settings.precision)


def run_data_parallel(
    loop: Callable[[dict[str, Any]], None],
    arguments: dict[str, Any],
    scaling: ScalingSettings,
    name: str,
) -> None:
    """Run ``loop(arguments)`` on ``scaling.workers`` Ray Train workers and wait for it; a
    failure (after ``max_failures`` restarts) raises here with the workers' error."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    connect_ray(scaling.ray_address)
    gpu = scaling.gpus_per_worker > 0
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if gpu else {})
    trainer = TorchTrainer(
        loop,
        train_loop_config=arguments,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            # Ray Train's own run state; the checkpoints are ours, written by rank 0.
            storage_path=tempfile.mkdtemp(prefix="daug-ray-train-"),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
        ),
    )
    log.info("%s: %d Ray Train workers (%s)", name, scaling.workers, resources)
    trainer.fit()
