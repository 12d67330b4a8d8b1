"""One queue of shards over all heatmap actors, every actor kept busy.

The driver (the precompute flow) sends each actor up to ``in_flight`` shard tasks at once (a
Ray actor runs its calls one after the other, so the next one starts the moment the previous
ends, with no round trip to the driver), takes results in the order they finish
(``ray.wait``), and refills the actor that finished. Tasks carry item indices and return
counts: no pixels pass through the driver. Actors that were still waiting for a node when the
run started join as soon as they are up.

An actor whose process or node dies is dropped: its shards go back to the queue (at most
``attempts`` tries each; a retried shard skips the batches it had committed) and, with
``replace``, a replacement is asked for, which joins when the cluster places it. A shard whose
task raises an error of its own (not a lost actor) is retried the same way, then reported.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.store.heatmap_shards import HeatmapShardResult, ShardTask

log = logging.getLogger(__name__)


@dataclass
class DispatchReport:
    """What a dispatch did: results per shard, shards that failed for good, and how busy the
    actors were (``busy_seconds`` summed over the shard calls each actor ran)."""

    results: list[HeatmapShardResult] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # shard -> last error
    retried: int = 0
    lost_actors: int = 0
    actors_used: int = 0
    busy_seconds: dict[int, float] = field(default_factory=dict)  # actor slot -> seconds
    wall_seconds: float = 0.0


def dispatch(
    tasks: list[ShardTask],
    actors: list[Any],
    waiting: dict[Any, Any] | None = None,
    in_flight: int = 2,
    attempts: int = 3,
    on_result: Callable[[HeatmapShardResult, ShardTask], None] | None = None,
    replace: Callable[[], tuple[Any, Any]] | None = None,
) -> DispatchReport:
    """Run every task on the actors (see the module docstring); returns when all are done or
    failed for good."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if in_flight < 1 or attempts < 1:
        raise ValueError(f"in_flight and attempts must be >= 1, got {in_flight}, {attempts}")
    started = time.perf_counter()
    report = DispatchReport()
    queue: deque[tuple[ShardTask, int]] = deque((task, 1) for task in tasks)
    slots: list[Any] = list(actors)  # slot index -> actor (None: dropped)
    joining = dict(waiting or {})
    running: dict[Any, tuple[int, ShardTask, int]] = {}  # ref -> slot, task, try
    load = [0] * len(slots)

    def fill() -> None:
        for slot, actor in enumerate(slots):
            while actor is not None and load[slot] < in_flight and queue:
                task, attempt = queue.popleft()
                ref = actor.run_shard.remote(task)
                running[ref] = (slot, task, attempt)
                load[slot] += 1

    def retry(task: ShardTask, attempt: int, error: str) -> None:
        if attempt < attempts:
            report.retried += 1
            queue.append((task, attempt + 1))
        else:
            report.failed[task.work.shard] = error

    fill()
    while running or (queue and joining):
        ready, _ = ray.wait([*running, *joining], num_returns=1)
        ref = ready[0]
        if ref in joining:
            actor = joining.pop(ref)
            try:
                ray.get(ref)
            except Exception as exc:
                log.warning("a heatmap actor that joined late failed to start: %s", exc)
                continue
            slots.append(actor)
            load.append(0)
            log.info("a heatmap actor joined (%d working)", sum(a is not None for a in slots))
            fill()
            continue
        slot, task, attempt = running.pop(ref)
        load[slot] -= 1
        try:
            result: HeatmapShardResult = ray.get(ref)
        except RayActorError as exc:  # its process died, or its node is gone
            if slots[slot] is not None:
                log.warning("heatmap actor %d is gone (%s); its shards go back", slot, exc)
                slots[slot] = None
                report.lost_actors += 1
                if replace is not None and report.lost_actors <= 2 * len(actors):
                    ref, actor = replace()
                    joining[ref] = actor
            retry(task, attempt, f"actor lost: {exc}")
        except RayTaskError as exc:
            log.error("shard %d failed (try %d of %d): %s", task.work.shard, attempt, attempts, exc)
            retry(task, attempt, str(exc.cause if exc.cause is not None else exc)[:500])
        else:
            report.results.append(result)
            report.busy_seconds[slot] = report.busy_seconds.get(slot, 0.0) + result.seconds
            if on_result is not None:
                on_result(result, task)
        if queue and not any(a is not None for a in slots) and not joining:
            for pending, _ in queue:
                report.failed[pending.work.shard] = "no heatmap actor left"
            queue.clear()
        fill()
    report.actors_used = len(slots)
    report.wall_seconds = time.perf_counter() - started
    return report
