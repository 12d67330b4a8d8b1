"""Prefect retries a task only when another try can help: a full disk, an unknown protocol, a
missing bucket or an endpoint that does not answer fail at once; anything else is retried."""

from __future__ import annotations

import errno

import pytest
from prefect import flow, task

from flows.runtime.retry import worth_retrying
from storage.errors import LocationError


def tries(error: Exception) -> int:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=worth_retrying)
    def failing() -> None:
        calls.append(1)
        raise error

    @flow
    def run() -> None:
        failing()

    with pytest.raises(type(error)):
        run()
    return len(calls)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/data/store"),
        LocationError("s4://bucket/store: unknown protocol 's4'"),
    ],
    ids=["disk-full", "unknown-protocol"],
)
def test_what_retrying_cannot_fix_is_tried_once(error, prefect_server):
    assert tries(error) == 1


def test_other_failures_are_retried(prefect_server):
    assert tries(RuntimeError("a passing hiccup")) == 3
