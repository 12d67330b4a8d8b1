"""Ground truth written BESIDE the release: true labels per image and lesion masks.

- ``labels.csv``: ``dicom_id,study_id,subject_id,ViewPosition`` then one 0/1 column per
  CheXpert label (:data:`daug_core.labels.CHEXPERT_LABELS` order): the TRUE study findings.
- ``masks.zarr``: Zarr v3 group; one uint8 array per image named by dicom_id, shape
  (14, Rows, Columns), channel order = CHEXPERT_LABELS, 1 where that finding changed the
  image. One chunk per image, zstd-compressed; all-zero masks are not stored as chunks
  (reading gives zeros).

:class:`MaskStore` writes the masks; :class:`GroundTruthMasks` reads them back, fitted to an
image store's square exactly as the store's images were (``storage.geometry.fit_to_square``
with nearest-neighbour sampling), so mask pixels land on the lesion's store pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from daug_core.labels import CHEXPERT_LABELS
from storage.geometry import FitMode, fit_to_square
from storage.synthetic.release_tables import Row, write_table

GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "study_id",
    "subject_id",
    "ViewPosition",
    *CHEXPERT_LABELS,
)

MASKS_FORMAT = "daug-synthetic-masks"
MASKS_FORMAT_VERSION = 1


class MaskStore:
    """Writes one (14, H, W) uint8 mask array per image into a Zarr v3 group."""

    def __init__(self, path: Path, seed: int) -> None:
        self._group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        self._group.attrs.update(
            {
                "format": MASKS_FORMAT,
                "format_version": MASKS_FORMAT_VERSION,
                "label_order": list(CHEXPERT_LABELS),
                "axes": ["label", "y", "x"],
                "values": "1 where the finding changed the image pixels, else 0",
                "notes": [
                    "'No Finding' channel is always 0.",
                    "'Lung Opacity' channel = its own nonspecific opacity OR the masks of "
                    "Atelectasis, Consolidation, Edema, Lung Lesion, Pneumonia.",
                    "Lateral views do not render Pneumothorax, Enlarged Cardiomediastinum, "
                    "Fracture or Pleural Other: those channels are 0 on laterals even when "
                    "the study label is 1.",
                    "Arrays are at the image's native pixel size (Rows, Columns).",
                ],
                "seed": seed,
            }
        )

    @classmethod
    def open_existing(cls, path: Path) -> MaskStore:
        """An existing masks.zarr, to add or remove images (a derived release)."""
        store = cls.__new__(cls)
        store._group = zarr.open_group(str(path), mode="r+", zarr_format=3)
        if store._group.attrs.get("format") != MASKS_FORMAT:
            raise ValueError(f"{path} is not a {MASKS_FORMAT} group")
        return store

    @property
    def seed(self) -> int:
        return int(str(self._group.attrs["seed"]))

    def delete(self, dicom_id: str) -> None:
        """Remove one image's masks (a missing one is not an error)."""
        if dicom_id in self._group:
            del self._group[dicom_id]

    def write(self, dicom_id: str, masks: np.ndarray, study_id: int, view_position: str) -> None:
        if masks.dtype != np.uint8 or masks.ndim != 3 or masks.shape[0] != len(CHEXPERT_LABELS):
            raise ValueError(f"{dicom_id}: masks must be uint8 (14, H, W), got {masks.shape}")
        array = self._group.create_array(
            name=dicom_id,
            shape=masks.shape,
            dtype="uint8",
            chunks=masks.shape,
            compressors=[ZstdCodec(level=3)],
            fill_value=0,
            attributes={"study_id": study_id, "ViewPosition": view_position},
            dimension_names=("label", "y", "x"),
        )
        if masks.any():
            array[...] = masks


class GroundTruthError(ValueError):
    """Ground truth is missing or unreadable: no masks.zarr, or no masks for an image."""


class MissingMasksError(GroundTruthError):
    """``masks.zarr`` holds no masks for this dicom_id."""

    def __init__(self, dicom_id: str, location: Path) -> None:
        super().__init__(f"{dicom_id}: no lesion masks in {location}")
        self.dicom_id = dicom_id


class GroundTruthMasks:
    """Read-only access to ``TRUTH/masks.zarr``: per image (14, H, W) native masks, or fitted
    to an S x S store square."""

    def __init__(self, group: zarr.Group, location: Path) -> None:
        self._group = group
        self.location = location

    @classmethod
    def open(cls, truth_dir: str | Path) -> GroundTruthMasks:
        """The masks of a ground-truth folder (``OUT/ground_truth`` of ``daug synth``)."""
        path = Path(truth_dir) / "masks.zarr"
        if not (path / "zarr.json").is_file():
            raise GroundTruthError(f"{truth_dir} holds no masks.zarr (expected {path})")
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
        attrs = group.attrs.asdict()
        if attrs.get("format") != MASKS_FORMAT:
            raise GroundTruthError(f"{path} is not a {MASKS_FORMAT} group")
        raw = attrs.get("label_order")
        order = tuple(str(name) for name in raw) if isinstance(raw, list | tuple) else ()
        if order != CHEXPERT_LABELS:
            raise GroundTruthError(f"{path}: label_order {list(order)} is not CHEXPERT_LABELS")
        return cls(group, path)

    def __contains__(self, dicom_id: object) -> bool:
        return isinstance(dicom_id, str) and dicom_id in self._group

    def native(self, dicom_id: str) -> np.ndarray:
        """(14, H, W) bool at the image's own pixel size."""
        if dicom_id not in self:
            raise MissingMasksError(dicom_id, self.location)
        node = self._group[dicom_id]
        if not isinstance(node, zarr.Array):
            raise GroundTruthError(f"{self.location}/{dicom_id} is not an array")
        masks = np.asarray(node[...])
        if masks.ndim != 3 or masks.shape[0] != len(CHEXPERT_LABELS):
            raise GroundTruthError(f"{dicom_id}: masks have shape {masks.shape}, not (14, H, W)")
        return masks.astype(bool)

    def masks(self, dicom_id: str, size: int, fit: FitMode | str = FitMode.PAD) -> np.ndarray:
        """(14, size, size) bool: each channel fitted like the store's image (``fit`` = the
        store's ingest fit mode: pad, crop or squash)."""
        mode = FitMode(fit)
        native = self.native(dicom_id)
        fitted = [
            fit_to_square(channel.astype(np.float32), size, mode, nearest=True) > 0.5
            for channel in native
        ]
        return np.stack(fitted)


def write_labels(path: Path, rows: Iterable[Row]) -> None:
    write_table(path, GROUND_TRUTH_COLUMNS, sorted(rows, key=lambda r: (r[2], r[1], r[0])))
