"""The one format-header check every store group goes through."""

from __future__ import annotations

import pytest

from storage.errors import StoreFormatError
from storage.store.format import GroupFormat
from storage.store.heatmaps import HEATMAP_STORE
from storage.store.image import IMAGE_STORE, ImageStore


def test_attrs_round_trip_and_refusals():
    kind = GroupFormat("daug-x", 3)
    kind.check(kind.attrs(), "here")
    with pytest.raises(StoreFormatError, match=r"here is not a daug-x \(format 'daug-y'\)"):
        kind.check({"format": "daug-y", "format_version": 3}, "here")
    with pytest.raises(StoreFormatError, match="here: format version 2, this code reads 3"):
        kind.check({"format": "daug-x", "format_version": 2}, "here")


def test_the_stores_write_their_own_header():
    store = ImageStore.in_memory(size=8)
    assert {k: store.attrs[k] for k in ("format", "format_version")} == IMAGE_STORE.attrs()
    assert HEATMAP_STORE.name == "daug-heatmap-store" != IMAGE_STORE.name
