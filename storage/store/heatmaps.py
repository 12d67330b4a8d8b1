"""The heatmap store: DAug heatmaps beside the images, in the image store's Zarr group.

Layout (readable with plain ``zarr`` and ``pandas``; ``<version>`` defaults to ``v1``)::

    STORE/heatmaps/<version>/zarr.json       group; attrs = provenance (targets in channel
                                             order, guidance, checkpoints' sha256, code version)
    STORE/heatmaps/<version>/heatmaps/       float16 (N, K, S, S) in [0, 1], chunk (1, K, S, S)
                                             (Zarr shard = the image store's shard_items when
                                             sharded), NaN where not computed
    STORE/heatmaps/<version>/heatmaps_done/  bool (N,), chunk (shard_items,), set after the data
    STORE/heatmaps/<version>/failures.csv    index, dicom_id, reason of items that failed
    STORE/heatmaps/<version>/_parts/         per-shard failure tables not yet consolidated

``N`` follows the image store (the arrays grow when it does); ``S`` is the model's image size.
A version's provenance is fixed when it is created: computing with other checkpoints,
targets or guidance numbers is refused (:class:`ProvenanceMismatchError`) unless written to
a new version; old versions stay until :meth:`HeatmapStore.delete_version` removes them.

Ownership is the image store's: one writer per shard of ``shard_items`` consecutive indices
writes that shard's heatmap chunks, its ``heatmaps_done`` chunk and its part table, in the
order data -> part -> done, so a crash at any point leaves only work a rerun redoes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import zarr

from daug_core.diffusion.config import TranslationConfig
from daug_core.settings import ConfigError, dataclass_from_dict
from daug_core.strict_json import strict
from storage.errors import StoreFormatError
from storage.provenance import code_version
from storage.store.arrays import (
    Indices,
    clear_flags,
    flag_compressors,
    pixel_compressors,
    read_items,
    set_flags,
    write_item_runs,
)
from storage.store.format import GroupFormat
from storage.store.heatmap_versions import DEFAULT_VERSION, check_version_name
from storage.store.image import ImageStore

log = logging.getLogger(__name__)

HEATMAP_STORE = GroupFormat("daug-heatmap-store", 1)
HEATMAPS_GROUP = "heatmaps"
FAILURE_DTYPES: dict[str, str] = {"index": "int", "dicom_id": "str", "reason": "str"}


class ProvenanceMismatchError(StoreFormatError):
    """Existing heatmaps were computed differently from what a run asks for."""


# Translation fields of the provenance layout written before it embedded TranslationConfig,
# with the values a version written before the field existed holds (the official definition).
_FLAT_TRANSLATION: dict[str, Any] = {
    "mode": dataclasses.MISSING,
    "scale": dataclasses.MISSING,
    "level": dataclasses.MISSING,
    "steps": dataclasses.MISSING,
    "inversion_refinements": dataclasses.MISSING,
    "clip_denoised": dataclasses.MISSING,
    "difference": "minmax",
    "smoothing_sigma": 0.0,
}


@dataclass(frozen=True, kw_only=True)
class HeatmapProvenance:
    """Everything that determines the heatmap values; two runs may share a version only if
    these are equal. ``targets`` are in channel order (``"+No Finding"``, ...); ``translation``
    is the whole :class:`~daug_core.diffusion.config.TranslationConfig` the heatmaps were computed
    with. Heatmaps made by a heatmap student carry its teacher version's provenance plus
    the student's weights' sha256 and the teacher version's name (None for the teacher's own),
    so a version never mixes the two."""

    targets: tuple[str, ...]
    translation: TranslationConfig
    preset: str
    image_size: int
    generator_sha256: str
    classifier_sha256: str
    student_sha256: str | None = None
    teacher_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"targets": list(self.targets)}

    @property
    def definition(self) -> str:
        """The heatmap formula these settings give, in words."""
        tr = self.translation
        base = {
            "minmax": "|minmax(x0) - minmax(x_cf)|",
            "raw": "|x0 - x_cf| / 2 (pixel units)",
        }.get(tr.difference, tr.difference)
        if tr.reference == "reconstruction":
            base = base.replace("x0", "x_rec") + ", x_rec the unguided decoding of x_L"
        blur = f", Gaussian blur sigma {tr.smoothing_sigma:g} px" if tr.smoothing_sigma else ""
        return f"{base} per target{blur}"

    def summary(self) -> str:
        """One line for people: preset, guidance numbers, definition, checkpoints."""
        tr = self.translation
        return (
            f"preset {self.preset}, {tr.mode} s={tr.scale:g}, level {tr.level}, {tr.steps} steps, "
            f"{tr.inversion_refinements} refinements, {tr.difference} difference against "
            f"{tr.reference}, "
            f"blur {tr.smoothing_sigma:g} px, {self.image_size} px, "
            f"generator {self.generator_sha256[:12]}, classifier {self.classifier_sha256[:12]}"
            + (
                f"; by student {self.student_sha256[:12]} of version {self.teacher_version}"
                if self.student_sha256
                else ""
            )
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeatmapProvenance:
        """The stored attrs; versions written before the translation was embedded whole keep
        its fields at the top level (and, older still, lack ``difference`` and
        ``smoothing_sigma``: they hold the official minmax definition without blur)."""
        data = dict(data)
        if "translation" not in data:
            required = [k for k, v in _FLAT_TRANSLATION.items() if v is dataclasses.MISSING]
            missing = [k for k in required if k not in data]
            if missing:
                raise StoreFormatError(f"heatmap provenance lacks {missing}")
            data["translation"] = {
                k: data.pop(k) if k in data else default for k, default in _FLAT_TRANSLATION.items()
            }
        names = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in names if n not in data]
        if missing:
            raise StoreFormatError(f"heatmap provenance lacks {missing}")
        try:
            translation = dataclass_from_dict(TranslationConfig, data["translation"])
        except ConfigError as exc:
            raise StoreFormatError(f"heatmap provenance: {exc}") from exc
        return cls(
            targets=tuple(str(t) for t in data["targets"]),
            translation=translation,
            preset=str(data["preset"]),
            image_size=int(data["image_size"]),
            generator_sha256=str(data["generator_sha256"]),
            classifier_sha256=str(data["classifier_sha256"]),
            student_sha256=data.get("student_sha256"),
            teacher_version=data.get("teacher_version"),
        )

    def differences(self, other: HeatmapProvenance) -> list[str]:
        """``"name: stored -> requested"`` for every field that differs (translation fields
        by their own names)."""
        mine, theirs = _flat(self), _flat(other)
        return [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def _flat(provenance: HeatmapProvenance) -> dict[str, Any]:
    values = provenance.as_dict()
    return values | values.pop("translation")


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreFormatError(f"{group.path}/{name} is not an array")
    return node


class HeatmapStore:
    """One version of the heatmaps of an image store's items (see the module docstring)."""

    def __init__(self, image_store: ImageStore, version: str = DEFAULT_VERSION) -> None:
        check_version_name(version)
        path = f"{HEATMAPS_GROUP}/{version}"
        try:
            node = image_store.group[path]
        except KeyError:
            raise StoreFormatError(
                f"{image_store.location} has no heatmaps version {version!r} "
                f"(known: {self.versions(image_store)})"
            ) from None
        if not isinstance(node, zarr.Group):
            raise StoreFormatError(f"{image_store.location}/{path} is not a group")
        attrs = node.attrs.asdict()
        HEATMAP_STORE.check(attrs, f"{image_store.location}/{path}")
        self.image_store = image_store
        self.version = version
        self.group = node
        self.location = f"{image_store.location}/{path}"
        provenance = attrs.get("provenance")
        if not isinstance(provenance, dict):
            raise StoreFormatError(f"{image_store.location}/{path}: no provenance in attrs")
        self.provenance = HeatmapProvenance.from_dict(provenance)
        self.heatmaps = _array(node, "heatmaps")
        self.done = _array(node, "heatmaps_done")
        self.shard_items = image_store.shard_items
        self._tables_prefix = f"{path}/"

    # ---- construction -------------------------------------------------------------------
    @staticmethod
    def versions(image_store: ImageStore) -> list[str]:
        """Names of the heatmap versions in ``image_store``."""
        try:
            parent = image_store.group[HEATMAPS_GROUP]
        except KeyError:
            return []
        if not isinstance(parent, zarr.Group):
            return []
        return sorted(name for name, _ in parent.groups())

    @classmethod
    def create(
        cls,
        image_store: ImageStore,
        provenance: HeatmapProvenance,
        version: str = DEFAULT_VERSION,
        sharded: bool | None = None,
    ) -> HeatmapStore:
        """A new, empty version sized to the image store. ``sharded`` defaults to the image
        store's choice (one Zarr shard file per ``shard_items`` items)."""
        check_version_name(version)
        if version in cls.versions(image_store):
            raise StoreFormatError(f"{image_store.location} already has heatmaps {version!r}")
        if sharded is None:
            sharded = bool(image_store.attrs.get("sharded", False))
        k, s, n = len(provenance.targets), provenance.image_size, len(image_store)
        if k < 1 or s < 1:
            raise ValueError(f"need at least one target and a positive size, got {provenance}")
        shard_items = image_store.shard_items
        parent = image_store.group.require_group(HEATMAPS_GROUP)
        group = parent.create_group(version)
        group.create_array(
            "heatmaps",
            shape=(n, k, s, s),
            chunks=(1, k, s, s),
            shards=(shard_items, k, s, s) if sharded else None,
            dtype="float16",
            fill_value=np.nan,
            compressors=pixel_compressors(),
            dimension_names=("item", "target", "y", "x"),
        )
        group.create_array(
            "heatmaps_done",
            shape=(n,),
            chunks=(shard_items,),
            dtype="bool",
            fill_value=False,
            compressors=flag_compressors(),
            dimension_names=("item",),
        )
        # Attributes last: a group without them is not a heatmap store, so a crash during
        # creation is reported instead of being mistaken for an empty version.
        group.attrs.update(
            {
                "provenance": provenance.as_dict(),
                "targets": list(provenance.targets),
                "value_range": [0.0, 1.0],
                "definition": provenance.definition,
                "sharded": sharded,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "code_version": code_version(),
                "runs": [],
                **HEATMAP_STORE.attrs(),
            }
        )
        log.info("created heatmaps %s in %s (K=%d, S=%d)", version, image_store.location, k, s)
        return cls(image_store, version)

    @classmethod
    def open_or_create(
        cls,
        image_store: ImageStore,
        provenance: HeatmapProvenance,
        version: str = DEFAULT_VERSION,
        sharded: bool | None = None,
    ) -> HeatmapStore:
        """The version ``version``, created if missing. An existing version must have been
        computed with the same provenance; it grows to the image store's current size."""
        if version not in cls.versions(image_store):
            return cls.create(image_store, provenance, version, sharded)
        store = cls(image_store, version)
        differences = store.provenance.differences(provenance)
        if differences:
            raise ProvenanceMismatchError(
                f"heatmaps {version!r} in {image_store.location} were computed with other "
                f"settings ({'; '.join(differences)}). Write them to a new version "
                f"(--version NAME; existing: {cls.versions(image_store)}) or delete "
                f"{version!r} first (HeatmapStore.delete_version)."
            )
        store.grow()
        return store

    @classmethod
    def delete_version(cls, image_store: ImageStore, version: str) -> None:
        """Remove a version's arrays and tables (explicit: nothing else deletes heatmaps)."""
        check_version_name(version)
        if version not in cls.versions(image_store):
            raise StoreFormatError(f"{image_store.location} has no heatmaps {version!r}")
        parent = image_store.group[HEATMAPS_GROUP]
        assert isinstance(parent, zarr.Group)
        del parent[version]
        prefix = f"{HEATMAPS_GROUP}/{version}/"
        for name in image_store.tables.names(f"{prefix}_parts/shard-"):
            image_store.tables.delete(name)
        image_store.tables.delete(f"{prefix}failures")
        log.info("deleted heatmaps %s from %s", version, image_store.location)

    @classmethod
    def delete_if_unused(cls, image_store: ImageStore, version: str) -> bool:
        """Remove ``version`` if nothing was written to it (no item done, no failure and no
        shard part recorded): what a run that failed before its first item leaves behind.
        Returns whether it was removed."""
        if version not in cls.versions(image_store):
            return False
        store = cls(image_store, version)
        parts = image_store.tables.names(f"{store._tables_prefix}_parts/shard-")
        if store.done_mask().any() or parts or not store.failures().empty:
            return False
        cls.delete_version(image_store, version)
        return True

    # ---- shape and provenance -----------------------------------------------------------
    def __len__(self) -> int:
        return int(self.heatmaps.shape[0])

    @property
    def targets(self) -> tuple[str, ...]:
        return self.provenance.targets

    @property
    def size(self) -> int:
        return self.provenance.image_size

    @property
    def attrs(self) -> dict[str, Any]:
        return self.group.attrs.asdict()

    def grow(self) -> None:
        """Follow the image store after new items were ingested."""
        n = len(self.image_store)
        if n > len(self):
            k, s = len(self.targets), self.size
            self.heatmaps.resize((n, k, s, s))
            self.done.resize((n,))
        elif n < len(self):
            raise StoreFormatError(f"{self.location} holds {len(self)} items, images only {n}")

    def record_run(self, entry: dict[str, Any]) -> None:
        """Append one run's summary (code version, counts, timing) to the attrs."""
        self.group.attrs.update(strict({"runs": [*self.attrs.get("runs", []), entry]}))

    # ---- data ---------------------------------------------------------------------------
    def write_heatmaps(self, indices: Indices, heatmaps: np.ndarray) -> None:
        """Write (k, K, S, S) heatmaps at ``indices``; consecutive runs go in one write."""
        k, s = len(self.targets), self.size
        data = np.asarray(heatmaps, dtype=np.float16)
        if data.ndim != 4 or data.shape[1:] != (k, s, s) or len(data) != len(indices):
            raise ValueError(f"heatmaps must be ({len(indices)}, {k}, {s}, {s}), got {data.shape}")
        write_item_runs(self.heatmaps, indices, data)

    def mark_done(self, indices: Indices) -> None:
        set_flags(self.done, indices)

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.done[:], dtype=bool)

    def done_for(self, indices: Indices) -> np.ndarray:
        """Whether each of ``indices`` has heatmaps (bool, same length). Items the version
        has not grown to yet (ingested after its last run) have none."""
        idx = np.asarray(indices, dtype=np.int64)
        done = self.done_mask()
        inside = idx < len(done)
        result = np.zeros(len(idx), dtype=bool)
        result[inside] = done[idx[inside]]
        return result

    def invalidate(self, indices: Indices) -> None:
        """Forget the heatmaps of items whose pixels changed: clear ``heatmaps_done`` and
        drop them from failures.csv, so the next run computes them (old values stay until
        overwritten; nothing reads an item that is not done)."""
        idx = np.asarray(indices, dtype=np.int64)
        idx = idx[idx < len(self)]
        if not len(idx):
            return
        self.consolidate()
        clear_flags(self.done, idx)
        failures = self.failures()
        kept = failures[~failures["index"].isin(idx)].reset_index(drop=True)
        self.image_store.tables.write(f"{self._tables_prefix}failures", kept)

    def read_heatmaps(self, indices: Indices) -> np.ndarray:
        """(k, K, S, S) float32; NaN for items never computed."""
        return read_items(self.heatmaps, indices)

    # ---- failures -----------------------------------------------------------------------
    def _part_name(self, shard: int, part: int | None) -> str:
        name = f"{self._tables_prefix}_parts/shard-{shard:08d}"
        return name if part is None else f"{name}-{part:012d}"

    def write_failures_part(
        self, shard: int, failures: pd.DataFrame, part: int | None = None
    ) -> None:
        """The failed items of one shard, or of one batch of it (``part``: its first index),
        as one whole table (index, dicom_id, reason); written even when empty so that
        consolidation sees what was attempted."""
        table = failures.reindex(columns=list(FAILURE_DTYPES))
        if (table["index"] // self.shard_items != shard).any():
            raise ValueError(f"shard {shard} failures hold indices of other shards")
        self.image_store.tables.write(self._part_name(shard, part), table)

    def failures(self) -> pd.DataFrame:
        """Items that failed and are not done since (index, dicom_id, reason)."""
        table = self.image_store.tables.read(f"{self._tables_prefix}failures", FAILURE_DTYPES)
        return _failures(table)

    def consolidate(self) -> int:
        """Fold the shard parts into failures.csv, dropping items done since; idempotent.
        Returns the number of parts applied."""
        tables = self.image_store.tables
        names = tables.names(f"{self._tables_prefix}_parts/shard-")
        parts = [tables.read(n, FAILURE_DTYPES) for n in names]
        merged = _failures(pd.concat([self.failures(), *[p for p in parts if p is not None]]))
        merged = merged.drop_duplicates("index", keep="last")
        done = self.done_mask()
        merged = merged[~done[merged["index"].to_numpy()]].sort_values("index")
        tables.write(f"{self._tables_prefix}failures", merged.reset_index(drop=True))
        for name in names:
            tables.delete(name)
        return len(names)


def _failures(table: pd.DataFrame | None) -> pd.DataFrame:
    if table is None or table.empty:
        return pd.DataFrame(
            {"index": pd.Series(dtype="int64"), "dicom_id": pd.Series(dtype=str)}
            | {"reason": pd.Series(dtype=str)}
        )
    out = table.reindex(columns=list(FAILURE_DTYPES))
    out["index"] = out["index"].astype("int64")
    for column in ("dicom_id", "reason"):
        out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    return out
