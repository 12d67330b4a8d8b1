"""The store's writer lease: one holder, a heartbeat, take-over after expiry, fencing; on a
local directory and on the loopback S3 server."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daug_core.settings import ConfigError
from storage.store.image import ImageStore
from storage.store.lease import (
    LEASE_FOLDER,
    LeaseLostError,
    LeaseRecord,
    LeaseUnsupportedError,
    StoreLease,
    StoreLockedError,
    check_holder,
    latest_record,
)
from storage.store.location import Location

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["local", "s3"])
def store_root(request, tmp_path) -> Location:
    """An empty store folder on a local disk, or under the loopback S3 server's bucket."""
    if request.param == "local":
        root = Location.of(tmp_path / "store")
        root.makedirs()
        return root
    bucket = request.getfixturevalue("s3_bucket")
    root = Location.of(f"{bucket}/lease-{request.node.name[-24:]}-{time.time_ns()}")
    root.child("zarr.json").write_text("{}")  # a store exists there
    return root


def records(root: Location) -> list[LeaseRecord]:
    folder = root.child(LEASE_FOLDER)
    parsed = [LeaseRecord.parse(folder.child(n).read_bytes()) for n in folder.list()]
    return [r for r in parsed if r is not None]


def test_the_lease_names_its_holder_and_is_released(store_root):
    with StoreLease(store_root, owner="ingest") as lease:
        current = latest_record(store_root.child(LEASE_FOLDER))
        assert current is not None and current.owner == "ingest" and current.pid == os.getpid()
        assert current.holder == lease.holder and current.live(time.time())
        lease.check()
    released = latest_record(store_root.child(LEASE_FOLDER))
    assert released is not None and released.released
    assert released.generation == current.generation + 1
    with StoreLease(store_root, owner="precompute:v1"):  # taken at once, no waiting
        pass


def test_a_second_writer_is_refused_with_who_holds_it(store_root):
    with StoreLease(store_root, owner="precompute:v1"), pytest.raises(StoreLockedError) as refused:
        StoreLease(store_root, owner="ingest").acquire()
    message = str(refused.value)
    assert "'precompute:v1'" in message and f"pid {os.getpid()}" in message
    assert "expires in" in message


def test_released_after_an_exception(store_root):
    with pytest.raises(RuntimeError), StoreLease(store_root, owner="ingest"):
        raise RuntimeError("boom")
    assert latest_record(store_root.child(LEASE_FOLDER)).released


def test_the_heartbeat_renews_and_keeps_two_records(tmp_path):
    root = Location.of(tmp_path)
    with StoreLease(root, owner="precompute:v1", ttl=0.4) as lease:
        first = lease.generation
        time.sleep(1.2)  # ttl/4 = 0.1 s between beats: several renewals
        lease.check()
        assert lease.generation > first + 3
        assert len(records(root)) <= 2  # older generations are cleaned up
        assert latest_record(root.child(LEASE_FOLDER)).expires > time.time()


def test_an_expired_lease_is_taken_over_and_its_holder_is_fenced(store_root, caplog):
    paused = StoreLease(store_root, owner="precompute:v1", ttl=0.5)
    paused.acquire()
    paused._stop.set()  # the heartbeat stops, as when the process is paused
    paused._thread.join()
    with pytest.raises(StoreLockedError):
        StoreLease(store_root, owner="reprocess").acquire()
    time.sleep(0.6)
    with StoreLease(store_root, owner="reprocess") as nightly:
        assert "taking over the lease of precompute:v1 (it expired)" in caplog.text
        nightly.check()
        with pytest.raises(LeaseLostError, match="no longer this run's"):
            paused.check()  # the fencing check its next commit makes
        with pytest.raises(LeaseLostError, match="taken over by 'reprocess'"):
            paused.renew()
        paused.release()  # leaves the new holder's lease alone
        nightly.check()


def test_a_dead_process_on_this_machine_loses_its_lease_at_once(tmp_path, caplog):
    root = Location.of(tmp_path)
    script = f"""
        from storage.store.lease import StoreLease
        StoreLease({str(tmp_path)!r}, owner="ingest", ttl=3600).acquire()
        import os; os._exit(0)  # dies holding it (no release)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, check=True)
    held = latest_record(root.child(LEASE_FOLDER))
    assert held is not None and not held.released and held.expires > time.time() + 3000
    with StoreLease(root, owner="ingest"):
        assert "(its process is gone)" in caplog.text


def test_a_live_lease_of_another_machine_is_respected_until_it_expires(tmp_path):
    root = Location.of(tmp_path)
    with StoreLease(root, owner="precompute:v1", ttl=0.5) as other:
        other._stop.set()
        folder = root.child(LEASE_FOLDER)
        current = latest_record(folder)
        moved = dataclasses.replace(current, generation=current.generation + 1, machine="x:y")
        folder.child(f"{moved.generation:012d}.json").write_bytes(moved.to_bytes())
        other._record = moved
        with pytest.raises(StoreLockedError):  # its pid cannot be checked from here
            StoreLease(root, owner="ingest").acquire()
        time.sleep(0.6)
        with StoreLease(root, owner="ingest"):
            pass


def test_processes_racing_for_the_lease_one_wins(store_root):
    script = f"""
        import sys, time
        from storage.store.lease import StoreLease, StoreLockedError
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
        try:
            StoreLease({store_root.url!r}, owner="racer", ttl=30).acquire()
            print("won", flush=True)
            time.sleep(3)
        except StoreLockedError:
            print("refused", flush=True)
    """
    start = str(time.time() + 4)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), start],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["refused", "refused", "refused", "won"]


def test_a_stopped_holder_loses_the_lease_and_its_commit_is_refused(tmp_path):
    """SIGSTOP past the expiry: another run takes over; after SIGCONT the holder's heartbeat
    finds the lease gone and its next commit is refused by the fencing check."""
    script = f"""
        import time
        from storage.store.lease import LeaseLostError, StoreLease
        lease = StoreLease({str(tmp_path)!r}, owner="precompute:v1", ttl=1.0)
        lease.acquire()
        print("held", flush=True)
        input()  # the test says when to commit
        try:
            lease.check()
            print("committed", flush=True)
        except LeaseLostError as exc:
            print("refused:", exc, flush=True)
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(StoreLockedError):
            StoreLease(tmp_path, owner="reprocess").acquire()
        time.sleep(1.3)
        # Same machine, and the process exists (stopped): only the expiry frees the lease.
        taker = StoreLease(tmp_path, owner="reprocess", ttl=30)
        taker.acquire()
        os.kill(holder.pid, signal.SIGCONT)
        out, _ = holder.communicate("\n", timeout=30)
        taker.check()
        taker.release()
    finally:
        holder.kill()
    assert out.startswith("refused:") and "reprocess" in out


def test_in_memory_stores_lease_nothing_and_missing_folders_are_refused(tmp_path):
    memory = ImageStore.in_memory(16)
    with StoreLease.for_store(memory, owner="ingest") as lease:
        lease.check()
        assert not lease.held
    with pytest.raises(StoreLockedError.__mro__[1], match="does not exist"):
        StoreLease(tmp_path / "nowhere", owner="ingest").acquire()


def test_a_backend_without_exclusive_create_is_refused():
    root = Location.of("memory://stores/a")
    root.child("zarr.json").write_text("{}")
    with pytest.raises(LeaseUnsupportedError, match="exclusive create"):
        StoreLease(root, owner="ingest").acquire()


def test_check_holder_reads_the_newest_record(tmp_path):
    with StoreLease(tmp_path, owner="precompute:v1") as lease:
        check_holder(tmp_path, lease.holder)
        with pytest.raises(LeaseLostError):
            check_holder(tmp_path, "somebody-else")
    with pytest.raises(LeaseLostError):
        check_holder(tmp_path, lease.holder)  # released
    folder = Location.of(tmp_path).child(LEASE_FOLDER)
    newest = folder.child(folder.list()[-1])
    assert json.loads(newest.read_bytes())["released"] is True


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "ten", "9.5"])
def test_a_lease_ttl_that_keeps_no_heartbeat_is_refused_naming_the_variable(
    tmp_path, monkeypatch, value
):
    monkeypatch.setenv("DAUG_LEASE_TTL", value)
    with pytest.raises(ConfigError, match=rf"DAUG_LEASE_TTL='{value}': .* >= 10"):
        StoreLease(tmp_path, owner="ingest", must_exist=False)
    assert not (tmp_path / "_lease").exists()


def test_a_valid_lease_ttl_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("DAUG_LEASE_TTL", "30")
    with StoreLease(tmp_path, owner="ingest", must_exist=False) as lease:
        assert lease.ttl == 30.0
        record = json.loads(next((tmp_path / "_lease").iterdir()).read_text())
    assert record["expires"] - record["renewed"] == pytest.approx(30.0)
