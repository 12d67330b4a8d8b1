"""The embedding index: a trained contrastive model's image and report embeddings of every
usable item of an image store, beside the heatmaps, and exact cosine top-k search over them.

Layout (readable with plain ``zarr`` and ``pandas``; ``<key>`` is the model's weights' sha256,
first 16 hex digits: one index per model and store)::

    STORE/index/<key>/zarr.json    group; attrs = provenance (model sha256, heatmap version,
                                   dim, the store's item count, chunk rows, code version,
                                   created)
    STORE/index/<key>/image/       float16 (N, D) L2-normalised image embeddings (the model's
                                   own input: image + heatmap channels), chunk (chunk_rows, D),
                                   NaN where not computed
    STORE/index/<key>/text/        float16 (N, D) L2-normalised report embeddings, same chunks
    STORE/index/<key>/done/        bool (N,), chunk (chunk_rows,), set after a row's embeddings
    STORE/index/<key>/items.csv    row, index (the image store's), dicom_id, study_id, split

A row is an item of the index; ``index`` maps it to the image store. Writes go data -> done
(:meth:`EmbeddingIndex.write`), so a run killed at any point leaves rows that are either done
and whole or not done; a rerun computes only :meth:`EmbeddingIndex.pending_rows`. The items
table and the arrays are written before the group's attributes, which make the folder an
index: a creation cut short is not mistaken for an index and is made again. The writer holds
the store's lease (storage/store/lease.py); readers need none, as they read done rows only.

**Why exact search.** :meth:`EmbeddingIndex.top_k` multiplies the queries with the index a
block of rows at a time (float16 rows cast to float32, float32 accumulation), keeps each
block's best k by ``np.argpartition`` and merges them: exact cosine similarity, no training
and no recall to tune. At MIMIC-CXR's size (~377 k frontal images x 512 float16 = 0.39 GB
per space) a query costs 377 k x 512 multiply-adds, about 0.2 GFLOP: measured on one core of
this project's 2-core CPU, 70 ms with the space in memory as float32 (0.77 GB, loaded once per
process in 2.2 s), 0.75 s read from the store block by block; a batch of queries shares the
pass. Past ~10 M items (10 GB of float16 per space, 5 GFLOP a query) an approximate index pays:
FAISS IVF-PQ (rows compressed to a few dozen bytes, a few of thousands of lists probed) or an
HNSW graph (hnswlib, FAISS ``IndexHNSWFlat``), their recall measured against this search.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import zarr

from daug_core.strict_json import strict
from storage.errors import StoreFormatError
from storage.provenance import code_version
from storage.store.arrays import Indices, flag_compressors, pixel_compressors, set_flags
from storage.store.exact_search import BestK, TopK, unit_queries
from storage.store.format import GroupFormat
from storage.store.image import ImageStore
from storage.store.index_hits import neighbours
from storage.store.location import Location

__all__ = [
    "EmbeddingIndex",
    "IndexMismatchError",
    "IndexProvenance",
    "NoIndexError",
    "StaleIndexError",
    "TopK",
    "index_key",
    "neighbours",
]
log = logging.getLogger(__name__)

EMBEDDING_INDEX = GroupFormat("daug-embedding-index", 1)
INDEX_GROUP = "index"
KEY_DIGITS = 16
DEFAULT_CHUNK_ROWS = 4096
# A searched space is kept in memory as float32 up to this size (1 M rows of 512 dims use 2 GiB);
# a larger one is read from the store block by block on every search.
CACHE_BYTES = 4 << 30
SPACES = ("image", "text")
Space = Literal["image", "text"]
ITEM_DTYPES: dict[str, str] = {
    "row": "int",
    "index": "int",
    "dicom_id": "str",
    "study_id": "str",
    "split": "str",
}


class NoIndexError(StoreFormatError):
    """The store holds no index for this model (or an unfinished one)."""


class IndexMismatchError(StoreFormatError):
    """An existing index was made differently from what a run asks for."""


class StaleIndexError(IndexMismatchError):
    """The store's usable items changed since the index was made (an ingest, new heatmaps)."""


def index_key(model_sha256: str) -> str:
    """The folder name of a model's index: its weights' sha256, first 16 hex digits."""
    digest = model_sha256.strip().lower()
    if len(digest) < KEY_DIGITS or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{model_sha256!r} is not a sha256 hex digest")
    return digest[:KEY_DIGITS]


@dataclass(frozen=True, kw_only=True)
class IndexProvenance:
    """What the embeddings are: two runs may share an index only if these are equal.
    ``heatmap_version`` is None for a model trained without heatmaps; ``store_items`` is the
    image store's item count (all statuses) when the index was made."""

    model_sha256: str
    heatmap_version: str | None
    dim: int
    store_items: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexProvenance:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise StoreFormatError(f"embedding index provenance lacks {missing}")
        version = data["heatmap_version"]
        return cls(
            model_sha256=str(data["model_sha256"]),
            heatmap_version=None if version is None else str(version),
            dim=int(data["dim"]),
            store_items=int(data["store_items"]),
        )


class _InMemory(NamedTuple):
    """One space of the index as first searched: its done rows then, and every row as float32
    (rows not done are NaN and never used)."""

    done: np.ndarray
    vectors: np.ndarray


def _open_store(
    store: ImageStore | str | os.PathLike[str] | Location, read_only: bool
) -> ImageStore:
    if isinstance(store, ImageStore):
        return store
    return ImageStore.open(store, read_only=read_only)


def _array(group: zarr.Group, name: str, where: str) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise StoreFormatError(f"{where}: no {name} array") from None
    if not isinstance(node, zarr.Array):
        raise StoreFormatError(f"{where}/{name} is not an array")
    return node


def _typed_items(table: pd.DataFrame) -> pd.DataFrame:
    out = table.reindex(columns=list(ITEM_DTYPES)).reset_index(drop=True)
    for column, kind in ITEM_DTYPES.items():
        out[column] = out[column].astype("int64") if kind == "int" else out[column].astype(str)
    return out


class EmbeddingIndex:
    """One model's embeddings of an image store's usable items (see the module docstring)."""

    def __init__(self, image_store: ImageStore, model_sha256: str) -> None:
        key = index_key(model_sha256)
        self.image_store = image_store
        self.key = key
        self.location = f"{image_store.location}/{INDEX_GROUP}/{key}"
        try:
            node = image_store.group[f"{INDEX_GROUP}/{key}"]
        except KeyError:
            node = None
        attrs = node.attrs.asdict() if isinstance(node, zarr.Group) else {}
        if node is None or attrs.get("format") is None:
            known = self.models(image_store)
            raise NoIndexError(
                f"{image_store.location} has no embedding index of model {key} "
                f"(indexed models: {known or 'none'}); run `daug index --model MODEL "
                f"--store {image_store.location}` with this model"
            )
        assert isinstance(node, zarr.Group)
        EMBEDDING_INDEX.check(attrs, self.location)
        self.group = node
        provenance = attrs.get("provenance")
        if not isinstance(provenance, dict):
            raise StoreFormatError(f"{self.location}: no provenance in attrs")
        self.provenance = IndexProvenance.from_dict(provenance)
        if index_key(self.provenance.model_sha256) != key:
            raise StoreFormatError(f"{self.location} holds model {self.provenance.model_sha256}")
        self.image = _array(node, "image", self.location)
        self.text = _array(node, "text", self.location)
        self.done = _array(node, "done", self.location)
        self.chunk_rows = int(self.image.chunks[0])
        table = image_store.tables.read(self._items_name(key), ITEM_DTYPES)
        if table is None or len(table) != self.image.shape[0]:
            raise StoreFormatError(
                f"{self.location}: items.csv has {0 if table is None else len(table)} rows, "
                f"the arrays {self.image.shape[0]}; delete the index and make it again"
            )
        self._items = _typed_items(table)
        self._memory: dict[str, _InMemory] = {}

    @staticmethod
    def _items_name(key: str) -> str:
        return f"{INDEX_GROUP}/{key}/items"

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def models(store: ImageStore | str | os.PathLike[str] | Location) -> list[str]:
        """The keys (model sha256 prefixes) of the finished indexes of ``store``."""
        image_store = _open_store(store, read_only=True)
        try:
            parent = image_store.group[INDEX_GROUP]
        except KeyError:
            return []
        if not isinstance(parent, zarr.Group):
            return []
        return sorted(
            name for name, group in parent.groups() if group.attrs.get("format") is not None
        )

    @classmethod
    def open(
        cls, store: ImageStore | str | os.PathLike[str] | Location, model_sha256: str
    ) -> EmbeddingIndex:
        """The index of the model whose weights have ``model_sha256`` (:class:`NoIndexError`
        naming the indexed models when there is none)."""
        return cls(_open_store(store, read_only=True), model_sha256)

    @classmethod
    def create_or_open(
        cls,
        store: ImageStore | str | os.PathLike[str] | Location,
        model_sha256: str,
        heatmap_version: str | None,
        dim: int,
        items_table: pd.DataFrame,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> EmbeddingIndex:
        """The model's index, created for ``items_table`` (columns index, dicom_id, study_id,
        split; one row per index row, in row order) if missing. An existing one must have the
        same provenance (:class:`IndexMismatchError`) and the same items
        (:class:`StaleIndexError`: the store changed, delete it and index again)."""
        image_store = _open_store(store, read_only=False)
        key = index_key(model_sha256)
        items = _typed_items(items_table.assign(row=np.arange(len(items_table))))
        if dim < 1 or chunk_rows < 1 or items.empty:
            raise ValueError(f"need dim >= 1, chunk_rows >= 1 and items (got {dim}, {chunk_rows})")
        if items["index"].duplicated().any():
            raise ValueError("items_table repeats store indices")
        wanted = IndexProvenance(
            model_sha256=model_sha256.lower(),
            heatmap_version=heatmap_version,
            dim=int(dim),
            store_items=len(image_store),
        )
        if key not in cls.models(image_store):
            return cls._create(image_store, wanted, items, chunk_rows)
        index = cls(image_store, model_sha256)
        stored = index.provenance.as_dict()
        differences = [
            f"{name}: {stored[name]!r} -> {value!r}"
            for name, value in wanted.as_dict().items()
            if name in ("model_sha256", "heatmap_version", "dim") and stored[name] != value
        ]
        if differences:
            raise IndexMismatchError(
                f"the index {index.location} was made otherwise ({'; '.join(differences)}); "
                f"delete it (EmbeddingIndex.delete) to index again"
            )
        same = index._items[["index", "dicom_id"]].equals(items[["index", "dicom_id"]])
        if not same:
            raise StaleIndexError(
                f"the index {index.location} holds {len(index)} items, the store has "
                f"{len(items)} usable items now ({len(image_store)} in all, "
                f"{index.provenance.store_items} when indexed): the store changed since; "
                f"delete the index and index again"
            )
        return index

    @classmethod
    def _create(
        cls,
        image_store: ImageStore,
        provenance: IndexProvenance,
        items: pd.DataFrame,
        chunk_rows: int,
    ) -> EmbeddingIndex:
        key = index_key(provenance.model_sha256)
        parent = image_store.group.require_group(INDEX_GROUP)
        if key in dict(parent.groups()):
            del parent[key]  # a creation cut short (no attributes): made again
        image_store.tables.write(cls._items_name(key), items)
        group = parent.create_group(key)
        n, d = len(items), provenance.dim
        for space in SPACES:
            group.create_array(
                space,
                shape=(n, d),
                chunks=(min(chunk_rows, n), d),
                dtype="float16",
                fill_value=np.nan,
                compressors=pixel_compressors(),
                dimension_names=("row", "dim"),
            )
        group.create_array(
            "done",
            shape=(n,),
            chunks=(min(chunk_rows, n),),
            dtype="bool",
            fill_value=False,
            compressors=flag_compressors(),
            dimension_names=("row",),
        )
        group.attrs.update(
            strict(
                {
                    "provenance": provenance.as_dict(),
                    "spaces": list(SPACES),
                    "normalised": "L2",
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "code_version": code_version(),
                    **EMBEDDING_INDEX.attrs(),
                }
            )
        )
        log.info("created embedding index %s (%d rows, dim %d)", key, n, d)
        return cls(image_store, provenance.model_sha256)

    @classmethod
    def delete(
        cls, store: ImageStore | str | os.PathLike[str] | Location, model_sha256: str
    ) -> None:
        """Remove a model's index (its arrays and items table); a missing one is no error."""
        image_store = _open_store(store, read_only=False)
        key = index_key(model_sha256)
        try:
            parent = image_store.group[INDEX_GROUP]
        except KeyError:
            return
        if isinstance(parent, zarr.Group) and key in dict(parent.groups()):
            del parent[key]
        image_store.tables.delete(cls._items_name(key))
        log.info("deleted embedding index %s from %s", key, image_store.location)

    # ---- shape and state ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def size(self) -> int:
        """Rows (indexed items)."""
        return len(self)

    @property
    def dim(self) -> int:
        return self.provenance.dim

    @property
    def attrs(self) -> dict[str, Any]:
        return self.group.attrs.asdict()

    def items(self) -> pd.DataFrame:
        """row, index (the image store's), dicom_id, study_id, split; one row per index row."""
        return self._items.copy()

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=bool)

    def pending_rows(self) -> np.ndarray:
        """Rows without embeddings yet, ascending."""
        return np.flatnonzero(~self.done_mask()).astype(np.int64)

    def is_complete(self) -> bool:
        return bool(self.done_mask().all())

    # ---- data ---------------------------------------------------------------------------
    def write(self, rows: Indices, image: np.ndarray, text: np.ndarray) -> None:
        """Write the (R, D) embeddings of ``rows`` (L2-normalised here again in float32, then
        float16), then mark the rows done."""
        idx = np.asarray(rows, dtype=np.int64)
        order = np.argsort(idx)
        idx = idx[order]
        if len(np.unique(idx)) != len(idx) or (len(idx) and (idx[0] < 0 or idx[-1] >= len(self))):
            raise ValueError(f"rows must be distinct rows of 0..{len(self) - 1}")
        arrays = {}
        for space, data in (("image", image), ("text", text)):
            values = np.asarray(data, dtype=np.float32)
            if values.shape != (len(idx), self.dim):
                raise ValueError(f"{space} must be ({len(idx)}, {self.dim}), got {values.shape}")
            norms = np.linalg.norm(values, axis=1, keepdims=True)
            if not (np.isfinite(values).all() and (norms > 0).all()):
                bad = self._items["dicom_id"].to_numpy()[idx]
                raise ValueError(f"{space} embeddings of {list(bad[:5])} are not finite or zero")
            arrays[space] = (values[order] / norms[order]).astype(np.float16)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for space, values in arrays.items():
            target = self.image if space == "image" else self.text
            for run, data in zip(np.split(idx, breaks), np.split(values, breaks), strict=True):
                if len(run):
                    target[int(run[0]) : int(run[-1]) + 1] = data
        set_flags(self.done, idx)
        self._memory.clear()

    def read(self, rows: Indices, space: Space = "image") -> np.ndarray:
        """(R, D) float32 embeddings of ``rows`` (NaN where not done)."""
        array = self._space(space)
        idx = np.asarray(rows, dtype=np.int64)
        return np.asarray(array.get_orthogonal_selection((idx, slice(None))), dtype=np.float32)

    def _space(self, space: str) -> zarr.Array:
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        return self.image if space == "image" else self.text

    def _in_memory(self, space: str) -> _InMemory | None:
        """The space as float32 in memory (loaded on its first search), or None when it is
        larger than :data:`CACHE_BYTES`."""
        if space not in self._memory:
            if len(self) * self.dim * 4 > CACHE_BYTES:
                return None
            array = self._space(space)
            done = self.done_mask()
            vectors = np.empty((len(self), self.dim), dtype=np.float32)
            for start in range(0, len(self), self.chunk_rows):
                vectors[start : start + self.chunk_rows] = array[start : start + self.chunk_rows]
            self._memory[space] = _InMemory(done, vectors)
        return self._memory[space]

    def top_k(
        self,
        queries: np.ndarray,
        k: int,
        space: Space = "image",
        chunk_rows: int = 65536,
        exclude: Sequence[int] | np.ndarray | None = None,
    ) -> TopK:
        """Exact cosine top-k of ``queries`` (Q, D) against the done rows of ``space``.

        Queries are L2-normalised here. The index is searched ``chunk_rows`` rows at a time:
        each block's rows (stored float16, cast to float32) are multiplied with the queries,
        the block's best k per query kept by ``np.argpartition`` and merged with the best so
        far; the result is sorted by similarity (ties: lower row first). ``exclude``: rows left
        out of every query's answer (e.g. the query's own item).

        The first search of a space keeps it in memory as float32 (up to :data:`CACHE_BYTES`;
        a larger one is read block by block each time): this object then searches the rows
        that were done at that moment, until its next :meth:`write`; open the index again to
        see rows another process wrote since."""
        q = unit_queries(queries, self.dim)
        if k < 1 or chunk_rows < 1:
            raise ValueError(f"k and chunk_rows must be >= 1, got {k}, {chunk_rows}")
        array = self._space(space)
        memory = self._in_memory(space)
        usable = (memory.done if memory is not None else self.done_mask()).copy()
        if exclude is not None:
            usable[np.asarray(exclude, dtype=np.int64)] = False
        best = BestK(len(q), min(k, int(usable.sum())))
        if best.k == 0:
            return best.result()
        # Blocks aligned on the stored chunks, so each chunk is read once.
        step = max(1, chunk_rows // self.chunk_rows) * self.chunk_rows
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            keep = np.flatnonzero(usable[start:stop])
            if not len(keep):
                continue
            if memory is not None:
                block = memory.vectors[start:stop]
            else:
                block = np.asarray(array[start:stop], dtype=np.float32)
            if len(keep) < stop - start:
                block = block[keep]
            best.add(q @ block.T, keep.astype(np.int64) + start)  # cosine: unit norms
        return best.result()
