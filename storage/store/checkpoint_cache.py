"""Checkpoints from wherever they live (a local folder, ``s3://``, ``gs://``) to a node-local
cache, checked against the sha256 the heatmap provenance records before any model loads them.

A cluster node needs nothing but the package: a worker given ``s3://bucket/ckpt/generator``
and the generator's sha256 copies the folder once into ``<cache>/<sha256>/`` (beside it, then
renamed into place, so a killed copy leaves nothing half-written), hashes it, and loads from
there. A copy whose weights hash differently (a changed upload, a truncated transfer) is
refused with both hashes named and removed; so is one whose files differ from its
``SHA256SUMS.json``. A cache entry is checked whole on every hit (every file against its
manifest, the weights against the provenance's sha256); a damaged one (a file changed or lost
on the node's disk) is fetched again, with a warning naming the entry and the file, instead of
failing every run until someone deletes it. Local checkpoints are only hashed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from daug_core.checkpoints.manifest import verify_checkpoint_files
from daug_core.checkpoints.names import CLIP_HEADERS
from daug_core.settings import CheckpointError
from storage.store.location import Location

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("DAUG_CACHE", Path.home() / ".cache" / "daug"))


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights are not the ones the provenance names."""


def cached_checkpoint(
    where: str | os.PathLike[str] | Location,
    expected_sha256: str,
    sha256_of: Callable[[Path], str],
    cache: Path = DEFAULT_CACHE,
) -> Path:
    """A local folder holding the checkpoint at ``where`` whose weights hash to
    ``expected_sha256`` (``sha256_of`` computes that hash: daug_core's checkpoint_sha256)."""
    source = Location.of(where)
    if source.is_local:
        local = source.local_path()
        found = sha256_of(local)
        if found != expected_sha256:
            raise CheckpointMismatchError(
                f"{local}: weights sha256 {found} differ from {expected_sha256} in the provenance"
            )
        return local
    target = cache / "checkpoints" / expected_sha256 / source.name
    if target.is_dir() and _entry_is_whole(target, expected_sha256, sha256_of):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        fetched = source.get_to(staging / source.name)
        found = sha256_of(fetched)
        if found != expected_sha256:
            raise CheckpointMismatchError(
                f"{source}: weights sha256 {found} differ from {expected_sha256} in the "
                "provenance (changed or truncated upload?)"
            )
        try:
            verify_checkpoint_files(fetched)
        except CheckpointError as exc:  # named by where it came from, not the staging copy
            raise CheckpointError(source.url, exc.reason) from None
        if target.exists():  # a damaged entry, or one another worker on this node just put
            os.replace(target, staging / ".replaced")  # aside; removed with the staging folder
        try:
            fetched.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # another worker on this node put its (equally checked) copy there first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _entry_is_whole(entry: Path, expected_sha256: str, sha256_of: Callable[[Path], str]) -> bool:
    """Whether the cache entry ``entry`` can be used as it is: every file as its manifest
    records it and the weights hashing to ``expected_sha256``; a warning names what is not."""
    try:
        verify_checkpoint_files(entry)
    except CheckpointError as exc:
        log.warning("checkpoint cache entry %s: %s; fetching it again", entry, exc.reason)
        return False
    found = sha256_of(entry)
    if found != expected_sha256:
        log.warning(
            "checkpoint cache entry %s: weights sha256 %s, not %s; fetching it again",
            entry,
            found,
            expected_sha256,
        )
        return False
    return True


def clip_header(where: str | os.PathLike[str] | Location) -> Location | None:
    """The header file of the contrastive checkpoint at ``where`` (``model.json``, or
    ``clip.json`` of the first layout), None when there is none."""
    folder = Location.of(where)
    for name in CLIP_HEADERS:
        if folder.child(name).is_file():
            return folder.child(name)
    return None
