"""What names a heatmap version (the folder ``STORE/heatmaps/VERSION``): the default name and the
rule a name follows. Free of Zarr, so the CLI imports it at startup."""

from __future__ import annotations

import re

DEFAULT_VERSION = "v1"
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_version_name(version: str) -> None:
    """A heatmap version names a folder: letters, digits, '_', '.', '-' (no '..', no '/')."""
    if not _VERSION_NAME.match(version):
        raise ValueError(f"heatmap version {version!r}: use letters, digits, '_', '.', '-'")
