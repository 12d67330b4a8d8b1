"""The image store: a Zarr v3 group of fixed-size images plus CSV tables, one item per chunk.

Layout (readable with plain ``zarr`` and ``pandas``)::

    STORE/zarr.json        group; attrs = provenance (format, size, shard_items, ingests)
    STORE/images/          float16 (N, S, S) in [0, 1], chunk (1, S, S), NaN where unwritten
    STORE/done/            bool (N,), chunk (shard_items,), set after the item's pixels
    STORE/items.csv        one row per item; ``index`` is the row in ``images``
    STORE/quarantine.csv   dicom_id, source_path, reason for every item not ingested
    STORE/_parts/          per-shard results not yet folded into items.csv (transient)
    STORE/_lease/          the writer lease of the run writing the store (storage/store/lease.py)

Chunks of ``images`` and ``done`` carry a CRC-32C (:func:`pixel_compressors`); stores made
before that have none and still open (storage/store/verify.py reports them as unchecksummed).

Work is owned by shards of ``shard_items`` consecutive indices: one writer per shard
touches that shard's image chunks (or its Zarr shard when ``sharded``), its ``done`` chunk
and its part table, so parallel shard writers never share a chunk. The order of writes per
shard is pixels -> part table -> ``done``; an item counts as finished only when ``done`` is
set *and* its status says so, so a crash at any point leaves work that a rerun redoes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from daug_core.strict_json import strict
from storage.errors import StoreFormatError
from storage.geometry import FitMode
from storage.provenance import code_version
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.store.arrays import (
    Indices,
    flag_compressors,
    pixel_compressors,
    read_items,
    set_flags,
    write_item_runs,
)
from storage.store.format import GroupFormat
from storage.store.items import (
    ITEM_DTYPES,
    ITEMS_TABLE,
    PART_DTYPES,
    PARTS_PREFIX,
    QUARANTINE_DTYPES,
    QUARANTINE_TABLE,
    REJECTS_TABLE,
    RESULT_COLUMNS,
    ItemStatus,
    _empty,
    _normalise,
    item_table_problems,
)
from storage.store.location import Location
from storage.store.tables import MemoryTables, TableBackend, tables_at

log = logging.getLogger(__name__)

IMAGE_STORE = GroupFormat("daug-image-store", 1)
POLICY_ATTR = "ingest_policy"


def _creation_state(root: Location) -> str:
    """``store`` (finished group metadata), ``unfinished`` (nothing yet, or what a creation
    cut short leaves: group metadata without the store's format, empty arrays, no items) or
    ``data_without_store`` (items or image chunks without finished group metadata)."""
    meta = root.child("zarr.json")
    if meta.is_file():
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except ValueError:
            attrs = {}
        if attrs.get("format") == IMAGE_STORE.name:
            return "store"
    chunks = [root.child(name).child("c") for name in ("images", "done")]
    if root.child("items.csv").exists() or any(c.exists() for c in chunks):
        return "data_without_store"
    return "unfinished"


class ImageStore:
    """Images of one size S in a Zarr group, with their item and quarantine tables."""

    def __init__(self, group: zarr.Group, tables: TableBackend, root: Location | None) -> None:
        location = root.url if root is not None else "<memory>"
        attrs = group.attrs.asdict()
        IMAGE_STORE.check(attrs, location)
        self.group = group
        self.tables = tables
        self.root = root  # where the store lives; None in memory
        self.location = location  # the same, as text for messages
        self.size = int(str(attrs["size"]))
        self.shard_items = int(str(attrs["shard_items"]))
        self.images = self._array(group, "images")
        self.done = self._array(group, "done")
        self._items: pd.DataFrame | None = None

    @property
    def directory(self) -> Path | None:
        """The store's local folder; None for an in-memory store or one on an object store."""
        return self.root.local_path() if self.root is not None and self.root.is_local else None

    @staticmethod
    def _array(group: zarr.Group, name: str) -> zarr.Array:
        try:
            node = group[name]
        except KeyError:
            raise StoreFormatError(
                f"{group.store}: no {name} array (a creation cut short by an older version); "
                f"delete the folder and ingest again"
            ) from None
        if not isinstance(node, zarr.Array):
            raise StoreFormatError(f"{group.store}: {name} is not an array")
        return node

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def _initialise(cls, store: Any, size: int, shard_items: int, sharded: bool) -> zarr.Group:
        """The arrays first, the group's attributes last: the ``format`` attribute is what
        makes the folder a store, so a creation cut short (a signal, a lost node) leaves a
        group without it, which :meth:`create` recognises and starts again."""
        if size < 8 or shard_items < 1:
            raise ValueError(f"size must be >= 8 and shard_items >= 1 (got {size}, {shard_items})")
        # Not open_group(mode="w"): that empties the folder, which holds the run's lease.
        # overwrite=True replaces only the arrays of an unfinished creation (checked by create).
        group = zarr.open_group(store, mode="a")
        group.create_array(
            "images",
            shape=(0, size, size),
            chunks=(1, size, size),
            shards=(shard_items, size, size) if sharded else None,
            dtype="float16",
            fill_value=np.nan,
            compressors=pixel_compressors(),
            dimension_names=("item", "y", "x"),
            overwrite=True,
        )
        group.create_array(
            "done",
            shape=(0,),
            chunks=(shard_items,),
            dtype="bool",
            fill_value=False,
            compressors=flag_compressors(),
            dimension_names=("item",),
            overwrite=True,
        )
        group.attrs.update(
            {
                **IMAGE_STORE.attrs(),
                "size": size,
                "shard_items": shard_items,
                "sharded": sharded,
                "dtype": "float16",
                "value_range": [0.0, 1.0],
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "code_version": code_version(),
                "ingests": [],
            }
        )
        return group

    @classmethod
    def create(
        cls,
        where: str | os.PathLike[str] | Location,
        size: int,
        shard_items: int = 64,
        sharded: bool = False,
    ) -> ImageStore:
        """A new, empty store at ``where`` (a path or URL that must not hold a store yet).

        A folder left by a creation cut short (group metadata without the store's attributes,
        no items) is created again; a folder with store data but no finished group metadata (a
        deleted or damaged ``zarr.json``) is refused, never written over."""
        root = Location.of(where)
        state = _creation_state(root)
        if state == "store":
            raise StoreFormatError(f"{root} already holds a store; open it instead")
        if state == "data_without_store":
            raise StoreFormatError(
                f"{root} holds store data (items table or image chunks) but no finished "
                f"zarr.json: it was damaged, not left by an interrupted creation, and is not "
                f"written over (run `daug verify` on a copy, or restore zarr.json)"
            )
        root.makedirs()
        group = cls._initialise(root.zarr_store(), size, shard_items, sharded)
        return cls(group, tables_at(root), root)

    @classmethod
    def open(cls, where: str | os.PathLike[str] | Location, read_only: bool = False) -> ImageStore:
        """The store at ``where`` (a local path or a URL such as ``s3://bucket/store``)."""
        root = Location.of(where)
        if not root.child("zarr.json").is_file():
            raise StoreFormatError(f"{root} is not an image store (no zarr.json)")
        group = zarr.open_group(root.zarr_store(read_only), mode="r" if read_only else "r+")
        return cls(group, tables_at(root), root)

    @classmethod
    def open_or_create(
        cls,
        where: str | os.PathLike[str] | Location,
        size: int,
        shard_items: int = 64,
        sharded: bool = False,
    ) -> ImageStore:
        """Open an existing store (its size must match) or create one."""
        root = Location.of(where)
        if _creation_state(root) != "store":
            return cls.create(root, size, shard_items, sharded)
        store = cls.open(root)
        if store.size != size:
            raise StoreFormatError(f"{root} holds {store.size} px images, asked for {size} px")
        return store

    @classmethod
    def in_memory(cls, size: int, shard_items: int = 64, sharded: bool = False) -> ImageStore:
        group = cls._initialise(zarr.storage.MemoryStore(), size, shard_items, sharded)
        return cls(group, MemoryTables(), None)

    # ---- provenance ---------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.group.attrs.asdict()

    def ingest_config(self) -> IngestConfig:
        """How this store was ingested: its geometry and its last ingest's reader and fit."""
        ingests = self.attrs.get("ingests", [])
        if not ingests:
            raise StoreFormatError(
                f"{self.location} records no ingest; ingest a release first (`daug ingest`)"
            )
        last = ingests[-1]
        return IngestConfig(
            size=self.size,
            fit=FitMode(str(last.get("fit", FitMode.PAD.value))),
            shard_items=self.shard_items,
            sharded=bool(self.attrs.get("sharded", False)),
            reader=ReaderConfig.from_dict(last.get("reader", {})),
        )

    def hold_policy(self, config: IngestConfig) -> None:
        """Refuse an ingest whose :meth:`~storage.release.ingest_config.IngestConfig.policy`
        differs from the store's (a StoreFormatError naming both): one store mixing targets
        made under two label policies would train them as one. The first ingest records the
        policy (a store from before the record: its last ingest's)."""
        asked = config.policy()
        held = self.attrs.get(POLICY_ATTR)
        if held is None and self.attrs.get("ingests"):
            held = self.ingest_config().policy()
        if held is None:
            self.group.attrs.update(strict({POLICY_ATTR: asked}))
            return
        differ = [key for key in asked if strict(asked[key]) != held.get(key)]
        if differ:
            raise StoreFormatError(
                f"{self.location} holds items ingested with "
                + ", ".join(f"{key} {held.get(key)!r}" for key in differ)
                + "; this ingest asks for "
                + ", ".join(f"{key} {strict(asked[key])!r}" for key in differ)
                + ". One store holds one label policy: ingest into a new store, or pass the "
                "store's settings"
            )

    def record_ingest(self, entry: dict[str, Any]) -> None:
        """Append one ingest's provenance (release, reader config, counts) to the attrs."""
        ingests = [*self.attrs.get("ingests", []), entry]
        self.group.attrs.update(strict({"ingests": ingests}))

    # ---- tables -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def items(self) -> pd.DataFrame:
        """The item table (a copy), one row per index in ``images``. A table that does not
        match the arrays (cut short, unparseable) is a :class:`StoreFormatError` pointing to
        ``daug verify``: read as it is, it would be a smaller store, and the next ingest would
        give the missing items other indices."""
        if self._items is None:
            try:
                table = self.tables.read(ITEMS_TABLE, ITEM_DTYPES)
            except ValueError as exc:  # pandas' parser errors are ValueErrors
                raise StoreFormatError(
                    f"{self.location}: items.csv cannot be read ({' '.join(str(exc).split())}); "
                    f"see daug verify {self.location}"
                ) from None
            table = table if table is not None else _empty(ITEM_DTYPES)
            problems = item_table_problems(table, len(self), self.finished_without_row(len(table)))
            if problems:
                raise StoreFormatError(
                    f"{self.location}: {'; '.join(problems)}: the item table does not match "
                    f"the arrays; see daug verify {self.location}"
                )
            self._items = _normalise(table, ITEM_DTYPES)
        return self._items.copy()

    def finished_without_row(self, rows: int) -> int:
        """How many items at indices >= ``rows`` are done (an item table of ``rows`` rows
        lacks their rows); reads only the flags past ``rows``."""
        return int(np.count_nonzero(self.done[rows:])) if rows < len(self) else 0

    def _write_items(self, table: pd.DataFrame) -> None:
        table = _normalise(table, ITEM_DTYPES)
        self.tables.write(ITEMS_TABLE, table)
        self._items = table

    def update_items(self, updates: pd.DataFrame) -> None:
        """Overwrite columns of existing rows in place, by ``index`` (one atomic rewrite of
        items.csv). ``updates`` holds ``index`` and any item columns except ``dicom_id``."""
        unknown = set(updates.columns) - set(ITEM_DTYPES)
        if unknown or "dicom_id" in updates.columns:
            raise ValueError(f"cannot update item columns {sorted(unknown) or ['dicom_id']}")
        if updates.empty:
            return
        items = self.items()
        positions = items.set_index("index").index.get_indexer(pd.Index(updates["index"]))
        if (positions < 0).any():
            raise StoreFormatError(f"{self.location}: updates for unknown indices")
        for column in updates.columns.drop("index"):
            items[column] = items[column].astype(object)
            items.loc[positions, column] = updates[column].to_numpy()
        self._write_items(items)

    def quarantine(self) -> pd.DataFrame:
        return self._read_table(QUARANTINE_TABLE, QUARANTINE_DTYPES)

    def _read_table(self, name: str, dtypes: dict[str, str]) -> pd.DataFrame:
        table = self.tables.read(name, dtypes)
        return _normalise(table if table is not None else _empty(dtypes), dtypes)

    def register(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Give every new dicom_id the next free index; known ones keep theirs.

        Returns ``rows`` with an ``index`` column. Grows ``images`` and ``done`` to fit.
        Existing rows are not modified (a changed release is the reprocess flow's job).
        """
        items = self.items()
        known = dict(zip(items["dicom_id"], items["index"], strict=True))
        new = rows[~rows["dicom_id"].isin(known)].drop_duplicates("dicom_id")
        start = len(items)
        new = new.assign(index=np.arange(start, start + len(new), dtype=np.int64))
        new = new.assign(status=ItemStatus.PENDING.value)
        if len(new):
            total = start + len(new)
            self.images.resize((total, self.size, self.size))
            self.done.resize((total,))
            self._write_items(pd.concat([items, new], ignore_index=True))
            log.info("registered %d new items (store now holds %d)", len(new), total)
        indices = rows["dicom_id"].map(
            known | dict(zip(new["dicom_id"], new["index"], strict=True))
        )
        return rows.assign(index=indices.astype("int64"))

    def add_rejects(self, rejected: pd.DataFrame) -> int:
        """Record items refused before they got an index (conflicting rows, escaping paths);
        returns how many were not recorded before."""
        old = self.tables.read(REJECTS_TABLE, QUARANTINE_DTYPES)
        merged = pd.concat([old, rejected] if old is not None else [rejected], ignore_index=True)
        merged = _normalise(merged, QUARANTINE_DTYPES).drop_duplicates()
        self.tables.write(REJECTS_TABLE, merged)
        return len(merged) - (0 if old is None else len(old))

    # ---- pixels -------------------------------------------------------------------------
    def write_images(self, indices: Indices, images: np.ndarray) -> None:
        """Write (k, S, S) images at ``indices``; consecutive runs go in one write."""
        data = np.asarray(images, dtype=np.float16)
        if data.shape[1:] != (self.size, self.size):
            raise ValueError(f"images must be (k, {self.size}, {self.size}), got {data.shape}")
        write_item_runs(self.images, indices, data)

    def mark_done(self, indices: Indices) -> None:
        set_flags(self.done, indices)

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=bool)

    def read_image(self, index: int) -> np.ndarray:
        return np.asarray(self.images[index], dtype=np.float32)

    def read_images(self, indices: Indices) -> np.ndarray:
        return read_items(self.images, indices)

    # ---- shard results ------------------------------------------------------------------
    def shard_of(self, index: int) -> int:
        return index // self.shard_items

    def write_part(self, shard: int, results: pd.DataFrame) -> None:
        """Results for items of one shard (``index`` + result columns), atomically."""
        outside = results["index"] // self.shard_items != shard
        if outside.any():
            raise ValueError(f"shard {shard} part holds indices of other shards")
        self.tables.write(f"{PARTS_PREFIX}{shard:08d}", _normalise(results, PART_DTYPES))

    def consolidate(self) -> int:
        """Fold part tables into items.csv, rebuild quarantine.csv, delete the parts.

        Idempotent: a crash after writing items.csv but before deleting the parts only
        means the same results are applied again. Returns the number of parts applied.
        """
        names = self.tables.names(PARTS_PREFIX)
        items = self.items()
        if names:
            parts = [self.tables.read(n, PART_DTYPES) for n in names]
            results = _normalise(pd.concat([p for p in parts if p is not None]), PART_DTYPES)
            results = results.drop_duplicates("index", keep="last").set_index("index")
            positions = items.set_index("index").index.get_indexer(results.index)
            if (positions < 0).any():
                raise StoreFormatError(f"{self.location}: part rows for unknown indices")
            for column in RESULT_COLUMNS:
                items.loc[positions, column] = results[column].to_numpy()
            self._write_items(items)
        quarantined = items[items["status"] == ItemStatus.QUARANTINED.value]
        rejects = self._read_table(REJECTS_TABLE, QUARANTINE_DTYPES)
        table = pd.concat([rejects, quarantined[list(QUARANTINE_DTYPES)]], ignore_index=True)
        self.tables.write(QUARANTINE_TABLE, _normalise(table, QUARANTINE_DTYPES))
        for name in names:
            self.tables.delete(name)
        return len(names)

    def usable_mask(self, items: pd.DataFrame | None = None) -> np.ndarray:
        """Per row of ``items`` (default: :meth:`items`), whether the item is usable: status ok
        and its pixels done. The one definition every reader of the store uses."""
        items = self.items() if items is None else items
        done = self.done_mask()
        ok = (items["status"] == ItemStatus.OK.value).to_numpy(dtype=bool)
        return ok & done[items["index"].to_numpy(dtype=np.int64)]

    def usable(self, splits: Sequence[str] | None = None) -> pd.DataFrame:
        """The usable items (:meth:`usable_mask`) of ``splits`` (None: all), in index order."""
        items = self.items()
        keep = self.usable_mask(items)
        if splits is not None:
            keep &= items["split"].isin(list(splits)).to_numpy()
        return items[keep].sort_values("index").reset_index(drop=True)

    def finished_mask(self, retry_quarantined: bool = False) -> np.ndarray:
        """Items that need no more work: usable, retired, or quarantined (unless retried)."""
        items = self.items()
        status = items["status"].to_numpy()
        finished = self.usable_mask(items)
        finished |= status == ItemStatus.RETIRED.value
        if not retry_quarantined:
            finished |= status == ItemStatus.QUARANTINED.value
        return np.asarray(finished)
