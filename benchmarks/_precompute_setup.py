"""Set-up shared by the precompute benchmarks: offline environment, random-weight tiny
checkpoints (the same compute as trained weights) and an ingested synthetic 64 px store.

Import it before ray/prefect: it sets the environment those read at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["http_proxy"] = os.environ["HTTP_PROXY"] = "http://127.0.0.1:9"
os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["PREFECT_HOME"] = str(Path(__file__).resolve().parents[1] / ".prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"

import torch

from daug_core.checkpoints.diffusion import save_classifier_checkpoint, save_generator_checkpoint
from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
from daug_core.diffusion.classifier.training import init_classifier_state
from daug_core.diffusion.generator import init_generator_state
from daug_core.diffusion.presets import preset


def save_random_checkpoints(ckpt: Path) -> None:
    """Untrained tiny generator and classifier in ``ckpt/generator`` and ``ckpt/classifier``."""
    config = preset("tiny")
    generator = init_generator_state(config, generator=torch.Generator().manual_seed(0))
    save_generator_checkpoint(generator, ckpt / GENERATOR_DIR)
    classifier = init_classifier_state(
        config, pos_weight=None, generator=torch.Generator().manual_seed(1)
    )
    save_classifier_checkpoint(classifier, ckpt / CLASSIFIER_DIR)


def build_store(root: Path, studies: int, images: int, shard_items: int = 8) -> Path:
    """Ingest a synthetic release (every view) into a 64 px store of at least ``images``, in
    shards of ``shard_items`` (a shard is the unit the dispatcher hands an actor: small shards
    let a few dozen images keep several actors busy)."""
    from flows.ingest import ingest_flow
    from storage.release.ingest_config import IngestConfig, ReaderConfig
    from storage.store.image import ImageStore
    from storage.synthetic import SynthConfig, write_synthetic_release

    release = write_synthetic_release(root / "release", SynthConfig(studies=studies, size=64), 7)
    store = root / "store"
    ingest = IngestConfig(size=64, shard_items=shard_items, reader=ReaderConfig(views=()))
    ingest_flow(release=str(release.release_dir), store=str(store), ingest=ingest)
    n = int(ImageStore.open(store).done_mask().sum())
    if n < images:
        raise SystemExit(f"only {n} images ingested, need {images}: raise --studies")
    return store
