"""A place that cannot be used is a :class:`~storage.errors.LocationError` naming the cause: an
unknown protocol, a missing bucket, an endpoint that does not answer (within seconds, not
minutes of retries), a full disk."""

from __future__ import annotations

import errno
import time

import fsspec
import pytest

from storage.errors import LocationError
from storage.store.location import Location, location_error, storage_options
from tests.loopback import free_port


def test_an_unknown_protocol_is_refused_where_the_url_becomes_a_location():
    with pytest.raises(LocationError, match="unknown protocol 's4'"):
        Location.of("s4://bucket/store")
    assert Location.of("memory://x").protocol == "memory"
    assert Location.of("s3://bucket/store").protocol == "s3"


def test_a_missing_bucket_is_named_not_read_as_an_empty_place(s3_bucket):
    with pytest.raises(LocationError, match="no such bucket: s3://daug-no-such-bucket"):
        Location.of("s3://daug-no-such-bucket/store").child("zarr.json").is_file()
    assert not Location.of(f"{s3_bucket}/nothing-here").exists()  # the bucket exists: False

    with pytest.raises(FileNotFoundError) as raised:  # a write, as s3fs reports it
        Location.of("s3://daug-no-such-bucket/store/x").write_bytes(b"1")
    error = location_error(raised.value)
    assert error is not None and "no such bucket: daug-no-such-bucket" in str(error)


@pytest.fixture
def closed_endpoint(monkeypatch) -> str:
    """S3 clients pointed at a loopback port nobody listens on (a new file-system instance:
    fsspec's configuration is part of its cache key)."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setitem(
        fsspec.config.conf, "s3", {"endpoint_url": url, "key": "testing", "secret": "testing"}
    )
    return url


def test_an_unreachable_endpoint_is_one_error_within_seconds(closed_endpoint):
    started = time.monotonic()
    with pytest.raises(LocationError, match="endpoint unreachable") as raised:
        Location.of("s3://bucket/store").child("zarr.json").is_file()
    assert closed_endpoint in str(raised.value)

    with pytest.raises(Exception) as write:
        Location.of("s3://bucket/store/x").write_bytes(b"1")
    error = location_error(write.value)
    assert error is not None and "endpoint unreachable" in str(error)
    assert time.monotonic() - started < 15  # botocore's legacy 5 attempts took 28 s in the CLI


def test_s3_retries_are_bounded_unless_configured(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    bounded = {"config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}}}
    assert storage_options("s3") == bounded
    assert storage_options("gs") == {} and storage_options("file") == {}

    mine = {"retries": {"max_attempts": 9}, "read_timeout": 40}
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": mine})
    assert storage_options("s3") == {"config_kwargs": mine}  # fsspec's configuration wins
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # and so does botocore's
    assert storage_options("s3") == {"config_kwargs": {}}


def test_a_full_disk_is_a_location_error(tmp_path, monkeypatch):
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("storage.store.location.os.fsync", no_space)
    with pytest.raises(OSError) as raised:
        Location.of(tmp_path / "table.csv").write_text("a,b\n")
    error = location_error(raised.value)
    assert error is not None and str(error).startswith("disk full")
    assert not list(tmp_path.iterdir())  # the temporary file is removed

    assert location_error(FileNotFoundError("x")) is None
    assert location_error(RuntimeError("boom")) is None
    wrapped = RuntimeError("shard 3 failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/data/store")
    assert "disk full" in str(location_error(wrapped))
