"""Report files written atomically (a reader sees the old file or the new one, never a part)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from daug_core import strict_json
from storage.store.location import Location
from storage.store.tables import replace_atomically

# How long a presigned link to a run's file on object storage stays valid (7 days: the
# longest S3 allows for SigV4).
LINK_SECONDS = 7 * 24 * 3600
# Staging folders of run folders on object storage -> where their files are uploaded.
_STAGED: dict[Path, Location] = {}


def save_figure(figure: Figure, path: Path, dpi: int = 90) -> Path:
    """``figure`` as a PNG at ``path`` (atomically); the figure is closed."""
    try:
        replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(figure)
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    """``data`` as indented strict JSON (an undefined number is ``null``, numpy numbers are
    numbers), other unknown values as strings."""
    return write_text(strict_json.dumps(data, indent=2, default=str) + "\n", path)


def write_text(text: str, path: Path) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class RunFolder:
    """A run's output folder at a path or URL. Files are written into :attr:`local` (the folder
    itself on a local disk; a staging folder for an object store) and, for a URL, uploaded by
    :meth:`sync` (each file one whole object). :meth:`pull` first copies down what a URL
    already holds (resuming a training run)."""

    def __init__(self, where: str | os.PathLike[str] | Location) -> None:
        self.location = Location.of(where)
        if self.location.is_local:
            self.local = self.location.local_path()
        else:
            self.local = Path(tempfile.mkdtemp(prefix="daug-run-"))
            _STAGED[self.local.resolve()] = self.location
        self.local.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.location.url

    def __truediv__(self, name: str) -> Path:
        return self.local / name

    def url_of(self, path: Path) -> str:
        """Where a file written into :attr:`local` ends up."""
        return self.location.child(path.relative_to(self.local).as_posix()).url

    def pull(self) -> None:
        if not self.location.is_local and self.location.exists():
            self.location.fs.get(self.location.path + "/", str(self.local) + "/", recursive=True)

    def sync(self) -> None:
        if self.location.is_local:
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            if path.name.startswith("."):
                continue
            target = self.location.child(path.relative_to(self.local).as_posix())
            target.write_bytes(path.read_bytes())


def file_link(path: Path) -> str:
    """Where a person can open a run's file: its local path; for a file staged for an object
    store, an HTTPS link presigned for :data:`LINK_SECONDS` (s3fs and gcsfs sign), else its
    URL."""
    path = path.resolve()
    for staging, location in _STAGED.items():
        if path.is_relative_to(staging):
            target = location.child(path.relative_to(staging).as_posix())
            try:
                return str(target.fs.sign(target.path, expiration=LINK_SECONDS))
            except NotImplementedError:
                return target.url
    return str(path)
