"""Explicit randomness: module initialisation seeded from a caller's ``torch.Generator``.

PyTorch and diffusers initialise weights from the global RNG. Building a model inside
:func:`seeded_init` makes the weights a function of the caller's generator alone and leaves the
global RNG exactly as it was (``torch.random.fork_rng`` restores it on exit). The global RNG
is process-wide, so builds in concurrent threads (the ablation flow trains two models at
once) take turns under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_GLOBAL_RNG = threading.RLock()


def draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator`` (advances it)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device))


@contextmanager
def seeded_init(generator: torch.Generator) -> Iterator[None]:
    """Run the body with the global CPU RNG seeded from ``generator``; restore it afterwards."""
    seed = draw_seed(generator)
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
