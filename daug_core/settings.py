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
from collections.abc import Callable, Mapping
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


class PresetParts:
    """Settings made of a named ``preset`` and whole config objects: the one way "a preset plus
    what the user changed" becomes settings (the CLI, a deployment's parameters and Python
    callers all go through :meth:`build`).

    A subclass is a frozen dataclass with a ``preset`` field and, per entry of
    :meth:`preset_parts`, a field typed ``Config | None``: None is the preset's whole object
    (filled in ``__post_init__`` by :meth:`fill_parts`), an object is used whole. Partial
    changes are applied once, where the settings are built, with ``dataclasses.replace``;
    the resolved settings then travel whole.
    """

    @classmethod
    def preset_parts(cls) -> dict[str, Callable[[str], Any]]:
        """Each part's field name -> the preset's object for a preset name."""
        raise NotImplementedError

    def fill_parts(self) -> None:
        """Call from ``__post_init__``: every part left None becomes the preset's."""
        for name, part in self.preset_parts().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, part(getattr(self, "preset")))  # noqa: B009

    @classmethod
    def _preset_name(cls, values: Mapping[str, Any]) -> str:
        default = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return str(values.get("preset", default["preset"]))

    @classmethod
    def build(cls, **values: Any) -> Any:
        """The settings from a preset and what changed: a part given as a mapping (``translation
        ={"scale": 30}``, nested mappings for nested configs) is the preset's object with those
        fields replaced; a part given as an object is used whole."""
        preset = cls._preset_name(values)
        kwargs = dict(values)
        for name, part in cls.preset_parts().items():
            given = values.get(name)
            if isinstance(given, Mapping):
                kwargs[name] = replace_nested(part(preset), given, f"{cls.__name__}.{name}")
        return cls(**kwargs)

    def changed(self, **parts: Mapping[str, Any]) -> Any:
        """These settings with some fields of their parts changed (``settings.changed(
        translation={"scale": 0.0})``), checked like a new build."""
        changes = {
            name: replace_nested(getattr(self, name), given, f"{type(self).__name__}.{name}")
            for name, given in parts.items()
        }
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def complete(cls, data: Any) -> Any:
        """The JSON form (a deployment's parameters) with each partial part completed from the
        preset, before validation: a parameter file names only what it changes. A key that is
        no field is refused here (a validator would drop it silently)."""
        if not isinstance(data, Mapping):
            return data
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            parts = ", ".join(cls.preset_parts())
            raise ConfigError(
                f"{cls.__name__}: unknown keys {unknown} (fields: {sorted(names)}; "
                f"the preset's parts {parts} take their own fields as a mapping)"
            )
        preset = cls._preset_name(data)
        out = dict(data)
        for name, part in cls.preset_parts().items():
            if isinstance(data.get(name), Mapping):
                out[name] = _merged(dataclasses.asdict(part(preset)), data[name])
        return out

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # Prefect validates flow parameters with pydantic: complete partial parts first.
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(cls.complete, handler(source))


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is None and base.get(key) is not None:
            raise ConfigError(f"{key}: null given; leave it out to keep the preset's")
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _merged(base[key], value)
        else:
            out[key] = value
    return out


def replace_nested(config: Any, changes: Mapping[str, Any], owner: str) -> Any:
    """``config`` (a frozen dataclass) with ``changes`` applied by ``dataclasses.replace``,
    nested mappings into nested configs; an unknown name is a :class:`ConfigError`."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"{owner}: unknown fields {unknown}")
    direct = {}
    for key, value in changes.items():
        current = getattr(config, key)
        if value is None and current is not None:
            # None is not "the preset's" here: leave the field out to keep the preset's value.
            raise ConfigError(f"{owner}.{key}: None given; leave it out to keep the preset's")
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            direct[key] = replace_nested(current, value, f"{owner}.{key}")
        else:
            direct[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(config, **direct)
