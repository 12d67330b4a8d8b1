"""One writer run per store: ``STORE/.daug.lock``, taken by ingest, precompute and verify.

Shard ownership (storage/image_store.py) keeps the tasks *of one run* from sharing a chunk;
nothing kept two runs apart. Two ingests registering new items, or a verify clearing flags
while a precompute sets them, would each rewrite tables and ``done`` chunks the other just
wrote. The lock makes the second run refuse instead. Readers (train, evaluate) do not lock:
they read only items whose ``done`` flag is set, and writers set it after the data.

The lock file is created with ``O_CREAT | O_EXCL`` (atomic on a local file system and on
NFSv3+) and holds JSON ``{owner, host, pid, started, token}``. It is removed when the run
ends, also on an exception. A lock left by a run that died (SIGKILL, power loss) is *stale*:

- same host, and its pid is no longer running: stale at once (a warning is logged);
- another host: its pid cannot be checked from here, so it is stale only ``stale_after``
  seconds (default 24 h) after it was taken; before that, stop the run on that host or
  remove the file by hand;
- unreadable (a crash between creating the file and writing it): stale after
  ``UNREADABLE_GRACE`` seconds.

A stale lock is taken over by renaming it aside (only one of several racing processes can
rename the same file) and then creating a fresh one with ``O_EXCL``; the renamed file is
checked to be the stale lock that was judged (same inode), and put back otherwise.

In-memory stores have no folder and only this process sees them: their lock is a no-op
(``StoreLock(None, ...)`` or :meth:`StoreLock.for_store`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from storage.errors import StoreFormatError
from storage.image_store import ImageStore

log = logging.getLogger(__name__)

LOCK_NAME = ".daug.lock"
DEFAULT_STALE_AFTER = 24 * 3600.0
UNREADABLE_GRACE = 60.0


class StoreLockedError(StoreFormatError):
    """Another run holds the store's lock."""


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the run that holds it."""

    owner: str
    host: str
    pid: int
    started: str  # UTC ISO 8601
    token: str

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """The holder in a lock file's text, or None when it is not a complete lock."""
        try:
            data = json.loads(text)
            return cls(
                owner=str(data["owner"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                started=str(data["started"]),
                token=str(data["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def age_seconds(self, now: datetime) -> float:
        try:
            started = datetime.fromisoformat(self.started)
        except ValueError:
            return float("inf")
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        return (now - started).total_seconds()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, exited but not reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:  # Linux: field 3 of /proc/<pid>/stat is the state; Z = zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class StoreLock:
    """``with StoreLock(STORE, owner="ingest"):`` — the store's single-writer lock.

    ``directory`` None means a store without a folder (in memory): the lock does nothing.
    Raises :class:`StoreLockedError` when a live run holds the lock (see the module
    docstring for when a lock counts as stale and is taken over).
    """

    def __init__(
        self,
        directory: Path | str | None,
        owner: str,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.path = None if directory is None else Path(directory) / LOCK_NAME
        self.owner = owner
        self.stale_after = stale_after
        self._holder: LockHolder | None = None

    @classmethod
    def for_store(
        cls, store: ImageStore, owner: str, stale_after: float = DEFAULT_STALE_AFTER
    ) -> StoreLock:
        return cls(store.directory, owner, stale_after)

    @property
    def held(self) -> bool:
        return self._holder is not None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    # ---- acquire / release ----------------------------------------------------------------
    def acquire(self) -> None:
        if self.path is None or self._holder is not None:
            return
        if not self.path.parent.is_dir():
            raise StoreFormatError(f"{self.path.parent} is not a directory: no store to lock")
        holder = LockHolder(
            owner=self.owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            token=uuid.uuid4().hex,
        )
        # A few rounds: each failed round means another process changed the file meanwhile.
        for _ in range(5):
            if self._create(holder):
                self._holder = holder
                log.debug("%s: locked by %s", self.path, self.owner)
                return
            found = self._read()
            if found is None:
                continue  # released between our create and our read: try again
            text, inode = found
            current = LockHolder.parse(text)
            reason = self._stale_reason(current)
            if reason is None:
                raise StoreLockedError(self._locked_message(current))
            log.warning("%s: taking over a stale lock (%s): %s", self.path, reason, text.strip())
            self._take_over(inode)
        raise StoreLockedError(f"{self.path}: the lock keeps changing hands; try again later")

    def release(self) -> None:
        """Remove the lock file if it is still ours (a hand-removed and re-taken lock is
        somebody else's now and is left alone)."""
        if self.path is None or self._holder is None:
            return
        holder, self._holder = self._holder, None
        found = self._read()
        current = LockHolder.parse(found[0]) if found is not None else None
        if current is None or current.token != holder.token:
            log.warning("%s: the lock is no longer ours at release; leaving it", self.path)
            return
        self.path.unlink(missing_ok=True)

    # ---- internals --------------------------------------------------------------------------
    def _create(self, holder: LockHolder) -> bool:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(dataclasses.asdict(holder), indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _read(self) -> tuple[str, int] | None:
        """The lock file's text and inode (from one open file, so they belong together)."""
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read(), os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return None

    def _stale_reason(self, current: LockHolder | None) -> str | None:
        """Why the lock in the file is stale, or None when it must be respected."""
        assert self.path is not None
        now = datetime.now(UTC)
        if current is None:
            try:
                age = now.timestamp() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "gone"
            return f"unreadable for {age:.0f} s" if age > UNREADABLE_GRACE else None
        if current.host == socket.gethostname():
            return None if pid_alive(current.pid) else f"pid {current.pid} is not running"
        age = current.age_seconds(now)
        if age > self.stale_after:
            return f"taken on {current.host} {age / 3600:.1f} h ago (> {self.stale_after:.0f} s)"
        return None

    def _take_over(self, judged_inode: int) -> None:
        """Move the stale lock (the file with inode ``judged_inode``) aside, unless another
        process replaced it since it was judged: then the moved file is put back."""
        assert self.path is not None
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it: the next round sees what is there now
        try:
            if aside.stat().st_ino != judged_inode:  # we moved a fresh, live lock
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    log.warning("%s: could not restore a lock moved by mistake", self.path)
        finally:
            aside.unlink(missing_ok=True)

    def _locked_message(self, current: LockHolder | None) -> str:
        if current is None:
            who = "an unfinished lock (unreadable; it counts as stale after a minute)"
        else:
            who = (
                f"{current.owner!r} (host {current.host}, pid {current.pid}, "
                f"since {current.started})"
            )
        return (
            f"{self.path.parent if self.path else '?'} is locked by {who}. Wait for it to "
            f"finish, or if that run is gone remove {self.path}"
        )
