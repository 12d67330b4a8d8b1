"""StoreLock: one writer run per store; dead runs' locks are taken over, live ones refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.errors import StoreFormatError
from storage.image_store import ImageStore
from storage.locks import LOCK_NAME, StoreLock, StoreLockedError, pid_alive


def write_lock(directory: Path, **fields: object) -> Path:
    holder = {
        "owner": "ingest",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": "t",
    } | fields
    path = directory / LOCK_NAME
    path.write_text(json.dumps(holder))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the pid no longer names a process (not even a zombie)
    return process.pid


def test_lock_file_holds_the_owner_and_goes_away(tmp_path):
    with StoreLock(tmp_path, owner="precompute:v1") as lock:
        assert lock.held
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["owner"] == "precompute:v1" and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        assert datetime.fromisoformat(holder["started"]).tzinfo is not None
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_acquisition_is_refused_with_who_holds_it(tmp_path):
    with StoreLock(tmp_path, owner="ingest"):
        with pytest.raises(StoreLockedError) as refused, StoreLock(tmp_path, owner="verify"):
            pass
        message = str(refused.value)
        assert "'ingest'" in message and socket.gethostname() in message
        assert f"pid {os.getpid()}" in message and "since " in message
        assert str(tmp_path / LOCK_NAME) in message and "remove" in message
        assert (tmp_path / LOCK_NAME).exists()  # the refused attempt left the lock alone
    assert isinstance(refused.value, StoreFormatError)  # the CLI's exit-2 path


def test_released_after_an_exception(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), StoreLock(tmp_path, owner="ingest"):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with StoreLock(tmp_path, owner="ingest"):
        pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    assert not pid_alive(pid)
    write_lock(tmp_path, pid=pid, token="old")
    with StoreLock(tmp_path, owner="verify"):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["owner"] == "verify"
    assert "stale lock" in caplog.text and f"pid {pid} is not running" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == []  # the stale file was not left aside


def test_lock_from_another_host_is_respected_until_stale_after(tmp_path):
    write_lock(tmp_path, host="other-node", pid=1)
    with pytest.raises(StoreLockedError, match="other-node"), StoreLock(tmp_path, "ingest"):
        pass
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="seconds")
    write_lock(tmp_path, host="other-node", pid=1, started=old)
    with pytest.raises(StoreLockedError), StoreLock(tmp_path, "ingest"):
        pass  # default stale_after is 24 h
    with StoreLock(tmp_path, "ingest", stale_after=3600) as lock:
        assert lock.held


def test_unreadable_lock_is_respected_for_a_minute_then_taken_over(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # a crash between creating the file and writing it
    with pytest.raises(StoreLockedError, match="unreadable"), StoreLock(tmp_path, "ingest"):
        pass
    an_hour_ago = datetime.now(UTC).timestamp() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    with StoreLock(tmp_path, "ingest") as lock:
        assert lock.held


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = StoreLock(tmp_path, owner="ingest")
    lock.acquire()
    write_lock(tmp_path, owner="someone-else", token="theirs")  # removed by hand, re-taken
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["owner"] == "someone-else"


def test_take_over_puts_back_a_lock_replaced_since_it_was_judged(tmp_path):
    # Two processes judged the same dead lock; the first replaced it with its live one. The
    # second must not remove that live lock when it renames "the stale file" aside.
    dead = write_lock(tmp_path, pid=dead_pid(), token="dead")
    judged_inode = dead.stat().st_ino
    dead.rename(tmp_path / "elsewhere")  # keeps the inode in use, so it cannot be reused
    live = write_lock(tmp_path, owner="precompute:v1", token="live").read_text()
    StoreLock(tmp_path, owner="verify")._take_over(judged_inode)
    assert (tmp_path / LOCK_NAME).read_text() == live
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "elsewhere"]


def test_memory_stores_lock_nothing_and_directories_must_exist(tmp_path):
    with StoreLock.for_store(ImageStore.in_memory(16), owner="verify") as lock:
        assert lock.path is None
    store = ImageStore.create(tmp_path / "s", 16)
    with StoreLock.for_store(store, owner="verify") as lock:
        assert lock.path == tmp_path / "s" / LOCK_NAME and lock.path.exists()
    with (
        pytest.raises(StoreFormatError, match="not a directory"),
        StoreLock(tmp_path / "missing", owner="precompute:v1"),
    ):
        pass


def test_creating_a_store_keeps_the_lock_file(tmp_path):
    # ImageStore.create must not empty the folder the lock lives in.
    (tmp_path / "s").mkdir()
    with StoreLock(tmp_path / "s", owner="ingest"):
        ImageStore.create(tmp_path / "s", 16)
        assert (tmp_path / "s" / LOCK_NAME).exists()
