"""Contrastive data loading: the store-backed ContrastiveDataset against the same tensors in
memory (a TensorDataset), through the same DataLoader settings.

Builds a synthetic image store in a temporary directory (``--items`` images at ``--size`` px,
one heatmap version with ``--channels`` channels, every item done), then, for 0 and 2 spawn
workers, iterates

1. loading alone: ``--epochs`` epochs at batch ``--batch-size``, images/s of the in-memory
   loader, of the store loader and of the store loader with augmentation;
2. loading + a training step (``--step-model resnet18``: forward, backward and AdamW of a
   ResNet-18 with an 8-channel stem, a stand-in for the image tower), one epoch each: the
   throughput a training loop sees.

Throughput is counted from the first batch of an epoch to its last, so worker start-up
(spawn imports torch in each worker, once per epoch with non-persistent workers) is reported
separately as the time to the first batch. Target (issue): store-backed >= 0.8x in memory.

    .venv/bin/python benchmarks/contrastive_loading.py [--items 512] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from daug_core.diffusion.config import TranslationConfig
from daug_core.labels import LABEL_COLUMNS, SUPER_CLASS_NAMES
from storage.datasets.augment import AugmentConfig
from storage.datasets.contrastive import ContrastiveDataset, make_loader
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore

log = logging.getLogger("contrastive_loading")


@dataclass(frozen=True)
class Measured:
    images_per_s: float  # first batch to last, summed over epochs
    first_batch_s: float  # mean time to the first batch of an epoch (worker start-up)


def build_store(root: Path, items: int, size: int, channels: int, shard: int) -> Path:
    """A store with ``items`` finished images and heatmaps, all in the train split."""
    rng = np.random.default_rng(0)
    path = root / "store"
    store = ImageStore.create(path, size, shard_items=shard)
    rows = pd.DataFrame(
        {
            "dicom_id": [f"d{i:06d}" for i in range(items)],
            "study_id": [f"s{i // 2:06d}" for i in range(items)],
            "split": "train",
        }
    )
    rows[list(LABEL_COLUMNS)] = (rng.random((items, len(LABEL_COLUMNS))) < 0.3).astype(float)
    store.register(rows)
    store.write_images(np.arange(items), rng.random((items, size, size)))
    for first in range(0, items, shard):
        idx = np.arange(first, min(items, first + shard))
        store.write_part(
            first // shard,
            pd.DataFrame(
                {
                    "index": idx,
                    "status": "ok",
                    "findings": [f"Synthetic finding number {i}." for i in idx],
                    "impression": "No acute cardiopulmonary process.",
                }
            ),
        )
    store.mark_done(np.arange(items))
    store.consolidate()
    targets = ("+No Finding", *(f"+{c}" for c in SUPER_CLASS_NAMES[1:]))[:channels]
    heatmaps = HeatmapStore.create(
        store,
        HeatmapProvenance(
            targets=tuple(targets),
            translation=TranslationConfig(level=500, steps=10, mode="softmax", scale=100.0),
            preset="tiny",
            image_size=size,
            generator_sha256="0" * 64,
            classifier_sha256="0" * 64,
        ),
    )
    for first in range(0, items, shard):
        idx = np.arange(first, min(items, first + shard))
        heatmaps.write_heatmaps(idx, rng.random((len(idx), len(targets), size, size)))
    heatmaps.mark_done(np.arange(items))
    return path


Step = Callable[[torch.Tensor, torch.Tensor], None]


def measure(
    loader: DataLoader,
    epochs: int,
    set_epoch: Callable[[int], None] | None = None,
    step: Step | None = None,
) -> Measured:
    """Images/s from the first batch of each epoch to its last (and the wait for the first).

    Every batch after the first goes through ``step`` (image, heatmaps) when one is given."""
    steady, first, count = 0.0, 0.0, 0
    for epoch in range(epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        start = time.perf_counter()
        iterator = iter(loader)
        next(iterator)
        after_first = time.perf_counter()
        first += after_first - start
        for batch in iterator:
            if isinstance(batch, dict):
                images, heatmaps = batch["image"], batch["heatmaps"]
            else:
                images, heatmaps = batch[0], batch[1]
            if step is not None:
                step(images, heatmaps)
            count += len(images)
        steady += time.perf_counter() - after_first
    return Measured(count / steady, first / epochs)


class TrainingStep:
    """Forward, backward and AdamW step of a ResNet-18 taking image + heatmaps as channels."""

    def __init__(self, channels: int) -> None:
        import torchvision

        self.model = torchvision.models.resnet18(num_classes=128)
        self.model.conv1 = torch.nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def __call__(self, images: torch.Tensor, heatmaps: torch.Tensor) -> None:
        loss = self.model(torch.cat([images, heatmaps], dim=1)).square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()


def in_memory_loader(dataset: ContrastiveDataset, batch_size: int, workers: int) -> DataLoader:
    """The same tensors, already decoded, with the same sampler kind and worker start."""
    images, heatmaps = [], []
    for start in range(0, len(dataset), 256):
        batch = dataset.__getitems__(list(range(start, min(len(dataset), start + 256))))
        images.append(torch.stack([b["image"] for b in batch]))
        heatmaps.append(torch.stack([b["heatmaps"] for b in batch]))
    tensors = TensorDataset(
        torch.cat(images), torch.cat(heatmaps), torch.from_numpy(dataset.labels)
    )
    return DataLoader(
        tensors,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=7)
    parser.add_argument("--shard-items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--step-model", choices=["resnet18", "none"], default="resnet18")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    print(
        f"{args.items} items, {args.size} px, {args.channels} heatmap channels, batch "
        f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    loading, training = [], []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = build_store(Path(tmp), args.items, args.size, args.channels, args.shard_items)
        print(f"store built in {time.perf_counter() - start:.1f} s")
        plain = ContrastiveDataset(path, "train", heatmap_version="v1")
        augmented = ContrastiveDataset(path, "train", heatmap_version="v1", augment=AugmentConfig())

        def store_loader(dataset: ContrastiveDataset, workers: int) -> DataLoader:
            return make_loader(dataset, args.batch_size, True, seed=0, num_workers=workers)

        for workers in args.workers:
            memory = measure(in_memory_loader(plain, args.batch_size, workers), args.epochs)
            store = measure(store_loader(plain, workers), args.epochs, plain.set_epoch)
            aug = measure(store_loader(augmented, workers), args.epochs, augmented.set_epoch)
            loading.append((workers, memory, store, aug))
        if args.step_model == "resnet18":
            step = TrainingStep(1 + args.channels)
            warm = next(iter(in_memory_loader(plain, args.batch_size, 0)))
            for _ in range(3):  # allocator and kernel selection
                step(warm[0], warm[1])
            for workers in args.workers:
                memory = measure(in_memory_loader(plain, args.batch_size, workers), 1, step=step)
                store = measure(store_loader(plain, workers), 1, plain.set_epoch, step=step)
                aug = measure(store_loader(augmented, workers), 1, augmented.set_epoch, step)
                training.append((workers, memory, store, aug))
    for title, rows in (("loading only", loading), ("loading + ResNet-18 step", training)):
        if not rows:
            continue
        print(f"\n{title}")
        print(
            f"{'workers':>7} | {'in memory':>10} | {'store':>10} | {'ratio':>6} | "
            f"{'store+aug':>10} | {'ratio':>6} | first batch: memory / store"
        )
        for workers, memory, store, aug in rows:
            print(
                f"{workers:>7} | {memory.images_per_s:8.0f}/s | {store.images_per_s:8.0f}/s | "
                f"{store.images_per_s / memory.images_per_s:5.2f}x | "
                f"{aug.images_per_s:8.0f}/s | {aug.images_per_s / memory.images_per_s:5.2f}x | "
                f"{memory.first_batch_s:.2f} s / {store.first_batch_s:.2f} s"
            )


if __name__ == "__main__":
    main()
