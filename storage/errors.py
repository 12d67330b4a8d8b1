"""Errors with the item and the reason: per-item failures go to quarantine, format errors stop."""

from __future__ import annotations

from enum import StrEnum


class QuarantineReason(StrEnum):
    """Why an item could not be ingested. Values are what quarantine.csv records."""

    MISSING_FILE = "missing_file"
    MISSING_ID = "missing_id"
    NOT_A_FILE = "not_a_file"  # a FIFO, device, socket or folder: never opened
    PATH_ESCAPES_ROOT = "path_escapes_root"
    DUPLICATE_DICOM_ID = "duplicate_dicom_id"  # metadata rows of one dicom_id that disagree
    CONFLICTING_SPLIT = "conflicting_split"  # split.csv puts the image in two splits
    CONFLICTING_LABELS = "conflicting_labels"  # the label table has two rows for its key
    NOT_DICOM = "not_dicom"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    PIXEL_DATA_SIZE_MISMATCH = "pixel_data_size_mismatch"  # the header does not fit the data
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    DEGENERATE_SIZE = "degenerate_size"
    IMAGE_TOO_LARGE = "image_too_large"  # over ReaderConfig.max_decoded_mb: never decoded
    CONSTANT_IMAGE = "constant_image"
    NON_FINITE_PIXELS = "non_finite_pixels"  # NaN or infinity after the modality LUT
    DECODE_ERROR = "decode_error"


class ItemError(Exception):
    """One item cannot be used; the run goes on without it."""

    def __init__(self, item_id: str, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{item_id}: {reason.value}: {detail}")
        self.item_id = item_id
        self.reason = reason
        self.detail = detail


class ReleaseFormatError(Exception):
    """The release as a whole is unusable (missing CSV, missing columns): fail fast."""


class StoreFormatError(Exception):
    """A store exists but does not match what the caller asked for (size, format version)."""


class EmptySelectionError(ValueError):
    """No usable item matches the requested split."""


class LocationError(Exception):
    """A place cannot be used at all: an unknown protocol, no such bucket, an endpoint that does
    not answer, a full disk. Another try does not help (nothing retries it)."""
