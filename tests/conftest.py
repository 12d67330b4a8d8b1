"""Session-wide test settings: offline, quiet, one Prefect test server for the session, and
how `make test` splits the run over two pytest-xdist workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loopback import S3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
# Heartbeats cost ~1 s per flow run; tests do not need them.
os.environ.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one OpenMP thread each, and in everything they start (CLI
    # subprocesses, DDP ranks); oversubscribed OpenMP threads spin (up to 40x slower).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Modules that start, join or stop Ray. Ray on one host is one cluster (`ray.init()` joins a
# running `ray start`, `ray stop --force` stops every node), so `make test`'s two xdist workers
# must never run two of them at once: they are one scheduling unit (below).
RAY_MODULES = frozenset(
    {
        "test_cluster",
        "test_local_ray",
        "test_data_parallel_flows",
        "test_distill_flow",
        "test_heatmap_quality_flow",
        "test_object_storage",
        "test_operations_server",
        "test_precompute_flow",
        "test_precompute_kill",
        "test_reprocess_flow",
        "test_study_flow",
        "test_student_flow",
    }
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope(nodeid: str) -> str:
    """The scheduling unit of a test: its module (module fixtures are built once), or "ray"."""
    module = _module(nodeid)
    return "ray" if Path(module).stem in RAY_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Ray unit, the longest, first in the queue; a module that uses the session's Ray
    without being listed in RAY_MODULES is an error, not a race."""
    unlisted = sorted(
        {
            _module(item.nodeid)
            for item in items
            if "ray_session" in getattr(item, "fixturenames", ()) and _scope(item.nodeid) != "ray"
        }
    )
    if unlisted:
        raise pytest.UsageError(f"{unlisted} use ray_session: add them to RAY_MODULES")
    items.sort(key=lambda item: _scope(item.nodeid) != "ray")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's per-file scheduling, with every Ray module in one unit. (``--dist loadgroup``
    would do this with markers, but pytest 9.2 no longer lets xdist 3.8 rename node ids, the
    way loadgroup tags them.)"""
    from xdist.scheduler import LoadFileScheduling

    class RayTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return RayTogether(config, log)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One ephemeral Prefect server for every flow test (starting one costs 6-8 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def synthetic_pair(tmp_path_factory):
    """The same synthetic cohort written twice: DICOM with .csv, JPG with .csv.gz."""
    from storage.synthetic import SynthConfig, write_synthetic_release

    root = tmp_path_factory.mktemp("synthetic_pair")
    dicom = write_synthetic_release(root / "dicom", SynthConfig(studies=24, size=64), seed=3)
    jpg = write_synthetic_release(
        root / "jpg", SynthConfig(studies=24, size=64, image_format="jpg", gzip_csv=True), seed=3
    )
    return dicom.release_dir, jpg.release_dir


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 (moto's server mode, the one s3fs and zarr test
    against), in its own process for the session. Clients find it the standard way:
    AWS_ENDPOINT_URL (botocore), FSSPEC_S3_ENDPOINT_URL (fsspec) and dummy credentials, set
    here for this process and everything it starts (Ray workers, CLI subprocesses)."""
    server = S3Server().start()
    os.environ.update(server.environment())
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    """``s3://daug-test`` on the loopback server."""
    import fsspec

    fsspec.filesystem("s3").mkdir("daug-test")
    return "s3://daug-test"


@pytest.fixture(scope="session")
def ray_session(s3_server) -> Iterator[None]:
    """One local Ray for the session (starting one costs 3-5 s and ~800 MB), started after
    the S3 server so that its workers inherit the endpoint.

    The proxy variables stop Ray probing a cloud metadata address at start-up; no_proxy
    (above) keeps the Prefect test server reachable.
    """
    import ray

    os.environ.setdefault("http_proxy", "http://127.0.0.1:9")
    os.environ.setdefault("HTTP_PROXY", "http://127.0.0.1:9")
    os.environ.setdefault("NO_PROXY", os.environ["no_proxy"])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    yield
    if started:
        ray.shutdown()
