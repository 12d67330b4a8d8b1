"""Location and service faults at the command line: one ``error:`` line naming the cause, exit
2, no traceback, in bounded time: an unknown protocol, a missing bucket, an unreachable S3
endpoint, a full disk (never retried), a Prefect server that does not answer."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time

import pytest

from storage.synthetic import SynthConfig, write_synthetic_release
from tests.loopback import free_port

# Runs flows.cli.run() after an injected fault: every shard write finds the disk full. (Patched
# where flows.ingest will import it from: importing flows.ingest here would import Prefect
# before the CLI sets up its logging.)
DISK_FULL = """
import errno, pathlib, sys
import storage.store.ingest_shards

calls = pathlib.Path(sys.argv[1])

def no_space(*args, **kwargs):
    with calls.open("a") as handle:
        handle.write("shard\\n")
    raise OSError(errno.ENOSPC, "No space left on device", "/data/store/images/c/0")

storage.store.ingest_shards.ingest_shard = no_space
sys.argv = ["daug", *sys.argv[2:]]
from flows.cli import run
run()
"""


def daug(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> Run:
    """The CLI entry point in a subprocess, against the session's Prefect server unless ``env``
    names another; ``code`` replaces ``-m flows.cli`` (to inject a fault first)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    environment = os.environ | {"COLUMNS": "400"} | ({"PREFECT_API_URL": str(api)} if api else {})
    command = ["-c", code] if code else ["-m", "flows.cli"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment | (env or {}),
    )
    return Run(result, time.monotonic() - started)


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.returncode = result.returncode
        self.stderr = result.stderr
        self.seconds = seconds
        self.errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]

    def one_error(self, *names: str) -> str:
        """The one ``error:`` line, after checking the exit code and that no traceback came."""
        assert self.returncode == 2, self.stderr[-3000:]
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        assert len(self.errors) == 1, self.stderr[-3000:]
        assert all(name in self.errors[0] for name in names), self.errors
        return self.errors[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("release")
    written = write_synthetic_release(root / "synth", SynthConfig(studies=3, size=32), seed=1)
    return str(written.release_dir)


def test_an_unknown_protocol_is_one_line_from_status_and_from_ingest(release, prefect_server):
    daug("status", "s4://bucket/store").one_error("unknown protocol 's4'")
    daug("ingest", release, "--store", "s4://bucket/store").one_error("unknown protocol 's4'")


def test_ingest_into_a_missing_bucket_is_one_line(release, s3_bucket, prefect_server):
    result = daug("ingest", release, "--store", "s3://daug-no-such-bucket/store", "--size", "32")
    result.one_error("no such bucket", "daug-no-such-bucket")


def test_an_unreachable_s3_endpoint_is_one_line_within_seconds(release, prefect_server):
    closed = f"http://127.0.0.1:{free_port()}"
    env = {"AWS_ENDPOINT_URL": closed, "FSSPEC_S3_ENDPOINT_URL": closed}
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    status = daug("status", "s3://bucket/store", env=env)
    status.one_error("endpoint unreachable", closed)
    ingest = daug("ingest", release, "--store", "s3://bucket/store", "--size", "32", env=env)
    ingest.one_error("endpoint unreachable", closed)
    assert status.seconds < 30 and ingest.seconds < 45, (status.seconds, ingest.seconds)


def test_a_full_disk_is_one_line_and_never_retried(release, tmp_path, prefect_server):
    calls = tmp_path / "calls"
    store = tmp_path / "store"
    result = daug(str(calls), "ingest", release, "--store", str(store), "--size", "32",
                  code=DISK_FULL)  # fmt: skip
    result.one_error("disk full", "No space left on device")
    assert calls.read_text().count("shard") == 1  # one shard, tried once: retries cannot help


def test_a_prefect_server_that_does_not_answer_is_one_line_naming_it(release, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    result = daug("ingest", release, "--store", str(tmp_path / "store"), "--size", "32",
                  env={"PREFECT_API_URL": url})  # fmt: skip
    result.one_error(url)
    assert result.seconds < 30 and not (tmp_path / "store").exists()


def test_the_terminal_drops_prefect_s_tracebacks_of_one_line_errors_and_their_echoes():
    from flows.cli.console import QuietRuns

    def record(name: str, level: int, message: str, exc: BaseException | None = None):
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(name, level, "/x.py", 1, message, None, info)

    quiet = QuietRuns()
    bug = record("prefect.flow_runs", logging.ERROR, "Encountered exception", KeyError("k"))
    assert quiet.filter(bug)  # a fault of the program keeps its traceback
    assert quiet.filter(record("prefect.flow_runs", logging.INFO, "Finished in state Failed('k')"))
    task_failed = record("prefect.task_runs", logging.ERROR, "Finished in state Failed('x')")
    assert not quiet.filter(task_failed)  # the task's failure record or the flow tells it

    full = OSError(errno.ENOSPC, "No space left on device", "/data/store")
    assert not quiet.filter(record("prefect.flow_runs", logging.ERROR, "Encountered", full))
    assert not quiet.filter(record("prefect.flow_runs", logging.INFO, "Finished in state Failed"))
    assert quiet.filter(record("flows.ingest", logging.INFO, "ingest finished"))
