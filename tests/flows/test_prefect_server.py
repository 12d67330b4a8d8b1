"""The CLI's temporary Prefect server never outlives its run: stopped at exit (SIGTERM too),
and after a SIGKILL stopped by the next CLI start, found by its pid record, never by name."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from flows.cli.prefect_server import RECORDS, ServerRecord, process_started, stop_orphans
from storage.synthetic import SynthConfig, write_synthetic_release


def _record(directory: Path, owner: int, server: subprocess.Popen, *, started=None) -> Path:
    record = ServerRecord(
        owner_pid=owner,
        owner_started=process_started(owner) or 0,
        server_pid=server.pid,
        server_started=started if started is not None else process_started(server.pid),
        port=4242,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{server.pid}.json"
    path.write_text(json.dumps(asdict(record)))
    return path


def _gone_owner() -> int:
    """The pid of a process that has exited (and been reaped)."""
    owner = subprocess.Popen(["true"])
    owner.wait()
    return owner.pid


def test_stop_orphans_stops_only_servers_whose_owner_is_gone(tmp_path):
    orphan = subprocess.Popen(["sleep", "60"])
    owned = subprocess.Popen(["sleep", "60"])
    reused = subprocess.Popen(["sleep", "60"])  # its pid recorded with another start time
    try:
        orphan_record = _record(tmp_path, _gone_owner(), orphan)
        owned_record = _record(tmp_path, os.getpid(), owned)
        reused_record = _record(tmp_path, _gone_owner(), reused, started=1)
        (tmp_path / "garbage.json").write_text("{not json")

        assert stop_orphans(tmp_path) == [orphan.pid]

        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert not orphan_record.exists()
        assert owned.poll() is None and owned_record.exists()  # its owner (this test) runs
        assert reused.poll() is None  # a pid whose start time differs is another process
        assert not reused_record.exists()
        assert (tmp_path / "garbage.json").exists()
    finally:
        for process in (orphan, owned, reused):
            process.kill()
            process.wait()


def test_process_started_names_one_process():
    assert process_started(os.getpid()) == process_started(os.getpid())
    assert process_started(_gone_owner()) is None


def _wait_for_record(directory: Path, process: subprocess.Popen, log: Path) -> ServerRecord:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        records = list(directory.glob("*.json"))
        if records:
            return ServerRecord(**json.loads(records[0].read_text()))
        time.sleep(0.05)
    raise AssertionError(f"no server record (exit code {process.poll()}): {log.read_text()}")


@pytest.mark.slow
def test_cli_temporary_server_is_stopped_after_sigterm_and_after_sigkill(tmp_path):
    release = write_synthetic_release(
        tmp_path / "synth", SynthConfig(studies=200, size=192), seed=3
    ).release_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    records = tmp_path / "prefect" / RECORDS

    def ingest(store: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "flows.cli", "ingest", str(release), "--store", store]
        return subprocess.Popen(
            [*command, "--size", "64", "--shard-items", "2", "--all-views"],
            env=env,
            stdout=(tmp_path / f"{Path(store).name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )

    # SIGTERM: the CLI unwinds and stops its server on the way out.
    process = ingest(str(tmp_path / "a"))
    record = _wait_for_record(records, process, tmp_path / "a.log")
    assert record.owner_pid == process.pid
    assert process_started(record.server_pid) == record.server_started
    process.send_signal(signal.SIGTERM)
    # 130: interrupted (a KeyboardInterrupt Python re-raises as SIGINT at exit would be -2)
    assert process.wait(timeout=120) in (130, -signal.SIGINT)
    assert process_started(record.server_pid) is None
    assert not list(records.glob("*.json"))

    # SIGKILL: the server is orphaned, and the next CLI start stops it.
    process = ingest(str(tmp_path / "b"))
    record = _wait_for_record(records, process, tmp_path / "b.log")
    process.kill()
    process.wait(timeout=30)
    time.sleep(0.5)
    assert process_started(record.server_pid) == record.server_started  # orphaned, alive
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert process_started(record.server_pid) is None
    assert not list(records.glob("*.json"))
