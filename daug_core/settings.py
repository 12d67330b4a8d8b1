"""Settings tools every settings class uses: the error type, a field with its help text, range
and choice checks, and rebuilding a frozen dataclass from its JSON form.

A settings class is a frozen, keyword-only dataclass that checks its own ranges in
``__post_init__``, once, where its type is defined; a ``Literal``-typed field is checked by
:func:`check_choices`; the CLI builds its options from :func:`described` fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import field
from typing import Any, Literal

UNION_TYPES = (typing.Union, types.UnionType)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds something else than expected (here,
    torch-free, so the CLI can name it without importing the models)."""

    def __init__(self, path: os.PathLike[str] | str, reason: str) -> None:
        super().__init__(f"checkpoint {path}: {reason}")
        self.path = path
        self.reason = reason


def described(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field default with its help text (the CLI builds its options from it);
    ``metadata`` may add ``option`` (the CLI spelling, e.g. ``"target"`` for ``targets``)."""
    if isinstance(default, list | dict | set):
        raise TypeError("use an immutable default (tuple, frozenset)")
    return field(default=default, metadata={"help": help, **metadata})


def check_finite(owner: str, name: str, value: float, low: float, high: float = math.inf) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` and ``value`` is a number
    (NaN fails every comparison, so it is refused here too)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{owner}.{name} must be a finite number {bounds}, got {value!r}")


_CHOICE_FIELDS: dict[type, tuple[tuple[str, tuple[Any, ...]], ...]] = {}


def _choice_fields(cls: type) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """(name, allowed values) of each field of dataclass ``cls`` typed ``Literal[...]`` (or
    ``Literal[...] | None``, None then allowed too); computed once per class."""
    if cls in _CHOICE_FIELDS:
        return _CHOICE_FIELDS[cls]
    hints = typing.get_type_hints(cls)
    fields = []
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        members = typing.get_args(hint) if typing.get_origin(hint) in UNION_TYPES else (hint,)
        literals = [m for m in members if typing.get_origin(m) is Literal]
        if literals:
            nullable = (None,) if type(None) in members else ()
            fields.append((item.name, (*typing.get_args(literals[0]), *nullable)))
    _CHOICE_FIELDS[cls] = tuple(fields)
    return _CHOICE_FIELDS[cls]


def check_choices(settings: object) -> None:
    """Raise :class:`ConfigError` naming the field and its choices when a ``Literal``-typed
    field of the dataclass ``settings`` holds anything else (a typo in a YAML file or a
    Prefect parameter is caught where it is read, not deep in a run)."""
    for name, choices in _choice_fields(type(settings)):
        value = getattr(settings, name)
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices if c is not None)
            raise ConfigError(
                f"{type(settings).__name__}.{name} must be one of {shown}, got {value!r}"
            )


def dataclass_from_dict(cls: type, data: Any) -> Any:
    """A frozen config dataclass from ``dataclasses.asdict`` output: nested (also optional)
    dataclasses rebuilt, JSON lists back to tuples; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {key: _coerce(hints[key], value) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return dataclass_from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin in UNION_TYPES:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return _coerce(members[0], value)
        return tuple(value) if isinstance(value, list | tuple) else value
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value
