"""Fixtures shared by the flow tests of the contrastive trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic import SynthConfig, write_synthetic_release
from tests.factories import HEATMAP_TARGETS, fake_heatmap_provenance


def write_heatmaps(store: Path) -> None:
    """A heatmap version whose channels are the images themselves, scaled per target (the
    trainer must not care what the heat means), every finished item done but the first
    training item."""
    images = ImageStore.open(store)
    provenance = fake_heatmap_provenance(HEATMAP_TARGETS, 64)
    heat = HeatmapStore.create(images, provenance)
    done = np.flatnonzero(images.done_mask())
    pixels = images.read_images(done).astype(np.float32)
    k = len(HEATMAP_TARGETS)
    heat.write_heatmaps(done, np.stack([pixels * (i + 1) / k for i in range(k)], axis=1))
    items = images.items()
    no_heatmap = items.loc[items["split"] == "train", "index"].iloc[0]
    heat.mark_done(done[done != no_heatmap])


@pytest.fixture(scope="session")
def contrastive_store(tmp_path_factory, prefect_server) -> Path:
    """A 64 px store of 60 synthetic studies (every view) with heatmaps in version v1."""
    root = tmp_path_factory.mktemp("contrastive")
    release = write_synthetic_release(root / "synth", SynthConfig(studies=60, size=64), seed=8)
    path = root / "store"
    ingest_flow(
        release=str(release.release_dir),
        store=str(path),
        ingest=IngestConfig(size=64, reader=ReaderConfig(views=())),
    )
    splits = ImageStore.open(path).items()["split"].value_counts()
    assert splits["train"] >= 16 and splits["validate"] >= 4 and splits["test"] >= 4, splits
    write_heatmaps(path)
    return path


@pytest.fixture(scope="session")
def small_store(tmp_path_factory, prefect_server) -> Path:
    """A 64 px store as small as a first real release can be: 3 train images (one without
    heatmaps), 1 validate image (every validation AUC undefined) and the rest test, so the
    retrieval database (train + validate, with heatmaps) holds 3 images, fewer than the k = 5
    of mAP@5."""
    root = tmp_path_factory.mktemp("small")
    release = write_synthetic_release(root / "synth", SynthConfig(studies=8, size=64), seed=8)
    split_csv = release.release_dir / "mimic-cxr-2.0.0-split.csv"
    split = pd.read_csv(split_csv, dtype=str)
    split["split"] = ["train"] * 3 + ["validate"] + ["test"] * (len(split) - 4)
    split.to_csv(split_csv, index=False)
    path = root / "store"
    ingest_flow(
        release=str(release.release_dir),
        store=str(path),
        ingest=IngestConfig(size=64, reader=ReaderConfig(views=())),
    )
    write_heatmaps(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads collapse (up to 40x slower per step, measured) when another process
    holds a core; one is steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
