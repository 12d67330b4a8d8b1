"""Errors with the item and the reason: per-item failures go to quarantine, format errors stop."""

from __future__ import annotations

from enum import StrEnum


class QuarantineReason(StrEnum):
    """Why an item could not be ingested. Values are what quarantine.csv records."""

    MISSING_FILE = "missing_file"
    PATH_ESCAPES_ROOT = "path_escapes_root"
    DUPLICATE_DICOM_ID = "duplicate_dicom_id"
    NOT_DICOM = "not_dicom"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    DEGENERATE_SIZE = "degenerate_size"
    CONSTANT_IMAGE = "constant_image"
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
