"""How a release becomes store items: the reader's choices and the store's geometry.

Kept light (no pandas, no zarr) so the CLI can build its options from these classes without
loading the store machinery; :mod:`storage.release` and :mod:`storage.ingest` use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from daug_core.config import ConfigError, described
from storage.errors import StoreFormatError
from storage.geometry import FitMode
from storage.labels import UncertaintyPolicy

if TYPE_CHECKING:
    from storage.image_store import ImageStore

FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "AP AXIAL")


@dataclass(frozen=True, kw_only=True)
class ReaderConfig:
    """How a release becomes training items. Recorded in the store's provenance."""

    labeler: Literal["chexpert", "negbio"] = described("chexpert", "which label CSV to read")
    views: tuple[str, ...] = described(
        FRONTAL_VIEWS,
        "ViewPosition to keep (repeat; default PA, AP, AP AXIAL)",
        option="view",
    )
    uncertainty: UncertaintyPolicy = described(
        UncertaintyPolicy.U_ZEROS, "uncertain (-1) labels become 0 (u-zeros), 1 (u-ones) or masked"
    )
    image_format: Literal["auto", "dicom", "jpg"] = described(
        "auto", "dicom (MIMIC-CXR) or jpg (MIMIC-CXR-JPG); auto: detected from the files"
    )

    def __post_init__(self) -> None:
        if self.labeler not in ("chexpert", "negbio"):
            raise ConfigError(f"ReaderConfig.labeler must be chexpert or negbio: {self.labeler!r}")
        if self.image_format not in ("auto", "dicom", "jpg"):
            raise ConfigError(
                f"ReaderConfig.image_format must be auto, dicom or jpg: {self.image_format!r}"
            )
        # Prefect and the CLI hand over the value; the store's records hold strings.
        object.__setattr__(self, "uncertainty", UncertaintyPolicy(self.uncertainty))
        object.__setattr__(self, "views", tuple(self.views))

    def as_dict(self) -> dict[str, object]:
        return {
            "labeler": self.labeler,
            "views": list(self.views),
            "uncertainty": self.uncertainty.value,
            "image_format": self.image_format,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReaderConfig:
        """Inverse of :meth:`as_dict` (a missing ``views`` means the frontal default)."""
        views = data.get("views")
        labeler: Literal["chexpert", "negbio"] = (
            "negbio" if data.get("labeler") == "negbio" else "chexpert"
        )
        image_format = data.get("image_format", "auto")
        if image_format not in ("auto", "dicom", "jpg"):
            raise ConfigError(f"recorded image_format {image_format!r} is not auto, dicom or jpg")
        return cls(
            labeler=labeler,
            views=FRONTAL_VIEWS if views is None else tuple(views),
            uncertainty=UncertaintyPolicy(data.get("uncertainty", "u-zeros")),
            image_format=image_format,
        )


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """How images enter the store. ``size``, ``shard_items`` and ``sharded`` are fixed when the
    store is created; ``fit`` and ``reader`` are recorded per ingest (:meth:`from_store` reads
    them back so a new release is read alike)."""

    size: int = described(256, "stored image side S (fixed per store)")
    fit: FitMode = described(FitMode.PAD, "pad (keep the whole image) or crop (fill the square)")
    shard_items: int = described(64, "items per shard: the unit of work, retries and done chunks")
    sharded: bool = described(False, "Zarr sharding: one file per shard instead of per image")
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    retry_quarantined: bool = described(False, "try quarantined items again (files fixed)")

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 4096:
            raise ConfigError(f"IngestConfig.size must be in [8, 4096] px, got {self.size}")
        if self.shard_items < 1:
            raise ConfigError(f"IngestConfig.shard_items must be >= 1, got {self.shard_items}")
        object.__setattr__(self, "fit", FitMode(self.fit))

    @classmethod
    def from_store(cls, store: ImageStore) -> IngestConfig:
        """How ``store`` was ingested: its geometry and its last ingest's reader and fit."""
        ingests = store.attrs.get("ingests", [])
        if not ingests:
            raise StoreFormatError(
                f"{store.location} records no ingest; ingest a release first (`daug ingest`)"
            )
        last = ingests[-1]
        return cls(
            size=store.size,
            fit=FitMode(str(last.get("fit", FitMode.PAD.value))),
            shard_items=store.shard_items,
            sharded=bool(store.attrs.get("sharded", False)),
            reader=ReaderConfig.from_dict(last.get("reader", {})),
        )
