"""Where a store, a release, checkpoints or a run's outputs live: a local path or a URL.

``Location.of("s3://bucket/stores/a")``, ``Location.of("gs://...")``, ``Location.of("file:///x")``
or ``Location.of("/data/x")``: one value naming a place, with the operations the project needs
on it, through fsspec (s3fs, gcsfs, the local file system, ``memory://`` in tests). A URL never
passes through :class:`pathlib.Path` (``Path("s3://b/k")`` is ``s3:/b/k``); a local path is
kept as a :class:`~pathlib.Path` where local-only code (zarr's ``LocalStore``, diffusers'
``from_pretrained``) needs one.

Writes are whole objects: on a local disk a temporary file renamed over the target (a reader
sees the old file or the new one); on an object store a single PUT, which is atomic per object.
There is no rename on object stores, and nothing here relies on one.

Credentials and endpoints come from each library's usual configuration (for S3: the
``AWS_*`` variables, ``AWS_ENDPOINT_URL`` / ``FSSPEC_S3_ENDPOINT_URL``, ``~/.aws``; for GCS:
``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server); nothing here reads or logs them.

A place that cannot be used at all is a :class:`~storage.errors.LocationError`: an unknown
protocol when the URL becomes a Location, a missing bucket or an unreachable endpoint when a
lookup would otherwise read as "nothing there"; :func:`location_error` names the same causes
(and a full disk) in the errors the libraries raise, for the command line and the retry policy.
"""

from __future__ import annotations

import copy
import errno
import os
import posixpath
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.errors import LocationError

LOCAL_PROTOCOLS = ("file", "local")
# Object stores whose path starts with a bucket; a missing one is named, not read as empty.
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs")
S3_PROTOCOLS = ("s3", "s3a")
# botocore's default ("legacy", 5 attempts, s3fs's own retries on top) spent 28 s on an
# endpoint that refuses connections and minutes on a server killed mid-ingest; "standard" with
# 3 attempts backs off over a few seconds. fsspec's configuration (FSSPEC_S3_CONFIG_KWARGS) and
# AWS_MAX_ATTEMPTS / AWS_RETRY_MODE win over it. (s3fs already sets 5 s connect, 15 s read.)
S3_RETRIES = {"max_attempts": 3, "mode": "standard"}
_buckets_found: set[str] = set()  # "protocol://bucket" seen to exist, once per process


class NotRegularFileError(OSError):
    """The path exists but is no regular file: a FIFO, a device, a socket or a folder."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is a {kind}, not a regular file")
        self.kind = kind


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def _require_regular(mode: int, path: str) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, _file_kind(mode))


def _split(url: str) -> tuple[str, str]:
    """(protocol, path inside its file system) of a URL or local path."""
    if "://" not in url:
        return "file", str(Path(url).expanduser().resolve())
    protocol, rest = url.split("://", 1)
    if protocol in LOCAL_PROTOCOLS:
        return "file", str(Path(rest).resolve())
    if protocol not in fsspec.available_protocols():
        raise LocationError(
            f"{url}: unknown protocol {protocol!r} (a local path, or a URL such as "
            "s3://bucket/key, gs://bucket/key, file:///path)"
        )
    return protocol, rest.rstrip("/")


def storage_options(protocol: str) -> dict[str, Any]:
    """Options for fsspec's file system of ``protocol``: bounded retries on S3 (the rest of
    the configuration is fsspec's and botocore's own)."""
    if protocol not in S3_PROTOCOLS:
        return {}
    configured: dict[str, Any] = {}
    for name in S3_PROTOCOLS:
        configured |= fsspec.config.conf.get(name, {}).get("config_kwargs", {})
    retries_set = "AWS_MAX_ATTEMPTS" in os.environ or "AWS_RETRY_MODE" in os.environ
    defaults = {} if retries_set else {"retries": S3_RETRIES}
    # A copy: botocore rewrites the retries dict it is given in place.
    return {"config_kwargs": copy.deepcopy(defaults | configured)}


@dataclass(frozen=True)
class Location:
    """A place: ``protocol`` (``file``, ``s3``, ``gs``, ``memory``, ...) and the ``path`` in its
    file system (``bucket/key`` for object stores, an absolute path for ``file``)."""

    protocol: str
    path: str
    _fs: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, where: str | os.PathLike[str] | Location) -> Location:
        if isinstance(where, Location):
            return where
        protocol, path = _split(os.fspath(where))
        return cls(protocol, path)

    # ---- naming -------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def url(self) -> str:
        """A local path for local places, ``protocol://path`` otherwise."""
        return self.path if self.is_local else f"{self.protocol}://{self.path}"

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last component (a store's folder name)."""
        return PurePosixPath(self.path).name

    def child(self, *parts: str) -> Location:
        """The place ``parts`` below this one (``/``-separated; ``..`` is refused)."""
        names = [p for part in parts for p in str(part).split("/") if p]
        if any(p == ".." for p in names):
            raise ValueError(f"{parts}: '..' may not leave {self.url}")
        return Location(self.protocol, posixpath.join(self.path, *names), self._fs)

    @property
    def parent(self) -> Location:
        return Location(self.protocol, posixpath.dirname(self.path), self._fs)

    def local_path(self) -> Path:
        """The local path; a URL has none (copy it to a local cache first)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not on the local file system")
        return Path(self.path)

    # ---- the file system ----------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec file system (one instance per protocol and process, cached by fsspec)."""
        if self._fs is not None:
            return self._fs
        if self.is_local:
            return LocalFileSystem()
        if self.protocol == "memory":
            return fsspec.filesystem("memory")
        # No listing cache: a lease and the tables list objects that other processes write.
        return fsspec.filesystem(
            self.protocol, use_listings_cache=False, **storage_options(self.protocol)
        )

    def exists(self) -> bool:
        return self._found(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return self._found(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return self._found(self.fs.isfile(self.path))

    def _found(self, answer: bool) -> bool:
        """``answer``, once a "no" is known to mean "nothing there": s3fs answers "no" for a
        missing bucket and for an endpoint it cannot reach, and a store would then be
        "not an image store". The bucket is looked up once per process."""
        if answer or self.protocol not in BUCKET_PROTOCOLS or self._fs is not None:
            return bool(answer)
        bucket = self.path.split("/", 1)[0]
        where = f"{self.protocol}://{bucket}"
        if not bucket or where in _buckets_found:
            return False
        try:
            self.fs.info(bucket)
        except FileNotFoundError:
            raise LocationError(f"no such bucket: {where}") from None
        except Exception as exc:  # PermissionError (no HeadBucket right) and the like: no verdict
            error = location_error(exc)
            if error is not None:
                raise error from None
            return False
        _buckets_found.add(where)
        return False

    def read_bytes(self) -> bytes:
        data: bytes = self.fs.cat_file(self.path)
        return data

    def open_regular(self) -> BinaryIO:
        """Open the file for reading only if it is a regular file (symbolic links followed):
        opening a FIFO waits for a writer forever and opening a device can act on it, so a
        local path is checked before it is opened (:class:`NotRegularFileError`). Object
        stores hold only objects."""
        if not self.is_local:
            handle: BinaryIO = self.fs.open(self.path, "rb")
            return handle
        _require_regular(os.stat(self.path).st_mode, self.path)
        # Should the file have become a FIFO since the stat, O_NONBLOCK makes open return at
        # once instead of waiting, and fstat refuses it; reading a regular file ignores it.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            _require_regular(os.fstat(fd).st_mode, self.path)
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def read_regular_bytes(self) -> bytes:
        """:meth:`read_bytes` of a regular file; anything else is refused unopened (see
        :meth:`open_regular`)."""
        with self.open_regular() as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Replace the object whole: a local temporary file renamed over it (fsync'ed first),
        or one PUT."""
        if self.is_local:
            _place_local(Path(self.path), data, os.replace)
            return
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def create_exclusive(self, data: bytes) -> bool:
        """Write ``data`` only if nothing is there yet; True when this call created it.
        Local: a hard link; S3 and GCS: the store's conditional create (If-None-Match: * /
        ifGenerationMatch=0). The object appears whole or not at all."""
        if self.is_local:
            # Written aside, then hard-linked into place: link() fails when the target exists
            # and never shows a half-written file (O_EXCL alone would).
            try:
                _place_local(Path(self.path), data, os.link)
            except FileExistsError:
                return False
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def delete(self) -> None:
        """Remove the object (or the folder, recursively); a missing one is not an error."""
        try:
            if self.fs.isdir(self.path):
                self.fs.rm(self.path, recursive=True)
            else:
                self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative, ``/``-separated) of the files below this place whose names start
        with ``prefix``, sorted; hidden files (``.name``) are left out."""
        if not self.exists():
            return []
        found = []
        for full in self.fs.find(self.path):
            relative = posixpath.relpath(full, self.path)
            if relative.startswith(prefix) and not PurePosixPath(relative).name.startswith("."):
                found.append(relative)
        return sorted(found)

    def makedirs(self) -> None:
        """Create the folder (local); object stores have no folders to make."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store rooted here: ``LocalStore`` on a local disk, ``FsspecStore`` on an
        object store (s3fs / gcsfs through fsspec's async interface)."""
        import zarr

        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=storage_options(self.protocol), read_only=read_only
        )

    def get_to(self, local: Path) -> Path:
        """Copy this file or folder to ``local`` (a node-local cache)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get(self.path, str(local), recursive=self.fs.isdir(self.path))
        return local


def _place_local(target: Path, data: bytes, place: Callable[[Path, Path], None]) -> None:
    """``data`` written to a temporary file beside ``target`` and fsync'ed, then put in place
    with ``place(tmp, target)`` (``os.replace``: atomic replace; ``os.link``: only if absent);
    the temporary file is always removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        place(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def location_error(exc: BaseException) -> LocationError | None:
    """The :class:`LocationError` that ``exc`` (or an error it was raised from) amounts to:
    a full disk, no such bucket, an endpoint that does not answer after the client's own
    retries; None for anything else. The libraries' classes are matched by name, so that
    neither botocore nor aiohttp need be installed."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _cause_of(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


# botocore's (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError under
# ConnectionError; ConnectionClosedError, ReadTimeoutError) and aiohttp's (gcsfs).
UNREACHABLE = frozenset(
    {"ConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ClientConnectorError"}
)


def _cause_of(exc: BaseException) -> LocationError | None:
    if isinstance(exc, LocationError):
        return exc
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocationError(f"disk full: {exc}")
    error = getattr(exc, "response", None)
    error = error.get("Error", {}) if isinstance(error, dict) else {}
    if error.get("Code") == "NoSuchBucket":
        return LocationError(f"no such bucket: {error.get('BucketName') or exc}")
    module = type(exc).__module__.split(".", 1)[0]
    names = {kind.__name__ for kind in type(exc).__mro__}
    if module in ("botocore", "aiobotocore", "aiohttp") and names & UNREACHABLE:
        return LocationError(f"endpoint unreachable: {_endpoint(exc)}")
    return None


def _endpoint(exc: BaseException) -> str:
    """``scheme://host:port`` of the endpoint botocore names (its URL carries the request's
    query), else the error's own text."""
    url = getattr(exc, "kwargs", {}).get("endpoint_url")
    if not isinstance(url, str):
        return str(exc)
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc} ({type(exc).__name__})"
