"""Training throughput: data-parallel workers against one process, the share of a step spent
communicating, and bf16 against fp32 step time, for the tiny generator, classifier and CLIP.

Data parallel: the training loops of daug_core (the ones Ray Train runs) in ``--workers``
processes started by torch.multiprocessing (gloo on CPUs, NCCL with one GPU each on a GPU
node), every rank stepping its share of a global batch of ``--batch`` random items, against
one process stepping the whole batch. Communication share: 1 - (step time of the same local
share without any collective: no DDP gradient all-reduce, no gathered loss) / (step time of the
data-parallel step). On a GPU node the same command prints images/s per GPU.

Precision: ms per optimiser step of each tiny model in one process, fp32 against bf16 autocast
(fp32 master weights), on ``--device``.

Usage: .venv/bin/python benchmarks/training_scaling.py [--workers 2] [--batch 32] [--steps 6]
       [--device cpu|cuda] [--part all|data-parallel|precision] [--models clip ...]
(On a CPU without bf16 units the bf16 generator step is minutes: --part precision --batch 4.)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daug_core.compute import Compute, Precision
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

MODELS = ("generator", "classifier", "clip")
WARMUP = 2


def clip_batches(count: int, batch: int) -> list[ClipBatch]:
    config = contrastive_preset("tiny")
    tokenizer = build_tokenizer(config.model)
    size = config.model.image_size
    rng = torch.Generator().manual_seed(0)
    return [
        ClipBatch(
            torch.rand(batch, 1, size, size, generator=rng),
            torch.rand(batch, 1, size, size, generator=rng),
            tokenizer(["left pleural effusion, mild cardiomegaly"] * batch),
            torch.randint(0, 2, (batch, 14), generator=rng).float(),
        )
        for _ in range(count)
    ]


def image_batches(count: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    size = preset("tiny").image_size
    rng = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch, 1, size, size, generator=rng) * 2 - 1,
            torch.randint(0, 2, (batch, 7), generator=rng).float(),
        )
        for _ in range(count)
    ]


def seconds_per_step(
    model: str,
    steps: int,
    batch: int,
    ranks: Ranks,
    device: torch.device,
    precision: Precision,
    communicate: bool = True,
) -> float:
    """Mean wall seconds of ``steps`` optimiser steps (after ``WARMUP``) on this rank's share
    of global batches of ``batch``; ``communicate=False`` runs the same share with no
    collective at all (the compute-only reference)."""
    active = ranks if communicate else SINGLE
    local = ranks.local_batch(batch)
    total = steps + WARMUP
    times: list[float] = []

    def tick(*_: object) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())

    if model == "clip":
        config = contrastive_preset("tiny")
        clip = build_model(config, ("+No Finding",), seed=0).to(device)
        optimizer = make_optimizer(clip, config.training)
        scheduler = make_scheduler(optimizer, config.training, total_steps=total)
        tokenizer = build_tokenizer(config.model)
        prompts = PromptTokens(tokenizer(list(config.loss.class_prompts)), None)
        tick()
        train_epoch(
            clip,
            HybridContrastiveLoss(config.loss),
            clip_batches(total, local),
            prompts,
            optimizer,
            scheduler,
            on_step=tick,
            compute=Compute(device=device, precision=precision),
            ranks=active,
            forward=active.wrap(ContrastiveForward(clip), device),
        )
    else:
        diffusion = preset("tiny")
        rows = {"batch_size": batch}
        diffusion = dataclasses.replace(
            diffusion,
            generator_training=dataclasses.replace(diffusion.generator_training, **rows),
            classifier_training=dataclasses.replace(diffusion.classifier_training, **rows),
        )
        data = image_batches(total, local)
        rng = torch.Generator().manual_seed(0)
        train: Callable[..., object]
        state: Any
        if model == "generator":
            state = init_generator_state(diffusion, generator=rng, device=device)
            train = train_generator
        else:
            state = init_classifier_state(diffusion, pos_weight=None, generator=rng, device=device)
            train = train_classifier
        tick()
        train(
            state,
            data,
            until_step=total,
            on_step=lambda report: tick(),
            compute=Compute(device=device, precision=precision),
            ranks=active,
        )
    gaps = [b - a for a, b in itertools.pairwise(times)][WARMUP:]
    return sum(gaps) / len(gaps)


def rank_main(rank: int, world: int, init: str, out: str, args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"file://{init}", rank=rank, world_size=world
    )
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, args.threads // world))
    ranks = Ranks.current()
    rows = {}
    for model in args.models:
        full = seconds_per_step(model, args.steps, args.batch, ranks, device, "fp32")
        alone = seconds_per_step(model, args.steps, args.batch, ranks, device, "fp32", False)
        rows[model] = (full, alone)
    torch.save(rows, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def data_parallel(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    single = {
        m: seconds_per_step(m, args.steps, args.batch, SINGLE, device, "fp32") for m in args.models
    }
    folder = tempfile.mkdtemp(prefix="training_scaling_")
    mp.spawn(
        rank_main,
        args=(args.workers, f"{folder}/init", folder, args),
        nprocs=args.workers,
        join=True,
    )
    ranks = [torch.load(f"{folder}/rank{r}.pt", weights_only=True) for r in range(args.workers)]
    print(
        f"\n## data parallel: {args.workers} workers x {args.batch // args.workers} vs 1 x "
        f"{args.batch} ({args.device}, fp32, {args.threads} threads in all)\n"
    )
    print("| model | 1 process img/s | workers img/s | speed-up | per worker img/s | comm share |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        full = max(r[model][0] for r in ranks)  # the slowest rank sets the pace
        alone = max(r[model][1] for r in ranks)
        one = args.batch / single[model]
        many = args.batch / full
        print(
            f"| {model} | {one:.0f} | {many:.0f} | {many / one:.2f} | "
            f"{many / args.workers:.0f} | {1 - alone / full:.0%} |"
        )


def precision(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"\n## bf16 vs fp32, one process ({args.device}, batch {args.batch})\n")
    print("| model | fp32 ms/step | bf16 ms/step | bf16 / fp32 time |")
    print("|---|---|---|---|")
    for model in args.models:
        fp32 = seconds_per_step(model, args.steps, args.batch, SINGLE, device, "fp32")
        bf16 = seconds_per_step(model, args.steps, args.batch, SINGLE, device, "bf16")
        print(f"| {model} | {fp32 * 1e3:.0f} | {bf16 * 1e3:.0f} | {bf16 / fp32:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--part", choices=("all", "data-parallel", "precision"), default="all")
    args = parser.parse_args()
    if args.part in ("all", "data-parallel"):
        data_parallel(args)
    if args.part in ("all", "precision"):
        precision(args)


if __name__ == "__main__":
    main()
