"""CLI options generated from the settings dataclasses, and the shared plain options.

A command declares a settings parameter by its type (``heatmaps: HeatmapSettings``);
:func:`settings_command` replaces it, for typer, by one option per field of the dataclass
(nested dataclasses flattened): the field's type becomes the option's type (a ``Literal`` or an
enum a choice, a tuple a repeatable option, a bool a ``--x/--no-x`` flag), its ``described``
help the help text, its default the shown default. Every generated option defaults to "not
given", so the dataclass's own default applies; the object is built (and validated, once, by its
``__post_init__``) before the command body runs. The command body receives the whole object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

from daug_core.settings import ConfigError, PresetParts, replace_nested

# ---- plain options shared by several commands (one spelling per concept) --------------------
StoreOption = Annotated[
    str, typer.Option("--store", help="image store: a folder or a URL (s3://bucket/store)")
]
CheckpointsOption = Annotated[
    str, typer.Option("--checkpoints", help="train-generator output: generator/ and classifier/")
]
SplitsOption = Annotated[
    list[str] | None, typer.Option("--split", help="only items of this split (repeat)")
]
HeatmapVersionOption = Annotated[
    str, typer.Option("--heatmap-version", help="heatmap version (STORE/heatmaps/VERSION)")
]
TorchThreadsOption = Annotated[
    int, typer.Option("--torch-threads", help="torch threads of this process (0: torch's)")
]


@dataclass(frozen=True)
class Group:
    """How a settings parameter appears on the command line: an option prefix (``sweep`` gives
    ``--sweep-items``; a bool field ``enabled`` gives ``--sweep/--no-sweep``) and, optionally,
    only some of its fields (the others keep their defaults)."""

    prefix: str = ""
    only: tuple[str, ...] | None = None
    panel: str | None = None  # the help section of its options (default: "<Class> settings")


@dataclass(frozen=True)
class SettingOption:
    path: tuple[str, ...]  # field names from the settings object down to the leaf
    name: str  # the command function's parameter name for it
    parameter: inspect.Parameter
    spellings: tuple[str, ...]  # "--scale", or "--sweep", "--no-sweep"
    from_preset: bool = False  # a field of a preset part: its default is the preset's
    default: Any = None  # the default the settings object gives this field


def is_settings(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _optional(hint: Any) -> Any:
    """``hint`` as a type that also admits None (typer reads None as "not given")."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    ):
        return hint
    return hint | None


def _cli_type(hint: Any) -> Any:
    """Tuples become lists (a repeatable option); everything else is what typer reads."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    inner = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]
        return list[item]  # type: ignore[valid-type]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _shown(default: Any) -> str | bool:
    if default is None or default == ():
        return False
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return " ".join(str(v) for v in default)
    return str(default)


def _leaf_options(
    cls: type,
    group: Group,
    path: tuple[str, ...] = (),
    panel: str | None = None,
    from_preset: bool = False,
    holder: Any = None,
) -> Iterator[SettingOption]:
    """The options of ``cls``'s leaf fields; ``holder`` is the default object of a nested
    settings field (its values are the defaults shown, not the nested class's own)."""
    hints = typing.get_type_hints(cls)
    panel = panel or group.panel or f"{cls.__name__} settings"
    parts = cls.preset_parts() if not path and issubclass(cls, PresetParts) else {}
    for field in dataclasses.fields(typing.cast(Any, cls)):
        if group.only is not None and not path and field.name not in group.only:
            continue
        hint = hints[field.name]
        if is_settings(hint):
            under = from_preset or field.name in parts
            nested = field.default if dataclasses.is_dataclass(field.default) else None
            yield from _leaf_options(hint, group, (*path, field.name), panel, under, nested)
            continue
        spelled = str(field.metadata.get("option", field.name)).replace("_", "-")
        prefix = group.prefix.replace("_", "-")
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else None
        )
        if holder is not None:
            default = getattr(holder, field.name)
        base = _cli_type(hint)
        if base is bool:
            flag = (
                prefix
                if (prefix and field.name == "enabled")
                else "-".join(p for p in (prefix, spelled) if p)
            )
            decls = [f"--{flag}/--no-{flag}"]
            shown: str | bool = f"--{flag}" if default else f"--no-{flag}"
        else:
            decls = ["--" + "-".join(p for p in (prefix, spelled) if p)]
            shown = _shown(default)
        if from_preset:
            shown = "the preset's"
        name = "_".join(p for p in (group.prefix, *path, field.name) if p)
        option = typer.Option(
            *decls,
            help=field.metadata.get("help", ""),
            show_default=shown,
            rich_help_panel=panel,
        )
        annotation = Annotated[_optional(base), option]  # type: ignore[valid-type]
        parameter = inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
        )
        spellings = tuple(part for decl in decls for part in decl.split("/"))
        yield SettingOption((*path, field.name), name, parameter, spellings, from_preset, default)


def _build(cls: type, options: list[SettingOption], values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from the given option values (fields not given: defaults; for
    :class:`~daug_core.settings.PresetParts` settings, the preset's)."""
    given = _given(cls, options, values)
    if issubclass(cls, PresetParts):
        return cls.build(**given)
    return _construct(cls, given)


def _construct(cls: type, given: dict[str, Any]) -> Any:
    """``cls`` from its nested JSON form: a nested settings field given in part is its default
    object (or the nested class's defaults) with those fields replaced."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(typing.cast(Any, cls))}
    kwargs = dict(given)
    for name, value in given.items():
        if isinstance(value, dict):
            default = defaults[name]
            kwargs[name] = (
                replace_nested(default, value, f"{cls.__name__}.{name}")
                if dataclasses.is_dataclass(default)
                else _construct(hints[name], value)
            )
    return cls(**kwargs)


def _given(
    cls: type, options: list[SettingOption], values: dict[str, Any], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The options given, as the settings' nested JSON form (only what the user changed)."""
    given: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        here = (*path, field.name)
        hint = typing.get_type_hints(cls)[field.name]
        if is_settings(hint):
            nested = _given(hint, options, values, here)
            if nested:
                given[field.name] = nested
            continue
        for option in options:
            if option.path == here and values.get(option.name) is not None:
                value = values[option.name]
                given[field.name] = tuple(value) if isinstance(value, list) else value
    return given


def _group_of(annotation: Any) -> tuple[type, Group] | None:
    """(settings class, group) when ``annotation`` is a settings class, bare or annotated."""
    if typing.get_origin(annotation) is Annotated:
        cls, *extras = typing.get_args(annotation)
        groups = [e for e in extras if isinstance(e, Group)]
        if is_settings(cls):
            return cls, groups[0] if groups else Group()
        return None
    return (annotation, Group()) if is_settings(annotation) else None


def option_spellings(name: str, annotation: Any) -> list[str]:
    """The option strings typer gives a plain parameter (its declared ones, else --name)."""
    extras = typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()
    infos = [e for e in extras if isinstance(e, typer.models.OptionInfo)]
    # In Annotated, typer reads Option's first positional argument (kept as its default) as
    # the first option name.
    decls = [
        d
        for info in infos
        for d in (info.default, *(info.param_decls or ()))
        if isinstance(d, str) and d.startswith("-")
    ]
    if infos and not decls:
        decls = ["--" + name.replace("_", "-")]
    return [s for d in decls for s in d.split("/") if s.startswith("-")]


def settings_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Expand ``func``'s settings parameters into options (see the module docstring). The
    original function stays reachable as ``__wrapped__`` (with its settings parameters)."""
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[SettingOption]]] = {}
    seen: dict[str, str] = {}
    for parameter in signature.parameters.values():
        found = _group_of(hints.get(parameter.name, parameter.annotation))
        if found is None:
            params.append(parameter.replace(annotation=hints.get(parameter.name)))
            for spelled in option_spellings(parameter.name, hints.get(parameter.name)):
                seen[spelled] = parameter.name
            continue
        cls, group = found
        options = list(_leaf_options(cls, group))
        for option in options:
            for spelled in option.spellings:
                if spelled in seen:
                    raise TypeError(
                        f"{func.__name__}: option {spelled} of {parameter.name} is also "
                        f"{seen[spelled]}'s; give the settings a Group(prefix=...) or "
                        "leave the field out (Group(only=...))"
                    )
                seen[spelled] = parameter.name
        groups[parameter.name] = (cls, options)
        params.extend(o.parameter for o in options)

    @functools.wraps(func)
    def command(**values: Any) -> Any:
        call: dict[str, Any] = {}
        for name, (cls, options) in groups.items():
            try:
                call[name] = _build(cls, options, values)
            except ConfigError as exc:
                raise typer.BadParameter(str(exc), param_hint=f"{name} settings") from None
            for option in options:
                values.pop(option.name, None)
        return func(**values, **call)

    # Typer passes everything by keyword; keyword-only parameters have no order constraints.
    ordered = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    command.__signature__ = signature.replace(parameters=ordered)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in ordered}
    command.__settings__ = {name: cls for name, (cls, _) in groups.items()}  # type: ignore[attr-defined]
    command.__settings_options__ = groups  # type: ignore[attr-defined]
    return command
