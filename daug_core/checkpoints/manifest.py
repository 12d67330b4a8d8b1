"""The file manifest of a checkpoint (``SHA256SUMS.json``): every file's sha256, written last
when a checkpoint is saved and checked before one is used (or a cached copy is trusted).

Torch-free, so the node-local checkpoint cache (:mod:`storage.store.checkpoint_cache`) and the
CLI's checks can verify a checkpoint without importing the models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from daug_core import strict_json
from daug_core.checkpoints.names import MANIFEST
from daug_core.settings import CheckpointError


def file_sha256(path: Path) -> str:
    """The sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the sha256 of every file below ``directory`` in its ``SHA256SUMS.json``."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    sums = {p.relative_to(directory).as_posix(): file_sha256(p) for p in files}
    text = strict_json.dumps({"sha256": sums}, indent=2, sort_keys=True)
    (directory / MANIFEST).write_text(text + "\n")


def verify_checkpoint_files(directory: str | os.PathLike[str]) -> bool:
    """Check every file of a checkpoint directory against the sha256 recorded when it was
    written (``SHA256SUMS.json``): a changed, replaced (a pickle named like the weights) or
    missing file is a :class:`CheckpointError` before anything is loaded. True when checked;
    False for a checkpoint written before manifests existed (nothing to check against)."""
    root = Path(directory)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return False
    try:
        sums: dict[str, str] = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(root, f"{MANIFEST} is damaged: {exc}") from None
    for name, recorded in sums.items():
        path = root / name
        if not path.is_file():
            raise CheckpointError(root, f"{name} is missing (listed in {MANIFEST})")
        if file_sha256(path) != recorded:
            raise CheckpointError(
                root, f"{name} differs from the file written with the checkpoint (sha256)"
            )
    return True
