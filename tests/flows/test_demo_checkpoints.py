"""The demo's shipped checkpoints: their record names their weights, and they are copied only
onto a store holding the very training data they were trained on."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from daug_core.checkpoints.diffusion import load_unet
from daug_core.checkpoints.layout import checkpoint_sha256, verify_checkpoint_files
from daug_core.checkpoints.names import MANIFEST
from daug_core.labels import SUPER_CLASS_COLUMNS
from daug_core.settings import CheckpointError
from flows.demo_checkpoints import (
    ASSET_FILE,
    DEMO_CHECKPOINTS,
    AssetError,
    read_asset,
    seed_checkpoints,
    training_fingerprint,
    write_training_fingerprint,
)
from flows.ingest import ingest_flow
from storage.datasets.batches import DataFingerprint, block_means, select, selection_fingerprint
from storage.release.ingest_config import IngestConfig
from storage.store.image import ImageStore
from tests.factories import write_random_checkpoints


def test_shipped_record_matches_the_shipped_weights_and_steps():
    asset = read_asset(DEMO_CHECKPOINTS)
    assert asset["preset"] == "tiny" and asset["steps"] == {"generator": 3000, "classifier": 3000}
    for name, steps in asset["steps"].items():
        state = json.loads((DEMO_CHECKPOINTS / name / "trainer_state.json").read_text())
        assert state["step"] == steps, name
    assert len(asset["trained_on"]["training_data_sha256"]) == 64
    fingerprint = training_fingerprint(DEMO_CHECKPOINTS, asset)
    assert len(fingerprint.items_sha256) == 64
    assert fingerprint.thumbnails.shape == (asset["trained_on"]["images"], 8, 8)
    assert 0.05 < fingerprint.thumbnails.mean() < 0.95


def test_a_copy_of_the_shipped_checkpoints_is_verified_file_by_file(tmp_path):
    """Every shipped file is listed in its SHA256SUMS.json, so a copy used as --checkpoints is
    checked before use like any checkpoint: a flipped byte in the UNet's safetensors header."""
    copy = shutil.copytree(DEMO_CHECKPOINTS, tmp_path / "ck")
    for name in ("generator", "classifier"):
        listed = json.loads((copy / name / MANIFEST).read_text())["sha256"]
        files = [p for p in (copy / name).rglob("*") if p.is_file() and p.name != MANIFEST]
        assert set(listed) == {p.relative_to(copy / name).as_posix() for p in files}, name
        assert verify_checkpoint_files(copy / name)
    weights = copy / "generator" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[20] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"unet/diffusion_pytorch_model.*differs"):
        load_unet(copy / "generator")


def fake_asset(root: Path, store: ImageStore) -> Path:
    """Random tiny checkpoints with a record claiming they were trained on ``store``."""
    asset_dir = write_random_checkpoints(root / "asset")
    record = {
        "trained_on": {"release": "the test release"},
        "steps": {"generator": 0, "classifier": 0},
        "generator_sha256": checkpoint_sha256(asset_dir / "generator"),
        "classifier_sha256": checkpoint_sha256(asset_dir / "classifier"),
    }
    fingerprint = selection_fingerprint(store, select(store, ["train"], SUPER_CLASS_COLUMNS))
    record = write_training_fingerprint(asset_dir, record, fingerprint)
    (asset_dir / ASSET_FILE).write_text(json.dumps(record))
    return asset_dir


@pytest.fixture(scope="module")
def stores(tmp_path_factory, synthetic_pair, prefect_server) -> dict[str, ImageStore]:
    root = tmp_path_factory.mktemp("demo_checkpoints")
    # The same cohort as DICOM and as JPG: the same ids and labels, other source bytes.
    for name, release in zip(("dicom", "jpg"), synthetic_pair, strict=True):
        ingest_flow(
            release=str(release),
            store=str(root / name),
            ingest=IngestConfig(size=32, shard_items=8),
        )
    return {name: ImageStore.open(root / name, read_only=True) for name in ("dicom", "jpg")}


def test_copied_onto_the_same_training_data_only_once(tmp_path, stores):
    asset_dir = fake_asset(tmp_path, stores["dicom"])
    out = tmp_path / "checkpoints"
    seeded = seed_checkpoints(stores["dicom"], out, asset_dir)
    assert seeded.copied and "shipped checkpoints" in seeded.reason
    for name in ("generator", "classifier"):
        assert checkpoint_sha256(out / name) == checkpoint_sha256(asset_dir / name)
    assert (out / "generator" / "trainer_state.json").is_file()
    assert not list(out.glob(".seed-*"))  # the staging folder is gone
    again = seed_checkpoints(stores["dicom"], out, asset_dir)
    assert not again.copied and "already holds checkpoints" in again.reason


def test_other_training_data_train_from_scratch(tmp_path, stores):
    asset_dir = fake_asset(tmp_path, stores["dicom"])
    out = tmp_path / "checkpoints"
    outcome = seed_checkpoints(stores["jpg"], out, asset_dir)  # same ids and labels, lossy pixels
    assert not outcome.copied and "training from scratch" in outcome.reason
    assert "other pixels (block means differ by up to" in outcome.reason
    assert not (out / "generator").exists()


def test_the_fingerprint_ignores_rounding_but_not_a_change_of_the_data(stores):
    store = stores["dicom"]
    selection = select(store, ["train"], SUPER_CLASS_COLUMNS)
    fingerprint = selection_fingerprint(store, selection)
    pixels = store.read_images(selection.indices)
    assert fingerprint.thumbnails.shape == (len(selection.indices), 8, 8)
    np.testing.assert_allclose(fingerprint.thumbnails[:, 0, 0], pixels[:, :4, :4].mean((1, 2)))
    # What another CPU's rendering does: one grey level (of 65,535) in 0.1 % of the pixels.
    rng = np.random.default_rng(0)
    flipped = pixels + (rng.random(pixels.shape) < 1e-3) / 65535
    assert (
        fingerprint.differences(DataFingerprint(fingerprint.items_sha256, block_means(flipped)))
        is None
    )
    # A lesion a tenth as bright in one item's block is another release.
    changed = pixels.copy()
    changed[3, 8:12, 8:12] += 0.1
    other = fingerprint.differences(DataFingerprint(fingerprint.items_sha256, block_means(changed)))
    assert other is not None and "other pixels" in other
    # Other labels: the items hash.
    labels = selection.labels.copy()
    labels[0] = 1.0 - labels[0]
    relabelled = dataclasses.replace(selection, labels=labels)
    found = selection_fingerprint(store, relabelled)
    assert np.array_equal(found.thumbnails, fingerprint.thumbnails)
    message = fingerprint.differences(found)
    assert message is not None and "other items or labels" in message


def test_block_means_of_a_size_the_grid_does_not_divide():
    image = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    means = block_means(image, grid=3)  # blocks of 3, 3 and 4 rows / columns
    assert means.shape == (1, 3, 3)
    assert means[0, 0, 0] == image[0, :3, :3].mean()
    assert means[0, 2, 2] == image[0, 6:, 6:].mean()


def test_tampered_weights_are_refused(tmp_path, stores):
    asset_dir = fake_asset(tmp_path, stores["dicom"])
    weights = asset_dir / "classifier" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=r"classifier.*differ"):
        seed_checkpoints(stores["dicom"], tmp_path / "checkpoints", asset_dir)
    shutil.rmtree(asset_dir / "generator")
    with pytest.raises(AssetError, match="generator"):
        read_asset(asset_dir)


@pytest.mark.slow
def test_shipped_checkpoints_apply_to_the_demos_own_release(tmp_path, prefect_server):
    # The demo's steps 1-2 (its defaults): if the synthetic generator or the ingest ever
    # changes what the demo trains on, this fails and the shipped models must be retrained
    # (flows/demo_assets/checkpoints/asset.json says how).
    from storage.synthetic import SynthConfig, write_synthetic_release

    summary = write_synthetic_release(
        tmp_path / "synthetic", SynthConfig(studies=300, size=128), seed=0
    )
    store = tmp_path / "store"
    ingest_flow(
        release=str(summary.release_dir),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=32),
    )
    outcome = seed_checkpoints(ImageStore.open(store, read_only=True), tmp_path / "checkpoints")
    assert outcome.copied, outcome.reason
