"""Session-wide test settings: offline, quiet, one Prefect test server for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.loopback import S3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
# Heartbeats cost ~1 s per flow run; tests do not need them.
os.environ.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)


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
