"""Data-parallel training: which rank this process is, its rows of a global batch, the
collectives the loops need (torch.distributed only; whoever launches the processes, Ray Train
or torchrun, has initialised the process group).

The rule that makes N ranks train exactly like one process on the global batch: every rank
reads its own contiguous rows of the same global batch, the losses that couple rows (CLIP's
InfoNCE, masked means) are computed on rows gathered *with gradient* from all ranks, so every
rank holds the global loss, and DDP averages the gradients. The gather's backward sums the N
ranks' gradients into each rank's own rows, and DDP's mean divides by N again: the update is
the single-process one (open_clip's ``ClipLoss(local_loss=False, gather_with_grad=True)``
argument, here for every loss). Losses that are plain means over equal-sized rows (DDPM's MSE)
need no gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")

    @classmethod
    def current(cls) -> Ranks:
        """The initialised process group's rank and size, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        """Rank 0: the only one that writes checkpoints, tables and reports."""
        return self.rank == 0

    def local_batch(self, global_batch: int) -> int:
        """Rows per rank of a global batch; the global batch must split evenly (unequal
        shares would weight the ranks' gradients unequally under DDP's mean)."""
        if global_batch % self.world_size:
            raise ValueError(
                f"global batch {global_batch} does not split over {self.world_size} workers; "
                f"use a batch size divisible by the worker count"
            )
        return global_batch // self.world_size

    def rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch: rank r takes the r-th contiguous share, so the
        ranks' rows concatenated in rank order are the global batch."""
        local = self.local_batch(global_batch)
        return slice(self.rank * local, (self.rank + 1) * local)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``x`` concatenated in rank order, differentiable (the backward
        sums each rank's gradient into the rows it gathered); ``x`` itself on one process."""
        if not self.distributed:
            return x
        return torch.cat(torch.distributed.nn.all_gather(x), dim=0)

    def gather_values(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`gather` without gradient (labels, masks)."""
        if not self.distributed:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    def mean(self, x: torch.Tensor) -> float:
        """The ranks' mean of a scalar (a loss to report for the global batch)."""
        value = x.detach().float().reshape(1)
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (picklable objects over the process group: the
        resume state travels this way, so only rank 0 needs to see the checkpoint files)."""
        if not self.distributed:
            return value
        box: list[Any] = [value if self.primary else None]
        dist.broadcast_object_list(box, src=0)
        result: T = box[0]
        return result

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel (gradients averaged over ranks during the
        backward pass; rank 0's weights broadcast at construction), itself on one process."""
        if not self.distributed:
            return module
        device_ids = [device.index or 0] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


SINGLE = Ranks()
