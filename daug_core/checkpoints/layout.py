"""The one checkpoint layout (see :mod:`daug_core.checkpoints`): the header, the weights, the
file manifest and the trainer state, written into a hidden sibling directory and swapped into
place; the first layouts read as the same header.

:func:`save_pretrained` and :func:`load_pretrained` are the pair every model's checkpoint goes
through; :func:`checkpoint_sha256` names the weights in provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors.torch import load_file, save_file

from daug_core import strict_json
from daug_core.checkpoints.manifest import verify_checkpoint_files, write_manifest
from daug_core.checkpoints.names import (
    MODEL_JSON,
    MODEL_WEIGHTS,
    TRAINER_STATE,
    UNET_DIR,
)
from daug_core.settings import CheckpointError

# 1: one header file per model kind (classifier.json, encoder.json, eps.json, clip.json, the
# generator's config in trainer_state.json); 2: model.json for every kind.
FORMAT_VERSION = 2

Kind = Literal[
    "generator",
    "guided_diffusion_generator",
    "classifier",
    "guided_diffusion_classifier",
    "clip",
    "student",
]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint directory's header, read and checked: its ``kind``, its ``header`` (the
    model's ``config`` and what the kind adds) and the file holding flat weights."""

    directory: Path
    kind: str
    header: dict[str, Any]
    weights_file: str = MODEL_WEIGHTS

    @property
    def weights(self) -> Path:
        path = self.directory / self.weights_file
        if not path.is_file():
            raise CheckpointError(self.directory, f"missing {self.weights_file}")
        return path


# --- provenance ------------------------------------------------------------------------------


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over the model weights under ``path`` (a file, or a directory tree).

    For a directory: every ``*.safetensors`` file except the trainer state, in sorted relative
    path order, each contributing its relative POSIX path, a NUL byte, its size and its bytes.
    JSON headers, timestamps and optimizer state do not change the hash; any weight does.
    """
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            (p for p in root.rglob("*.safetensors") if p.name != f"{TRAINER_STATE}.safetensors"),
            key=lambda p: p.relative_to(root).as_posix(),
        )
    else:
        raise CheckpointError(root, "does not exist")
    if not files:
        raise CheckpointError(root, "holds no *.safetensors weight file")
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + file.stat().st_size.to_bytes(8, "little"))
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --- atomic directory writes, JSON ----------------------------------------------------------


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Write into a hidden sibling directory, then swap it into place (never a half
    checkpoint); the manifest is written last, over every file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        _give_normal_modes(tmp)
        write_manifest(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{tag}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _give_normal_modes(directory: Path) -> None:
    """Every file below ``directory`` gets the mode ``open()`` gives a new file under the
    process umask (0644 under umask 022), every folder the mode ``directory`` got from
    ``mkdir()``: safetensors writes its files 0600, which would leave the weights unreadable to
    the others on a shared cluster who can read the rest of the checkpoint. The umask is read
    from a probe file because ``os.umask`` can only be read by changing it, which races the
    other threads of this process."""
    probe = directory / f".mode-probe-{uuid.uuid4().hex[:8]}"
    probe.touch()
    try:
        file_mode = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
    folder_mode = stat.S_IMODE(directory.stat().st_mode)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(folder_mode if path.is_dir() else file_mode)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(strict_json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(path.parent, f"missing {path.name}")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def flat_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as safetensors stores it: contiguous CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# --- the pair every checkpoint goes through --------------------------------------------------


def save_pretrained(
    directory: str | os.PathLike[str],
    *,
    kind: Kind,
    header: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
    write: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint atomically: ``model.json`` (``header`` with the format version and
    ``kind``), ``weights`` as ``model.safetensors`` and whatever ``write`` puts into the new
    directory (a diffusers UNet, the trainer state), then the manifest; returns the path."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    target = Path(directory)
    with atomic_directory(target) as tmp:
        write_json(tmp / MODEL_JSON, {**header, "format_version": FORMAT_VERSION, "kind": kind})
        if weights is not None:
            save_file(weights, str(tmp / MODEL_WEIGHTS), metadata={"format": "pt"})
        if write is not None:
            write(tmp)
    return target


def load_pretrained(directory: str | os.PathLike[str], kinds: tuple[str, ...]) -> Pretrained:
    """The header of the checkpoint at ``directory``, its files checked against the manifest
    first; a checkpoint of another kind than ``kinds`` is a :class:`CheckpointError` that
    names both."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(root, "does not exist")
    verify_checkpoint_files(root)
    found = _header(root)
    if found.kind not in kinds:
        raise CheckpointError(root, f"holds a {found.kind} checkpoint, not {' or '.join(kinds)}")
    return found


def _header(root: Path) -> Pretrained:
    if (root / MODEL_JSON).is_file():
        header = read_json(root / MODEL_JSON)
        version = header.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise CheckpointError(
                root, f"{MODEL_JSON} has format_version {version}; this code reads 1 and 2"
            )
        kind = str(header.pop("kind", ""))
        if kind not in KINDS:
            raise CheckpointError(root, f"{MODEL_JSON} names an unknown kind {kind!r}")
        return Pretrained(root, kind, header)
    return _first_layout(root)


def _first_layout(root: Path) -> Pretrained:
    """The checkpoints written before ``model.json`` (format 1), as the same header."""
    if (root / "classifier.json").is_file():
        meta = read_json(root / "classifier.json")
        header = {"config": meta["classifier"], "pos_weight": meta["pos_weight"]}
        return Pretrained(root, "classifier", header, "classifier.safetensors")
    if (root / "encoder.json").is_file():
        meta = read_json(root / "encoder.json")
        header = {"config": meta["guided_diffusion"], "sources": meta.get("sources", {})}
        return Pretrained(root, "guided_diffusion_classifier", header, "encoder.safetensors")
    if (root / "eps.json").is_file():
        meta = read_json(root / "eps.json")
        header = {
            "config": meta["guided_diffusion"],
            "class_label": meta["class_label"],
            "eps_channels": meta["eps_channels"],
            "sources": meta.get("sources", {}),
        }
        return Pretrained(root, "guided_diffusion_generator", header)
    if (root / "clip.json").is_file():
        meta = read_json(root / "clip.json")
        if meta.get("format_version") != 1:
            raise CheckpointError(root, f"clip.json format_version {meta.get('format_version')}")
        header = {k: meta[k] for k in ("config", "heatmap_targets")} | {"info": meta.get("info")}
        return Pretrained(root, "clip", header)
    state = root / f"{TRAINER_STATE}.json"
    if (root / UNET_DIR).is_dir() and state.is_file():
        return Pretrained(root, "generator", {"config": read_json(state)["config"]})
    raise CheckpointError(root, f"holds no {MODEL_JSON} (and no checkpoint of the first layout)")


# --- trainer state (optimizer + RNG + step), shared by every model ----------------------------


def trainer_state_writer(
    *,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    step: int,
    extra: dict[str, Any],
) -> Callable[[Path], None]:
    """What :func:`save_pretrained` calls to write the trainer state beside the weights."""

    def write(directory: Path) -> None:
        opt = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {"generator_state": generator.get_state().contiguous()}
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in opt["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        save_file(tensors, str(directory / f"{TRAINER_STATE}.safetensors"))
        write_json(
            directory / f"{TRAINER_STATE}.json",
            {
                "format_version": FORMAT_VERSION,
                "step": step,
                "generator_device": generator.device.type,
                "optimizer_param_groups": opt["param_groups"],
                "optimizer_scalars": scalars,
                **extra,
            },
        )

    return write


def trainer_step(directory: str | os.PathLike[str]) -> int | None:
    """The step a checkpoint can resume from; None where there is no trainer state."""
    state = Path(directory) / f"{TRAINER_STATE}.json"
    return int(read_json(state)["step"]) if state.is_file() else None


def load_trainer_state(
    directory: Path, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[dict[str, Any], torch.Generator]:
    """Restore ``optimizer`` from the trainer state; returns its JSON and the saved RNG."""
    meta = read_json(directory / f"{TRAINER_STATE}.json")
    tensor_path = directory / f"{TRAINER_STATE}.safetensors"
    if not tensor_path.is_file():
        raise CheckpointError(directory, f"missing {tensor_path.name}")
    tensors = load_file(str(tensor_path))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["optimizer_param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    saved_on = meta["generator_device"]
    if saved_on == "cpu":
        generator = torch.Generator(device="cpu")
    elif saved_on == device.type:
        generator = torch.Generator(device=device)
    else:
        raise CheckpointError(directory, f"RNG state was saved on {saved_on}; load on {saved_on}")
    generator.set_state(tensors["generator_state"])
    return meta, generator


def resolve_device(device: str | torch.device) -> torch.device:
    """``cuda`` as the current CUDA device (an RNG state is per device)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d
