"""A heatmap worker decodes with the generator weights the translation settings name: the EMA
weights by default, the raw training weights (the official code's) with generator_ema off; and
the official code's switches together run on the shipped tiny checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from daug_core.checkpoints import load_unet
from daug_core.heatmap_settings import HeatmapSettings
from flows.demo_checkpoints import DEMO_CHECKPOINTS
from flows.heatmap_actors import HeatmapWorker, WorkerSpec


def _worker(settings: HeatmapSettings, targets: tuple[str, ...] = ("+No Finding",)):
    threads = torch.get_num_threads()  # the worker sets torch's thread count: restored here
    try:
        spec = WorkerSpec(
            generator_dir=str(DEMO_CHECKPOINTS / "generator"),
            classifier_dir=str(DEMO_CHECKPOINTS / "classifier"),
            config=settings.config(),
            targets=targets,
        )
        return HeatmapWorker(spec)
    finally:
        torch.set_num_threads(threads)


def _worker_unet(generator_ema: bool | None) -> torch.nn.Module:
    return _worker(HeatmapSettings(generator_ema=generator_ema)).unet


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_worker_loads_ema_weights_by_default_and_raw_weights_when_asked():
    generator = DEMO_CHECKPOINTS / "generator"
    ema = _flat(load_unet(generator, use_ema=True))
    raw = _flat(load_unet(generator, use_ema=False))
    assert not torch.equal(ema, raw)  # the shipped checkpoint's two weight sets differ
    assert torch.equal(_flat(_worker_unet(None)), ema)
    assert torch.equal(_flat(_worker_unet(False)), raw)


def test_the_official_switches_together_give_other_finite_heatmaps():
    official = HeatmapSettings(mode="official", clip_denoised=True, generator_ema=False, steps=4)
    targets = ("+No Finding", "+Pleural", "-Pleural")
    images = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 64, 64)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        theirs = _worker(official, targets).compute(images).heatmaps
        ours = _worker(HeatmapSettings(steps=4), targets).compute(images).heatmaps
    finally:
        torch.set_num_threads(threads)
    assert theirs.shape == ours.shape == (2, 3, 64, 64)
    assert torch.isfinite(theirs).all() and theirs.abs().max() > 0
    assert (theirs - ours).abs().max() > 1e-3
