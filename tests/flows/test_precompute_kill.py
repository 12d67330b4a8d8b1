"""SIGKILL the `daug precompute` process mid-run, rerun it: the heatmaps equal an uninterrupted
run's bit for bit, and the rerun computes only the shards the killed run had not finished.

Both CLI runs connect to the session's Ray through RAY_ADDRESS (the cluster path of
`connect_ray`); Ray removes the killed driver's actor by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect.settings import get_current_settings

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.runtime.pool import PoolSettings
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from tests.factories import write_random_checkpoints

pytestmark = pytest.mark.slow

TARGETS = ["+No Finding", "+Pleural"]
NUMBERS = {"level": 50, "steps": 3, "inversion_refinements": 0, "batch_size": 2, "actors": 1}


def _done(store: Path) -> np.ndarray:
    try:
        return np.asarray(zarr.open_group(store, mode="r")["heatmaps/v1/heatmaps_done"][:])
    except (FileNotFoundError, KeyError, ValueError):
        return np.zeros(0, dtype=bool)


def test_killed_precompute_resumes_to_the_same_heatmaps(
    tmp_path, synthetic_pair, prefect_server, ray_session
):
    import ray

    reference = tmp_path / "reference"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(reference),
        ingest=IngestConfig(size=64, shard_items=4),
    )
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    ckpt = write_random_checkpoints(tmp_path / "ckpt")

    args = [sys.executable, "-m", "flows.cli", "precompute", "--store", str(killed)]
    args += ["--checkpoints", str(ckpt), *[f"--target={t}" for t in TARGETS]]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in NUMBERS.items()]
    env = os.environ | {
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while _done(killed).sum() < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    total = int(ImageStore.open(killed, read_only=True).done_mask().sum())
    partial = _done(killed)
    assert 0 < partial.sum() < total, (partial.sum(), total)
    before = HeatmapStore(ImageStore.open(killed, read_only=True)).read_heatmaps(
        np.flatnonzero(partial)
    )

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    precompute_flow(
        store=str(reference),
        checkpoints=str(ckpt),
        heatmaps=HeatmapSettings.build(
            targets=tuple(TARGETS),
            translation={"level": 50, "steps": 3, "inversion_refinements": 0},
        ),
        pool=PoolSettings(batch_size=2, actors=1),
    )
    resumed = HeatmapStore(ImageStore.open(killed, read_only=True))
    uninterrupted = HeatmapStore(ImageStore.open(reference, read_only=True))
    np.testing.assert_array_equal(resumed.done_mask(), uninterrupted.done_mask())
    assert resumed.done_mask().sum() == total
    everything = np.arange(len(resumed))
    np.testing.assert_array_equal(
        resumed.read_heatmaps(everything), uninterrupted.read_heatmaps(everything)
    )
    # No item the killed run had finished was computed again.
    last = resumed.attrs["runs"][-1]
    assert last["done"] == total - int(partial.sum()) and last["already_done"] == partial.sum()
    np.testing.assert_array_equal(resumed.read_heatmaps(np.flatnonzero(partial)), before)
