"""Integrity across runs: verify un-finishes a corrupted item and the next ingest restores it;
a store locked by a live run refuses ingest / precompute before they write; `daug verify`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.lease import LEASE_FOLDER, StoreLease, StoreLockedError, latest_record
from storage.store.location import Location
from storage.store.verify import verify_store
from tests.factories import corrupt_item, fill_images
from tests.factories import run_daug as daug

SHARD = 8


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` (but the lease) with its mtime and bytes."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and LEASE_FOLDER not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module", params=["directory", "directory-sharded"])
def ingested(request, tmp_path_factory, synthetic_pair, prefect_server) -> Path:
    sharded = request.param.endswith("sharded")
    store = tmp_path_factory.mktemp("integrity") / "store"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=SHARD, sharded=sharded),
    )
    return store


def test_verify_then_ingest_restores_a_corrupted_image(ingested, synthetic_pair):
    store = ImageStore.open(ingested)
    victim = int(np.flatnonzero(store.done_mask())[3])
    original = store.read_image(victim)
    sharded = bool(store.attrs["sharded"])
    corrupt_item(ingested / "images", victim, SHARD if sharded else None, trailing=2)

    report = verify_store(store)
    assert report.problems["index"].tolist() == [victim]
    assert report.problems["reason"].iloc[0].startswith("checksum_mismatch")

    rerun = ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(ingested),
        ingest=IngestConfig(size=64, shard_items=SHARD, sharded=sharded),
    )
    assert rerun["ingested"] == 1 and rerun["plan"]["to_ingest"] == 1
    again = ImageStore.open(ingested)
    assert again.done_mask()[victim] and again.finished_mask().all()
    np.testing.assert_array_equal(again.read_image(victim), original)
    assert verify_store(again).clean
    assert latest_record(Location.of(ingested).child(LEASE_FOLDER)).released


def test_ingest_refuses_a_store_locked_by_a_live_run(ingested, synthetic_pair):
    before = snapshot(ingested)
    with StoreLease(ingested, owner="precompute:v1"), pytest.raises(StoreLockedError) as refused:
        ingest_flow(
            release=str(synthetic_pair[0]), store=str(ingested), ingest=IngestConfig(size=64)
        )
    assert "precompute:v1" in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert snapshot(ingested) == before


def test_precompute_refuses_a_store_locked_by_a_live_run(ingested, tmp_path):
    checkpoints = tmp_path / "ckpt"
    for name in ("generator", "classifier"):  # hashed for provenance before the lock
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "weights.safetensors").write_bytes(name.encode())
    before = snapshot(ingested)
    with StoreLease(ingested, owner="ingest"), pytest.raises(StoreLockedError, match="'ingest'"):
        precompute_flow(store=str(ingested), checkpoints=str(checkpoints))
    assert snapshot(ingested) == before
    assert HeatmapStore.versions(ImageStore.open(ingested)) == []


def test_the_nightly_reprocess_cannot_take_the_store_of_a_long_run(ingested, synthetic_pair):
    """A run holding the lease far past its ttl (renewed by its heartbeat) keeps the store:
    the nightly reprocess is refused with the holder's name and changes nothing."""
    import time

    from flows.reprocess import reprocess_flow

    before = snapshot(ingested)
    with StoreLease(ingested, owner="precompute:v1", ttl=1.0):
        time.sleep(2.5)  # > 2 ttl: only the heartbeat keeps the lease alive
        with pytest.raises(StoreLockedError, match="precompute:v1"):
            reprocess_flow(release=str(synthetic_pair[0]), store=str(ingested))
    assert snapshot(ingested) == before


def test_daug_verify_exit_codes(tmp_path):
    # Each `daug` process starts Python and typer: keep it to four calls.
    path = tmp_path / "store"
    store = ImageStore.create(path, 16, shard_items=4)
    fill_images(store, 6)
    clean = daug("verify", str(path))
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert "6 finished items re-read, 0 corrupted" in clean.stderr

    store.write_images([4], np.full((1, 16, 16), np.nan))
    found = daug("verify", str(path), "--no-repair")
    assert found.returncode == 1, found.stderr[-2000:]
    assert "d4" in found.stderr and "non_finite" in found.stderr and "--no-repair" in found.stderr
    assert ImageStore.open(path).done_mask()[4]
    repaired = daug("verify", str(path))
    assert repaired.returncode == 1 and "cleared 1 done flags" in repaired.stderr
    assert not ImageStore.open(path).done_mask()[4]

    with StoreLease(path, owner="ingest"):
        locked = daug("verify", str(path))
    assert locked.returncode == 2 and "error:" in locked.stderr and "'ingest'" in locked.stderr
    assert "Traceback" not in locked.stderr
