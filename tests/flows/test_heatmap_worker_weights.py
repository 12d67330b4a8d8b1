"""A heatmap worker decodes with the generator weights the translation settings name: the EMA
weights by default, the raw training weights (the official code's) with generator_ema off."""

from __future__ import annotations

import torch

from daug_core.checkpoints import load_unet
from daug_core.heatmap_settings import HeatmapSettings
from flows.demo_checkpoints import DEMO_CHECKPOINTS
from flows.heatmap_actors import HeatmapWorker, WorkerSpec


def _worker_unet(generator_ema: bool | None) -> torch.nn.Module:
    threads = torch.get_num_threads()  # the worker sets torch's thread count: restored here
    try:
        spec = WorkerSpec(
            generator_dir=str(DEMO_CHECKPOINTS / "generator"),
            classifier_dir=str(DEMO_CHECKPOINTS / "classifier"),
            config=HeatmapSettings(generator_ema=generator_ema).config(),
            targets=("+No Finding",),
        )
        return HeatmapWorker(spec).unet
    finally:
        torch.set_num_threads(threads)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_worker_loads_ema_weights_by_default_and_raw_weights_when_asked():
    generator = DEMO_CHECKPOINTS / "generator"
    ema = _flat(load_unet(generator, use_ema=True))
    raw = _flat(load_unet(generator, use_ema=False))
    assert not torch.equal(ema, raw)  # the shipped checkpoint's two weight sets differ
    assert torch.equal(_flat(_worker_unet(None)), ema)
    assert torch.equal(_flat(_worker_unet(False)), raw)
