"""How a release becomes store items: the reader's choices and the store's geometry.

Kept light (no pandas, no zarr) so the CLI can build its options from these classes without
loading the store machinery; :mod:`storage.release.reader` and :mod:`storage.store.ingest_shards`
use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from daug_core.labels import UncertaintyPolicy
from daug_core.settings import ConfigError, check_choices, described
from storage.geometry import FitMode
from storage.release.decode import DEFAULT_MAX_DECODED_MB, MIB

FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "AP AXIAL")
LABEL_FILE_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet")


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
    max_decoded_mb: float = described(
        DEFAULT_MAX_DECODED_MB,
        "refuse an image (image_too_large) whose decoded pixels would exceed this many MiB "
        "(rows x columns x frames x bytes per sample x samples), before decoding it",
    )
    labels: str | None = described(
        None,
        "a label file (path or URL; .csv, .csv.gz or .parquet) keyed by dicom_id or study_id "
        "with the 14 CheXpert columns (e.g. Visual CheXbert predictions), used instead of the "
        "release's labeler table",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if not (
            isinstance(self.max_decoded_mb, int | float)
            and math.isfinite(self.max_decoded_mb)
            and self.max_decoded_mb > 0
        ):
            raise ConfigError(
                "ReaderConfig.max_decoded_mb must be a finite number > 0, "
                f"got {self.max_decoded_mb!r}"
            )
        if self.labels is not None and not self.labels.endswith(LABEL_FILE_SUFFIXES):
            raise ConfigError(
                f"ReaderConfig.labels {self.labels!r} must end in one of {LABEL_FILE_SUFFIXES}"
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
            "max_decoded_mb": self.max_decoded_mb,
            "labels": self.labels,
        }

    @property
    def max_decoded_bytes(self) -> int:
        """The decode budget of one image in bytes (what the image readers are built with)."""
        return int(self.max_decoded_mb * MIB)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReaderConfig:
        """Inverse of :meth:`as_dict` (a missing ``views`` means the frontal default, a missing
        ``max_decoded_mb``, as in stores ingested before it existed, the default budget)."""
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
            max_decoded_mb=float(data.get("max_decoded_mb", DEFAULT_MAX_DECODED_MB)),
            labels=data.get("labels"),
        )


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """How images enter the store. ``size``, ``shard_items`` and ``sharded`` are fixed when the
    store is created; ``fit`` and ``reader`` are recorded per ingest
    (:meth:`storage.store.image.ImageStore.ingest_config` reads them back so a new release is
    read alike)."""

    size: int = described(256, "stored image side S (fixed per store)")
    fit: FitMode = described(FitMode.PAD, "pad (keep the whole image) or crop (fill the square)")
    shard_items: int = described(64, "items per shard: the unit of work, retries and done chunks")
    sharded: bool = described(False, "Zarr sharding: one file per shard instead of per image")
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    retry_quarantined: bool = described(False, "try quarantined items again (files fixed)")

    def policy(self) -> dict[str, object]:
        """What makes a store's items alike: their labels (labeler, external file, uncertainty
        policy), views and fit. One store holds one
        (:meth:`~storage.store.image.ImageStore.hold_policy`)."""
        reader = self.reader.as_dict()
        labels = {key: reader[key] for key in ("labeler", "labels", "uncertainty", "views")}
        return {**labels, "fit": self.fit.value}

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 4096:
            raise ConfigError(f"IngestConfig.size must be in [8, 4096] px, got {self.size}")
        if self.shard_items < 1:
            raise ConfigError(f"IngestConfig.shard_items must be >= 1, got {self.shard_items}")
        object.__setattr__(self, "fit", FitMode(self.fit))
