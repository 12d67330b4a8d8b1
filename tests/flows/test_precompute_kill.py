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
from tests.factories import write_random_checkpoints, write_random_student

pytestmark = pytest.mark.slow

TARGETS = ["+No Finding", "+Pleural"]
NUMBERS = {"level": 50, "steps": 3, "inversion_refinements": 0, "batch_size": 2, "actors": 1}


def _done(store: Path, version: str = "v1") -> np.ndarray:
    try:
        return np.asarray(zarr.open_group(store, mode="r")[f"heatmaps/{version}/heatmaps_done"][:])
    except (FileNotFoundError, KeyError, ValueError):
        return np.zeros(0, dtype=bool)


def stores(tmp_path: Path, release: Path) -> tuple[Path, Path]:
    """Two copies of one ingested 64 px store (shards of 4): the reference, and the one the
    test kills a run on."""
    reference = tmp_path / "reference"
    ingest_flow(
        release=str(release), store=str(reference), ingest=IngestConfig(size=64, shard_items=4)
    )
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    return reference, killed


def cli_environment() -> dict[str, str]:
    """The CLI's runs use the session's Prefect server and Ray (RAY_ADDRESS: the cluster
    path of `connect_ray`)."""
    import ray

    return os.environ | {
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }


def kill_midway(args: list[str], store: Path, version: str, at_least: int) -> np.ndarray:
    """Run the command ``args``, SIGKILL it once ``at_least`` items of ``version`` are done,
    and return the done flags once they stop changing (Ray stops the killed driver's actor by
    itself, after it may have committed a batch or two it held)."""
    process = subprocess.Popen(
        args, env=cli_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while _done(store, version).sum() < at_least and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial, still = _done(store, version), time.monotonic()
    while time.monotonic() - still < 3:
        time.sleep(0.1)
        now = _done(store, version)
        if now.sum() != partial.sum():
            partial, still = now, time.monotonic()
    total = int(ImageStore.open(store, read_only=True).done_mask().sum())
    assert 0 < partial.sum() < total, (partial.sum(), total)
    return partial


def check_resumed(killed: Path, reference: Path, version: str, partial: np.ndarray) -> None:
    """``version`` of the resumed store equals the uninterrupted run's bit for bit, and the
    rerun computed exactly the items the killed run had not committed."""
    resumed = HeatmapStore(ImageStore.open(killed, read_only=True), version)
    uninterrupted = HeatmapStore(ImageStore.open(reference, read_only=True), version)
    total = int(ImageStore.open(killed, read_only=True).done_mask().sum())
    np.testing.assert_array_equal(resumed.done_mask(), uninterrupted.done_mask())
    assert resumed.done_mask().sum() == total
    everything = np.arange(len(resumed))
    np.testing.assert_array_equal(
        resumed.read_heatmaps(everything), uninterrupted.read_heatmaps(everything)
    )
    # No item the killed run had finished was computed again.
    last = resumed.attrs["runs"][-1]
    assert last["done"] == total - int(partial.sum()) and last["already_done"] == partial.sum()


def rerun(args: list[str]) -> None:
    finished = subprocess.run(
        args, env=cli_environment(), capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]


def test_killed_precompute_resumes_to_the_same_heatmaps(
    tmp_path, synthetic_pair, prefect_server, ray_session
):
    reference, killed = stores(tmp_path, synthetic_pair[0])
    ckpt = write_random_checkpoints(tmp_path / "ckpt")

    args = [sys.executable, "-m", "flows.cli", "precompute", "--store", str(killed)]
    args += ["--checkpoints", str(ckpt), *[f"--target={t}" for t in TARGETS]]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in NUMBERS.items()]
    partial = kill_midway(args, killed, "v1", at_least=4)
    before = HeatmapStore(ImageStore.open(killed, read_only=True)).read_heatmaps(
        np.flatnonzero(partial)
    )
    rerun(args)

    precompute_flow(
        store=str(reference),
        checkpoints=str(ckpt),
        heatmaps=HeatmapSettings.build(
            targets=tuple(TARGETS),
            translation={"level": 50, "steps": 3, "inversion_refinements": 0},
        ),
        pool=PoolSettings(batch_size=2, actors=1),
    )
    check_resumed(killed, reference, "v1", partial)
    resumed = HeatmapStore(ImageStore.open(killed, read_only=True))
    np.testing.assert_array_equal(resumed.read_heatmaps(np.flatnonzero(partial)), before)


def test_killed_student_precompute_resumes_without_recomputing_committed_batches(
    tmp_path, synthetic_pair, prefect_server, ray_session
):
    reference, killed = stores(tmp_path, synthetic_pair[0])
    student = write_random_student(tmp_path / "student", TARGETS)

    args = [sys.executable, "-m", "flows.cli", "precompute", "--store", str(killed)]
    args += ["--student", str(student), "--heatmap-version=student", "--batch-size=2"]
    args += ["--actors=1"]
    partial = kill_midway(args, killed, "student", at_least=4)
    rerun(args)

    precompute_flow(
        store=str(reference),
        student=str(student),
        pool=PoolSettings(batch_size=2, actors=1),
        heatmap_version="student",
    )
    check_resumed(killed, reference, "student", partial)
