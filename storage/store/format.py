"""The format header every Zarr group this project writes carries (``format`` and
``format_version`` attributes), and the one check of it when a group is opened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage.errors import StoreFormatError


@dataclass(frozen=True)
class GroupFormat:
    """A group kind (``daug-image-store``) and the format version this code reads and writes."""

    name: str
    version: int

    def attrs(self) -> dict[str, Any]:
        """The attributes to write when the group is created."""
        return {"format": self.name, "format_version": self.version}

    def check(self, attrs: Mapping[str, Any], where: str) -> None:
        """Raise :class:`StoreFormatError` naming ``where`` unless ``attrs`` are this format's,
        at this version."""
        if attrs.get("format") != self.name:
            raise StoreFormatError(f"{where} is not a {self.name} (format {attrs.get('format')!r})")
        if attrs.get("format_version") != self.version:
            raise StoreFormatError(
                f"{where}: format version {attrs.get('format_version')}, "
                f"this code reads {self.version}"
            )
