"""The node-local checkpoint cache: an entry is checked whole against its SHA256SUMS on every
hit, and a damaged one (any file, not only the weights) is fetched again with a warning naming
the entry and the file; a healthy entry is used as it is."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch

from daug_core.checkpoints.layout import (
    checkpoint_sha256,
    save_pretrained,
    verify_checkpoint_files,
)
from daug_core.checkpoints.names import MODEL_JSON
from daug_core.settings import CheckpointError
from storage.store.checkpoint_cache import cached_checkpoint


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A checkpoint uploaded to an in-memory object store: (its URL, its weights' sha256)."""
    local = save_pretrained(
        tmp_path / "classifier",
        kind="classifier",
        header={"config": {"width": 3}},
        weights={"w": torch.arange(6.0).reshape(2, 3)},
    )
    url = f"memory://bucket/{tmp_path.name}/classifier"
    fs = fsspec.filesystem("memory")
    fs.put(str(local), f"/bucket/{tmp_path.name}/classifier", recursive=True)
    yield url, checkpoint_sha256(local)
    fs.rm(f"/bucket/{tmp_path.name}", recursive=True)


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_damaged_non_weight_file_in_the_cache_is_fetched_again(tmp_path, remote, caplog, damage):
    url, sha = remote
    cache = tmp_path / "cache"
    entry = cached_checkpoint(url, sha, checkpoint_sha256, cache=cache)
    assert verify_checkpoint_files(entry)
    written = (entry / MODEL_JSON).read_text()
    if damage == "changed":
        (entry / MODEL_JSON).write_text(written.replace("3", "4"))
    else:
        (entry / MODEL_JSON).unlink()
    with caplog.at_level(logging.WARNING, logger="storage.store.checkpoint_cache"):
        again = cached_checkpoint(url, sha, checkpoint_sha256, cache=cache)
    assert again == entry and verify_checkpoint_files(again)
    assert (again / MODEL_JSON).read_text() == written
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and MODEL_JSON in warnings[0]
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_a_healthy_entry_is_used_without_fetching(tmp_path, remote, caplog):
    url, sha = remote
    cache = tmp_path / "cache"
    entry = cached_checkpoint(url, sha, checkpoint_sha256, cache=cache)
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)
    with caplog.at_level(logging.WARNING, logger="storage.store.checkpoint_cache"):
        assert cached_checkpoint(url, sha, checkpoint_sha256, cache=cache) == entry
    assert not caplog.records


def test_a_damaged_upload_is_refused_and_not_cached(tmp_path, remote):
    url, sha = remote
    fsspec.filesystem("memory").pipe(f"{url.removeprefix('memory://')}/{MODEL_JSON}", b"{}")
    with pytest.raises(CheckpointError, match=rf"{url}: {MODEL_JSON} differs"):
        cached_checkpoint(url, sha, checkpoint_sha256, cache=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "checkpoints" / sha).iterdir())
