"""SIGKILL or SIGTERM the `daug ingest` process mid-run, rerun it: the store equals an
uninterrupted run. SIGTERM stops the run (exit code not 0) after its running shard tasks."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from prefect.settings import get_current_settings

from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.store.image import ImageStore
from storage.synthetic import SynthConfig, write_synthetic_release

pytestmark = pytest.mark.slow


def _daug(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _done_count(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(store, mode="r")["done"][:]).sum())
    except (FileNotFoundError, KeyError, ValueError):
        return 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_ingest_resumes_to_the_same_store(tmp_path, prefect_server, sig):
    release = write_synthetic_release(
        tmp_path / "synth", SynthConfig(studies=160, size=192), seed=21
    ).release_dir
    args = ["ingest", str(release), "--size", "64", "--shard-items", "2", "--all-views"]
    env = os.environ | {"PREFECT_API_URL": str(get_current_settings().api.url)}
    killed = tmp_path / "killed"

    process = subprocess.Popen(
        _daug(*args, "--store", str(killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _done_count(killed) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "ingest finished before it could be killed"
    os.kill(process.pid, sig)
    code = process.wait(timeout=120)
    partial = _done_count(killed)
    if sig == signal.SIGTERM:
        # Unwound and exited by itself (killed by the signal would be -15), not finished.
        assert code > 0, code
        time.sleep(1.0)
        assert _done_count(killed) == partial  # no writer of the run outlived it
    total = len(pd.read_csv(killed / "items.csv"))
    assert 0 < partial < total, (partial, total)

    rerun = subprocess.run(
        _daug(*args, "--store", str(killed)), env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    reference = tmp_path / "reference"
    ingest_flow(
        release=str(release),
        store=str(reference),
        ingest=IngestConfig(size=64, shard_items=2, reader=ReaderConfig(views=())),
    )
    a, b = ImageStore.open(killed), ImageStore.open(reference)
    pd.testing.assert_frame_equal(a.items(), b.items())
    pd.testing.assert_frame_equal(a.quarantine(), b.quarantine())
    np.testing.assert_array_equal(a.done_mask(), b.done_mask())
    np.testing.assert_array_equal(a.read_images(range(len(a))), b.read_images(range(len(b))))
    # The resumed run did not redo what the killed run had finished.
    in_flight = 2 * 2  # two task workers, two items per shard
    assert a.attrs["ingests"][-1]["ingested"] <= total - partial + in_flight
