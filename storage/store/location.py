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
"""

from __future__ import annotations

import os
import posixpath
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

LOCAL_PROTOCOLS = ("file", "local")


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
    return protocol, rest.rstrip("/")


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
        return fsspec.filesystem(self.protocol, use_listings_cache=False)

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

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
        if not self.fs.exists(self.path):
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
        return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

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
