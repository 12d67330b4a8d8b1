"""Small CSV tables kept beside a Zarr store, with atomic replacement.

A table is written whole to a temporary file and renamed over the old one, so a reader or
a crash sees either the old table or the new one, never half of either.
"""

from __future__ import annotations

import io
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from storage.store.location import Location


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` beside ``path``, then rename it over ``path``: a reader sees the old
    file or the new one, never a part; a failed write leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_csv_typed(source: str | Path | io.StringIO, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Read a CSV keeping empty strings as "" in text columns and as NaN in float columns."""
    text_columns = [c for c, t in dtypes.items() if t == "str"]
    float_columns = [c for c, t in dtypes.items() if t == "float"]
    return pd.read_csv(
        source,
        dtype={c: str for c in text_columns} | {c: "float64" for c in float_columns},
        keep_default_na=False,
        na_values={c: ["", "nan", "NaN"] for c in float_columns},
    )


class TableBackend(ABC):
    """Where a store keeps its named tables."""

    @abstractmethod
    def read_text(self, name: str) -> str | None:
        """The table's CSV text, or None when it does not exist."""

    @abstractmethod
    def write_text(self, name: str, text: str) -> None:
        """Replace the table atomically."""

    @abstractmethod
    def names(self, prefix: str) -> list[str]:
        """Sorted names of the tables starting with ``prefix``."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a table; a missing one is not an error."""

    def read(self, name: str, dtypes: Mapping[str, str]) -> pd.DataFrame | None:
        text = self.read_text(name)
        return None if text is None else read_csv_typed(io.StringIO(text), dtypes)

    def write(self, name: str, table: pd.DataFrame) -> None:
        self.write_text(name, table.to_csv(index=False))


class DirectoryTables(TableBackend):
    """``<root>/<name>.csv`` files; ``name`` may contain ``/`` for a sub-folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / f"{name}.csv"

    def read_text(self, name: str) -> str | None:
        try:
            return self._path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        Location.of(self._path(name)).write_text(text)  # aside, fsync'ed, renamed over

    def names(self, prefix: str) -> list[str]:
        folder, _, stem = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            return []
        found = (p for p in base.glob(f"{stem}*.csv") if not p.name.startswith("."))
        return sorted(f"{folder}/{p.stem}" if folder else p.stem for p in found)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


class ObjectTables(TableBackend):
    """``<root>/<name>.csv`` objects at a :class:`~storage.store.location.Location` (an object
    store,
    or any fsspec URL): each table is written whole in one PUT, the object store's atomic
    replace; there is no temporary object and no rename."""

    def __init__(self, root: Location) -> None:
        self.root = root

    def read_text(self, name: str) -> str | None:
        place = self.root.child(f"{name}.csv")
        try:
            return place.read_text()
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        self.root.child(f"{name}.csv").write_text(text)

    def names(self, prefix: str) -> list[str]:
        return [n.removesuffix(".csv") for n in self.root.list(prefix) if n.endswith(".csv")]

    def delete(self, name: str) -> None:
        self.root.child(f"{name}.csv").delete()


def tables_at(root: Location) -> TableBackend:
    """The table backend for a store's folder: files renamed into place on a local disk,
    whole objects elsewhere."""
    return DirectoryTables(root.local_path()) if root.is_local else ObjectTables(root)


class MemoryTables(TableBackend):
    """Tables in a dict: for tests and notebooks."""

    def __init__(self) -> None:
        self._tables: dict[str, str] = {}

    def read_text(self, name: str) -> str | None:
        return self._tables.get(name)

    def write_text(self, name: str, text: str) -> None:
        self._tables[name] = text

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self._tables if n.startswith(prefix))

    def delete(self, name: str) -> None:
        self._tables.pop(name, None)
