"""A heatmap worker decodes with the generator weights the translation settings name: the EMA
weights by default, the raw training weights (the official code's) with generator_ema off; and
the official code's switches together run on the shipped tiny checkpoints."""

from __future__ import annotations

import numpy as np
import torch

from daug_core.checkpoints.diffusion import load_unet
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.demo_checkpoints import DEMO_CHECKPOINTS
from flows.runtime.actors import HeatmapWorker, WorkerSpec


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
    changes = {} if generator_ema is None else {"generator_ema": generator_ema}  # None: preset's
    return _worker(HeatmapSettings.build(translation=changes)).unet


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
    official = HeatmapSettings.build(
        translation={
            "mode": "official",
            "clip_denoised": True,
            "generator_ema": False,
            "input_range": "minmax",
            "steps": 4,
        }
    )
    targets = ("+No Finding", "+Pleural", "-Pleural")
    images = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 64, 64)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        theirs = _worker(official, targets).compute(images).heatmaps
        ours = (
            _worker(HeatmapSettings.build(translation={"steps": 4}), targets)
            .compute(images)
            .heatmaps
        )
    finally:
        torch.set_num_threads(threads)
    assert theirs.shape == ours.shape == (2, 3, 64, 64)
    assert torch.isfinite(theirs).all() and theirs.abs().max() > 0
    assert (theirs - ours).abs().max() > 1e-3


def test_the_worker_feeds_the_models_the_input_range_of_its_settings(monkeypatch):
    """minmax: each image scaled to [0, 1] by its own range before inversion (the official
    code's input); signed: [-1, 1]."""
    import daug_core.diffusion.heatmaps as heatmaps_module

    seen: dict[str, torch.Tensor] = {}
    compute = heatmaps_module.compute_heatmaps

    def recording(unet, classifier, x0, targets, cfg):
        seen[cfg.translation.input_range] = x0.detach().clone()
        return compute(unet, classifier, x0, targets, cfg)

    monkeypatch.setattr("flows.runtime.actors.compute_heatmaps", recording)
    images = np.random.default_rng(1).uniform(0.2, 0.8, size=(2, 64, 64)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        for input_range in ("minmax", "signed"):
            settings = HeatmapSettings.build(translation={"steps": 2, "input_range": input_range})
            _worker(settings, ("+No Finding",)).compute(images)
    finally:
        torch.set_num_threads(threads)
    unit, signed = seen["minmax"], seen["signed"]
    assert unit.amin(dim=(1, 2, 3)).tolist() == [0.0, 0.0]
    assert unit.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    torch.testing.assert_close(signed, torch.from_numpy(images).unsqueeze(1) * 2 - 1)
