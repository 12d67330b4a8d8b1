"""Weights written elsewhere (guided-diffusion's ``.pt`` files, a ``.safetensors`` file, Hugging
Face CLIP's ``model.safetensors``), read once and checked the same way for every converter.

:func:`convert_foreign_weights` is the one path: :func:`read_foreign_weights` reads the file
(``torch.load(weights_only=True)`` for ``.pt``: nothing in it is executed) and refuses an empty,
truncated or unreadable file and a tensor holding NaN or inf; the converter then maps the names,
and :func:`check_fits` compares the result with the model's own state dict (missing and
unexpected tensors, shapes). Every fault is a :class:`~daug_core.settings.CheckpointError`
naming the file, the fault and the tensor, so the command line prints it as one line; before,
NaN weights converted without a word (and every heatmap then failed), a truncated file or a
wrong shape was a long traceback and a 0-byte ``.pt`` only ``Aborted.`` (torch's EOFError,
which the command-line library takes for Ctrl-D).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from daug_core.settings import CheckpointError, ConfigError

T = TypeVar("T")
SUFFIXES = (".pt", ".pth", ".safetensors")


class WeightsMismatchError(ConfigError):
    """Converted weights that do not fit the model (raised where the file is not known;
    :func:`convert_foreign_weights` names it)."""


def convert_foreign_weights(
    path: str | os.PathLike[str],
    convert: Callable[[dict[str, torch.Tensor]], T],
    *,
    key: str | None = None,
) -> T:
    """``convert`` applied to the state dict in ``path`` (:func:`read_foreign_weights`); a
    state dict that does not convert (a converter's :class:`~daug_core.settings.ConfigError`:
    names that do not map, shapes that do not fit, :func:`check_fits`) is a
    :class:`CheckpointError` naming ``path``."""
    source = Path(path)
    state = read_foreign_weights(source, key=key)
    try:
        return convert(state)
    except ConfigError as exc:
        raise CheckpointError(source, " ".join(str(exc).split())) from None


def read_foreign_weights(
    path: str | os.PathLike[str], *, key: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.pt``/``.pth`` or ``.safetensors``); a ``.pt`` holding a
    dict with ``key`` (e.g. the official training script's ``"state_dict"``) gives that entry.
    Not a file, empty, truncated or unreadable (a pickle that needs more than tensors and plain
    containers is refused, not run), not a dict of tensors, a tensor with NaN or inf: a
    :class:`CheckpointError` naming ``path`` and the fault."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(source, "is not a file")
    if source.suffix not in SUFFIXES:
        raise CheckpointError(source, f"expected a {', '.join(SUFFIXES)} file")
    if source.stat().st_size == 0:
        raise CheckpointError(source, "is empty (0 bytes)")
    try:
        if source.suffix == ".safetensors":
            state: object = load_file(str(source))
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
    # EOFError: a pickle cut short; SafetensorError: a header or data cut short.
    except (
        pickle.UnpicklingError,
        EOFError,
        SafetensorError,
        RuntimeError,
        OSError,
        ValueError,
    ) as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(source, f"truncated or unreadable ({detail})") from None
    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(source, f"holds a {type(state).__name__}, not a state dict")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                source, f"entry {name!r} is a {type(tensor).__name__}, not a tensor"
            )
        _require_finite(source, str(name), tensor)
    return state


def _require_finite(source: Path, name: str, tensor: torch.Tensor) -> None:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise CheckpointError(
            source,
            f"tensor {name!r} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) "
            f"of {tensor.numel()}",
        )


def check_fits(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """``state`` (converted weights) against the model's state dict ``expected``: every tensor
    present, none unknown, each of the model's shape; a :class:`WeightsMismatchError` names
    the first that is not (and both shapes)."""
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsMismatchError(
            f"lacks {len(missing)} tensor(s) the model has, e.g. {missing[:3]}: do the model "
            "settings match the file?"
        )
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise WeightsMismatchError(
            f"{len(unknown)} tensor(s) the model does not have, e.g. {unknown[:3]}: do the "
            "model settings match the file?"
        )
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape:
            raise WeightsMismatchError(
                f"tensor {name!r} has shape {tuple(got.shape)}, the model expects "
                f"{tuple(want.shape)}: do the model settings match the file?"
            )


def load_fitting(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``module`` (strict) after :func:`check_fits`, so a mismatch is a
    one-line :class:`WeightsMismatchError`, not torch's list of every difference."""
    check_fits(state, module.state_dict())
    module.load_state_dict(state, strict=True)
