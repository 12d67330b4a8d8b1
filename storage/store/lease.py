"""One writer run per store: a lease with a heartbeat and a fencing check, on a local disk or an
object store.

A run that writes a store (ingest, precompute, verify, reprocess, delete-heatmaps) holds its
lease; a second writer is refused while the lease is live. Readers (train, evaluate) need none:
they read only items whose ``done`` flag is set, and writers set it after the data.

**Layout.** ``STORE/_lease/<generation>.json``, one small JSON record per generation
(owner, holder id, host, pid, when acquired, renewed, and when it expires). The record with the
highest generation is the lease. Every change writes the *next* generation with an exclusive
create, the one primitive needed: a hard link on a local disk, ``If-None-Match: *``
on S3, ``ifGenerationMatch=0`` on GCS (fsspec's ``pipe_file(mode="create")``). Of two
processes that race for the same generation exactly one succeeds, so acquire, renew, take-over
and release are all the same step and need no rename, no compare-and-swap and no clock sync
beyond the expiry's margin. A store whose backend ignores the condition (some S3-compatible
servers) is detected by a probe and refused with a clear error; nothing pretends.

**Heartbeat and expiry.** The holder renews every ``ttl / 4`` (default ttl 120 s) from a
background thread, so a run of weeks keeps its store and the nightly ``reprocess`` is refused.
A holder that stops renewing (killed, its node lost, paused) loses the lease ``ttl`` seconds
after its last renewal; the next writer takes it over. On the same machine and process
namespace a holder whose process is gone is taken over at once (its pid and the process's
start time are recorded, so a reused pid does not count as alive).

**Fencing.** :meth:`StoreLease.check` (and :func:`check_holder` for workers on other nodes)
raises :class:`LeaseLostError` unless the newest record is still this holder's and unexpired.
Writers call it before each commit (a batch's ``done`` flags), so a paused holder that wakes
after a take-over cannot commit. (The check and the write are two operations: a holder paused
exactly between them is the one case no lease on a plain store can exclude.)

In-memory stores have no location and only this process sees them: their lease does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from daug_core.settings import ConfigError
from storage.errors import StoreFormatError
from storage.store.location import Location

log = logging.getLogger(__name__)

LEASE_FOLDER = "_lease"
DEFAULT_TTL = 120.0
TTL_ENV = "DAUG_LEASE_TTL"
# A heartbeat renews every ttl / 4: below 10 s a slow object store's round trip (or a GC
# pause) would let a live writer's lease expire under it.
MIN_ENV_TTL = 10.0
# Backends whose exclusive create is known: the local disk, S3 (s3fs), GCS (gcsfs).
EXCLUSIVE_PROTOCOLS = ("file", "s3", "s3a", "gs", "gcs")


class StoreLockedError(StoreFormatError):
    """Another run holds the store's lease."""


class LeaseLostError(StoreFormatError):
    """This run's lease was taken over (it stopped renewing in time): it must not commit."""


class LeaseUnsupportedError(StoreFormatError):
    """The store's backend cannot create an object exclusively, so no lease can be held."""


def env_ttl() -> float:
    """The lease's time to live: ``DAUG_LEASE_TTL`` seconds (default 120), a finite number of
    at least :data:`MIN_ENV_TTL`; anything else is a
    :class:`~daug_core.settings.ConfigError` naming the variable and its value."""
    text = os.environ.get(TTL_ENV)
    if text is None:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        ttl = math.nan
    if not (math.isfinite(ttl) and ttl >= MIN_ENV_TTL):
        raise ConfigError(
            f"{TTL_ENV}={text!r}: the store lease's time to live must be a number of seconds "
            f">= {MIN_ENV_TTL:g} (default {DEFAULT_TTL:g})"
        )
    return ttl


def _machine() -> str:
    """This kernel and process namespace: a pid means the same process only within one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"{socket.gethostname()}:unknown"
    return f"{boot}:{namespace}"


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """One generation of a store's lease."""

    generation: int
    holder: str  # a random id per acquisition: the fencing identity
    owner: str  # what holds it, e.g. "precompute:v1"
    host: str
    pid: int
    process_start: str
    machine: str
    acquired: float  # UNIX seconds
    renewed: float
    expires: float
    released: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord | None:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None

    def live(self, now: float) -> bool:
        return not self.released and self.expires > now and not self.process_gone()

    def process_gone(self) -> bool:
        """True only when the holder ran on this machine and its process is gone."""
        if self.machine != _machine():
            return False
        return _process_start(self.pid) != self.process_start

    def describe(self) -> str:
        left = self.expires - time.time()
        return (
            f"{self.owner!r} (host {self.host}, pid {self.pid}, since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.acquired))}, "
            f"expires in {left:.0f} s unless renewed)"
        )


def _record_name(generation: int) -> str:
    return f"{generation:012d}.json"


def _records(folder: Location) -> list[int]:
    generations = []
    for name in folder.list():
        stem = name.removesuffix(".json")
        if "/" not in name and name.endswith(".json") and stem.isdigit():
            generations.append(int(stem))
    return sorted(generations)


def latest_record(folder: Location) -> LeaseRecord | None:
    """The newest readable record of the lease in ``folder`` (None: never held)."""
    for generation in reversed(_records(folder)):
        try:
            record = LeaseRecord.parse(folder.child(_record_name(generation)).read_bytes())
        except FileNotFoundError:
            continue  # cleaned up meanwhile
        if record is not None:
            return record
    return None


def check_holder(store_root: Location | str, holder: str) -> None:
    """Raise :class:`LeaseLostError` unless ``holder`` still holds the store's lease (the
    fencing check a worker makes before it commits)."""
    folder = Location.of(store_root).child(LEASE_FOLDER)
    record = latest_record(folder)
    if record is None or record.holder != holder or record.released:
        who = record.describe() if record is not None else "nobody"
        raise LeaseLostError(f"{store_root}: the lease is no longer this run's (now: {who})")
    if record.expires <= time.time():
        raise LeaseLostError(f"{store_root}: this run's lease expired; it stopped renewing")


_probed: dict[str, bool] = {}


def _exclusive_works(folder: Location) -> bool:
    """Whether the backend refuses a second exclusive create of one object (probed once per
    bucket and process)."""
    key = f"{folder.protocol}://{folder.path.split('/', 1)[0]}"
    if folder.is_local:
        return True
    if key not in _probed:
        probe = folder.child(f".probe-{uuid.uuid4().hex}")
        try:
            first = probe.create_exclusive(b"1")
            second = probe.create_exclusive(b"2")
        finally:
            probe.delete()
        _probed[key] = first and not second
    return _probed[key]


class StoreLease:
    """``with StoreLease(store_root, owner="ingest"):`` — hold the store's writer lease.

    ``store_root`` None (an in-memory store) holds nothing. Raises :class:`StoreLockedError`
    while another run's lease is live.
    """

    def __init__(
        self,
        store_root: Location | str | os.PathLike[str] | None,
        owner: str,
        ttl: float = 0.0,
        must_exist: bool = True,
    ) -> None:
        self.root = None if store_root is None else Location.of(store_root)
        self.must_exist = must_exist  # False for the run that creates the store (ingest)
        self.folder = None if self.root is None else self.root.child(LEASE_FOLDER)
        self.owner = owner
        self.ttl = ttl or env_ttl()
        if not (math.isfinite(self.ttl) and self.ttl > 0):
            raise ValueError(f"a lease ttl must be a positive number of seconds, got {self.ttl}")
        self.holder = uuid.uuid4().hex
        self._record: LeaseRecord | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    @classmethod
    def for_store(cls, store: object, owner: str, ttl: float = 0.0) -> StoreLease:
        """The lease of an :class:`~storage.store.image.ImageStore` (none for one in memory)."""
        return cls(getattr(store, "root", None), owner, ttl)

    @property
    def held(self) -> bool:
        return self._record is not None

    @property
    def generation(self) -> int | None:
        return None if self._record is None else self._record.generation

    def __enter__(self) -> StoreLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    # ---- acquire / renew / release ----------------------------------------------------------
    def acquire(self) -> None:
        if self.folder is None or self._record is not None:
            return
        assert self.root is not None
        if self.must_exist and not self.root.exists():
            raise StoreFormatError(f"{self.root} does not exist: no store to lease")
        if self.root.protocol not in EXCLUSIVE_PROTOCOLS or not _exclusive_works(self.folder):
            raise LeaseUnsupportedError(
                f"{self.root}: this storage backend does not refuse a second exclusive create "
                "(If-None-Match / ifGenerationMatch), so two runs could not be kept apart. Use "
                "a local disk, AWS S3 or GCS for the store, or a server that honours them."
            )
        for _ in range(8):
            current = latest_record(self.folder)
            now = time.time()
            if current is not None and current.live(now):
                raise StoreLockedError(
                    f"{self.root} is leased by {current.describe()}. Wait for it to finish; a "
                    f"run that died loses its lease {self.ttl:.0f} s after its last renewal."
                )
            if current is not None and not current.released:
                why = "its process is gone" if current.process_gone() else "it expired"
                log.warning("%s: taking over the lease of %s (%s)", self.root, current.owner, why)
            generation = 1 if current is None else current.generation + 1
            record = self._new_record(generation, now)
            if self.folder.child(_record_name(generation)).create_exclusive(record.to_bytes()):
                self._record = record
                self._forget_before(generation)
                self._start_heartbeat()
                log.debug("%s: leased by %s (generation %d)", self.root, self.owner, generation)
                return
        raise StoreLockedError(f"{self.root}: the lease keeps changing hands; try again later")

    def renew(self) -> None:
        """Write the next generation (still ours, a new expiry); a take-over since the last
        renewal makes this raise :class:`LeaseLostError`."""
        with self._mutex:
            if self._record is None or self.folder is None:
                return
            if self._lost is not None:
                raise LeaseLostError(self._lost)
            now = time.time()
            previous = self._record
            changes = {
                "generation": previous.generation + 1,
                "renewed": now,
                "expires": now + self.ttl,
            }
            record = LeaseRecord(**(asdict(previous) | changes))
            if not self.folder.child(_record_name(record.generation)).create_exclusive(
                record.to_bytes()
            ):
                current = latest_record(self.folder)
                self._lost = (
                    f"{self.root}: the lease was taken over by "
                    f"{current.describe() if current else 'another run'}"
                )
                raise LeaseLostError(self._lost)
            if previous.expires <= now:
                # We were past expiry and nobody took over: ours again, but say so.
                log.warning(
                    "%s: the lease was renewed %.0f s late", self.root, now - previous.expires
                )
            self._record = record
            self._forget_before(record.generation)

    def check(self) -> None:
        """The fencing check before a commit: raise :class:`LeaseLostError` unless the lease
        is still this run's."""
        if self.folder is None or self.root is None:
            return
        if self._lost is not None:
            raise LeaseLostError(self._lost)
        check_holder(self.root, self.holder)

    def release(self) -> None:
        """Mark the lease released (the next writer takes it without waiting), unless it is no
        longer ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._mutex:
            if self.folder is None or self._record is None:
                return
            record, self._record = self._record, None
            if self._lost is not None:
                log.warning("%s: the lease was lost before release; leaving it", self.root)
                return
            released = LeaseRecord(
                **(asdict(record) | {"generation": record.generation + 1, "released": True})
            )
            if not self.folder.child(_record_name(released.generation)).create_exclusive(
                released.to_bytes()
            ):
                log.warning("%s: the lease is no longer ours at release; leaving it", self.root)
                return
            self._forget_before(released.generation)

    # ---- internals ------------------------------------------------------------------------
    def _new_record(self, generation: int, now: float) -> LeaseRecord:
        pid = os.getpid()
        return LeaseRecord(
            generation=generation,
            holder=self.holder,
            owner=self.owner,
            host=socket.gethostname(),
            pid=pid,
            process_start=_process_start(pid),
            machine=_machine(),
            acquired=now,
            renewed=now,
            expires=now + self.ttl,
        )

    def _forget_before(self, generation: int) -> None:
        """Delete records older than the previous one (the newest two stay readable)."""
        assert self.folder is not None
        for old in _records(self.folder):
            if old < generation - 1:
                try:
                    self.folder.child(_record_name(old)).delete()
                except OSError as exc:  # another process cleaned it; nothing depends on it
                    log.debug("lease record %d: %s", old, exc)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lease-{self.owner}", daemon=True
        )
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                return
            except OSError as exc:  # a storage hiccup: the next beat tries again
                log.warning("%s: lease renewal failed (%s); retrying", self.root, exc)
