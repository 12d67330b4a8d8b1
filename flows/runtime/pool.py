"""The Ray side of heatmap work: the pool's settings and the cluster it runs on.

Kept free of torch and the models (the CLI builds its options from :class:`PoolSettings`);
the actors themselves live in :mod:`flows.runtime.actors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from daug_core.diffusion.config import InferenceConfig
from daug_core.settings import ConfigError, check_finite, described


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The Ray actor pool that computes heatmaps: how many actors, their share of a node, how
    many images one call carries, and which cluster."""

    batch_size: int = described(8, "images per actor call")
    actors: int = described(0, "Ray actors holding the models (0: one per CPU, or per GPU)")
    cpus_per_actor: float = described(1.0, "CPUs (= torch threads) per actor")
    gpus_per_actor: float = described(0.0, "GPUs per actor (0: CPU)")
    resources: tuple[str, ...] = described(
        (),
        'custom Ray resources per actor, "NAME=AMOUNT" (repeat), e.g. a node label',
        option="resource",
    )
    ray_address: str | None = described(
        None, "Ray cluster to use (default: RAY_ADDRESS, else a local 2-CPU Ray)"
    )
    in_flight: int = described(2, "shard tasks queued on each actor (2: no gap between them)")
    placement_timeout: float = described(
        600.0, "seconds to wait for actors to be placed before starting with those that are"
    )
    inference: InferenceConfig = described(
        InferenceConfig(max_batch=0), "how the actors run the models (max_batch 0: the preset's)"
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"PoolSettings.batch_size must be >= 1, got {self.batch_size}")
        if self.actors < 0:
            raise ConfigError(f"PoolSettings.actors must be >= 0, got {self.actors}")
        if self.in_flight < 1:
            raise ConfigError(f"PoolSettings.in_flight must be >= 1, got {self.in_flight}")
        check_finite("PoolSettings", "cpus_per_actor", self.cpus_per_actor, 0.01)
        check_finite("PoolSettings", "gpus_per_actor", self.gpus_per_actor, 0.0)
        check_finite("PoolSettings", "placement_timeout", self.placement_timeout, 0.0)
        self.resource_map()  # "NAME=AMOUNT" checked here

    def resource_map(self) -> dict[str, float]:
        """The custom resources as Ray takes them."""
        found: dict[str, float] = {}
        for text in self.resources:
            name, sep, amount = text.partition("=")
            try:
                value = float(amount)
            except ValueError:
                value = -1.0
            if not sep or not name.strip() or not value > 0:
                raise ConfigError(
                    f"PoolSettings.resources: {text!r} is not NAME=AMOUNT with AMOUNT > 0"
                )
            found[name.strip()] = value
        return found

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_actor))

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_actor > 0 else "cpu"


def connect_ray(address: str | None) -> bool:
    """Use the running Ray, connect to ``address`` / ``RAY_ADDRESS``, or start a local one
    (2 CPUs, no dashboard, 256 MB object store, listening on 127.0.0.1 only: a cluster is what
    the address is for). True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # address="local": a new cluster of our own. Without it Ray joins any local cluster it
        # finds (another process's, e.g. a test run beside the demo) and then refuses num_cpus.
        with _loopback_node():
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=256 * 1024**2,
                _node_ip_address=LOOPBACK,
            )
    return True


LOOPBACK = "127.0.0.1"


@contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local Ray starts, 127.0.0.1 is this node's address. ``ray.init`` turns a
    loopback ``_node_ip_address`` into the machine's network address
    (``ray._private.services.resolve_ip_for_localhost``), and the GCS, raylet and workers bind
    to the node's address, unless Ray clusters are switched off
    (``ray_constants.ENABLE_RAY_CLUSTER``, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray
    is imported, too late to set here). The switch is restored after the start: it only
    chooses that address."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def actor_count(pool: PoolSettings) -> int:
    """``pool.actors``, or with 0 as many as the Ray cluster fits (CPUs, GPUs and custom
    resources per actor): one single-threaded actor per core measured best here
    (benchmarks/RESULTS.md), one per GPU on GPU nodes."""
    if pool.actors > 0:
        return pool.actors
    import ray

    available = ray.cluster_resources()
    fits = [available.get("CPU", 1) // pool.cpus_per_actor]
    if pool.gpus_per_actor > 0:
        fits.append(available.get("GPU", 0) // pool.gpus_per_actor)
    fits += [available.get(name, 0) // amount for name, amount in pool.resource_map().items()]
    return max(1, int(min(fits)))
