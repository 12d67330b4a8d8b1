"""Every file of a checkpoint gets the mode a normal file gets under the process umask: the
weights (safetensors writes them 0600 on its own), the trainer state and the headers alike, so
others on a shared cluster can read a checkpoint they can list."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from daug_core.checkpoints.layout import save_pretrained, trainer_state_writer


def _save(directory: Path) -> Path:
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    writer = trainer_state_writer(
        optimizer=optimizer, generator=torch.Generator(), step=1, extra={}
    )
    return save_pretrained(
        directory,
        kind="classifier",
        header={"config": {}},
        weights={k: v.detach() for k, v in layer.state_dict().items()},
        write=writer,
    )


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_every_checkpoint_file_has_the_mode_of_a_normal_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = _save(tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*") if p.is_file()}
    assert {"model.safetensors", "trainer_state.safetensors", "model.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
