"""The Ray side of heatmap work: the pool's settings and the cluster it runs on.

Kept free of torch and the models (the CLI builds its options from :class:`PoolSettings`);
the actors themselves live in :mod:`flows.heatmap_actors`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from daug_core.config import ConfigError, check_finite, described


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The Ray actor pool that computes heatmaps: how many actors, their share of a node, how
    many images one call carries, and which cluster."""

    batch_size: int = described(8, "images per actor call")
    actors: int = described(0, "Ray actors holding the models (0: one per CPU, or per GPU)")
    cpus_per_actor: float = described(1.0, "CPUs (= torch threads) per actor")
    gpus_per_actor: float = described(0.0, "GPUs per actor (0: CPU)")
    ray_address: str | None = described(
        None, "Ray cluster to use (default: RAY_ADDRESS, else a local 2-CPU Ray)"
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"PoolSettings.batch_size must be >= 1, got {self.batch_size}")
        if self.actors < 0:
            raise ConfigError(f"PoolSettings.actors must be >= 0, got {self.actors}")
        check_finite("PoolSettings", "cpus_per_actor", self.cpus_per_actor, 0.01)
        check_finite("PoolSettings", "gpus_per_actor", self.gpus_per_actor, 0.0)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_actor))

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"


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


def actor_count(pool: PoolSettings) -> int:
    """``pool.actors``, or with 0 as many as the Ray cluster fits: one single-threaded actor
    per core measured best here (benchmarks/RESULTS.md), one per GPU on GPU nodes."""
    if pool.actors > 0:
        return pool.actors
    import ray

    resources = ray.cluster_resources()
    if pool.gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // pool.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // pool.cpus_per_actor))
