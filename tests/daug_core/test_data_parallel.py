"""Data-parallel training equals one process on the global batch: 2 gloo processes x 16 rows
against 1 process x 32 rows from the same seed, for the CLIP hybrid loss, the generator and the
noise-aware classifier; without the global-batch gather the CLIP numbers differ."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from daug_core.contrastive.losses import HybridContrastiveLoss
from daug_core.contrastive.model import build_model, build_tokenizer
from daug_core.contrastive.presets import contrastive_preset
from daug_core.contrastive.training import (
    ClipBatch,
    ContrastiveForward,
    PromptTokens,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from daug_core.diffusion.classifier.training import init_classifier_state, train_classifier
from daug_core.diffusion.generator import init_generator_state, train_generator
from daug_core.diffusion.presets import preset
from daug_core.distributed import SINGLE, Ranks
from tests.daug_core.helpers import disc_batches, micro_config

GLOBAL_BATCH, STEPS = 32, 3
Result = dict[str, Any]


def _clip_batches() -> list[ClipBatch]:
    """3 global batches of random image/heatmap/report pairs; a quarter of the labels masked
    (so the ranks' shares hold different numbers of known labels)."""
    config = contrastive_preset("tiny")
    tokenizer = build_tokenizer(config.model)
    size = config.model.image_size
    rng = torch.Generator().manual_seed(1)
    words = ["effusion", "clear lungs", "cardiomegaly", "pneumonia", "normal", "edema"]
    batches = []
    for _ in range(STEPS):
        picks = torch.randint(0, 6, (GLOBAL_BATCH, 2), generator=rng).tolist()
        labels = torch.randint(0, 2, (GLOBAL_BATCH, 14), generator=rng).float()
        labels[torch.rand(labels.shape, generator=rng) < 0.25] = float("nan")
        batches.append(
            ClipBatch(
                torch.rand(GLOBAL_BATCH, 1, size, size, generator=rng),
                torch.rand(GLOBAL_BATCH, 1, size, size, generator=rng),
                tokenizer([f"{words[a]} and {words[b]}" for a, b in picks]),
                labels,
            )
        )
    return batches


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _clip_run(ranks: Ranks, global_negatives: bool = True) -> Result:
    config = contrastive_preset("tiny")
    # The hybrid loss (w = 0.7) and a learned logit scale: both terms and the scale's gradient.
    model = build_model(config, ("+No Finding",), seed=0)
    optimizer = make_optimizer(model, config.training)
    scheduler = make_scheduler(optimizer, config.training, total_steps=STEPS)
    tokenizer = build_tokenizer(config.model)
    prompts = PromptTokens(tokenizer(list(config.loss.class_prompts)), None)
    rows = ranks.rows(GLOBAL_BATCH)
    batches = [ClipBatch(*(t[rows] for t in batch)) for batch in _clip_batches()]
    losses: list[float] = []
    train_epoch(
        model,
        HybridContrastiveLoss(config.loss),
        batches,
        prompts,
        optimizer,
        scheduler,
        on_step=lambda step, loss: losses.append(loss),
        ranks=ranks,
        forward=ranks.wrap(ContrastiveForward(model), torch.device("cpu")),
        global_negatives=global_negatives,
    )
    return {"losses": losses, "params": _params(model)}


def _diffusion_runs(ranks: Ranks) -> dict[str, Result]:
    config = micro_config()
    # The classifier at the tiny preset's learning rate (micro_config's 2e-3 makes Adam's
    # first steps ~lr * sign(g) for near-zero gradients, where float noise decides the sign).
    tiny_rate = preset("tiny").classifier_training.learning_rate
    config = dataclasses.replace(
        config,
        generator_training=dataclasses.replace(config.generator_training, batch_size=32),
        classifier_training=dataclasses.replace(
            config.classifier_training, batch_size=32, learning_rate=tiny_rate
        ),
    )
    rows = ranks.rows(GLOBAL_BATCH)
    data = [(x[rows], y[rows]) for x, y in disc_batches(STEPS, GLOBAL_BATCH, 32, seed=3)]
    generator = init_generator_state(config, generator=torch.Generator().manual_seed(0))
    g = train_generator(generator, data, until_step=STEPS, ranks=ranks)
    classifier = init_classifier_state(
        config, pos_weight=None, generator=torch.Generator().manual_seed(1)
    )
    c = train_classifier(classifier, data, until_step=STEPS, ranks=ranks)
    ema = torch.cat([p.flatten() for p in generator.ema.shadow_params])
    return {
        "generator": {"losses": list(g.losses), "params": _params(generator.unet), "ema": ema},
        "classifier": {"losses": list(c.losses), "params": _params(classifier.classifier)},
    }


def _rank_main(rank: int, world_size: int, init_file: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    torch.set_num_threads(1)
    try:
        ranks = Ranks.current()
        results = {
            "clip": _clip_run(ranks),
            "clip_local": _clip_run(ranks, global_negatives=False),
            **_diffusion_runs(ranks),
        }
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Result]]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, Result]:
    torch.set_num_threads(1)
    return {"clip": _clip_run(SINGLE), **_diffusion_runs(SINGLE)}


@pytest.mark.parametrize("model", ["clip", "generator", "classifier"])
def test_two_workers_take_the_single_process_steps(
    two_ranks: list[dict[str, Result]], one_process: dict[str, Result], model: str
) -> None:
    reference = one_process[model]
    for rank in two_ranks:
        ours = rank[model]
        assert ours["losses"][0] == pytest.approx(reference["losses"][0], abs=1e-5)
        assert ours["losses"] == pytest.approx(reference["losses"], abs=1e-4)
        torch.testing.assert_close(ours["params"], reference["params"], rtol=0, atol=1e-4)
    # DDP keeps the ranks identical, bit for bit.
    torch.testing.assert_close(two_ranks[0][model]["params"], two_ranks[1][model]["params"])
    if model == "generator":  # the EMA too (every rank updates it from the same weights)
        torch.testing.assert_close(two_ranks[1][model]["ema"], reference["ema"], atol=1e-4, rtol=0)


def test_without_the_global_gather_the_contrastive_update_differs(
    two_ranks: list[dict[str, Result]], one_process: dict[str, Result]
) -> None:
    """Per-rank InfoNCE over 16 pairs has 15 negatives, not 31: a different loss and update."""
    local, reference = two_ranks[0]["clip_local"], one_process["clip"]
    assert abs(local["losses"][0] - reference["losses"][0]) > 0.1
    assert (local["params"] - reference["params"]).abs().max() > 1e-3


def test_ranks_split_a_global_batch_into_contiguous_shares() -> None:
    shares = [Ranks(r, 4).rows(32) for r in range(4)]
    assert [(s.start, s.stop) for s in shares] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        Ranks(0, 3).local_batch(32)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        Ranks(2, 2)
