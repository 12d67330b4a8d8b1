"""The shape every config and settings class keeps: frozen, keyword-only, never built by position.

A dataclass built positionally silently takes the wrong values when a field is inserted or the
fields are reordered (a reprocess bug once did exactly that); keyword-only fields make such a
call a TypeError, and this scan finds any left in the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daug_core", "storage", "flows")
# The classes whose values are settings: what a user or a preset chooses, or what a heatmap
# version was computed with.
SUFFIXES = ("Config", "Settings", "Provenance")


def _sources(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def _dataclass_options(node: ast.ClassDef) -> dict[str, bool] | None:
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        func = call.func if call else decorator
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name == "dataclass":
            keywords = call.keywords if call else []
            return {
                k.arg: bool(getattr(k.value, "value", False)) for k in keywords if k.arg is not None
            }
    return None


def _dataclasses() -> dict[str, tuple[Path, dict[str, bool]]]:
    found: dict[str, tuple[Path, dict[str, bool]]] = {}
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                options = _dataclass_options(node)
                if options is not None:
                    found[node.name] = (path, options)
    return found


def settings_classes() -> dict[str, tuple[Path, dict[str, bool]]]:
    return {name: v for name, v in _dataclasses().items() if name.endswith(SUFFIXES)}


def test_the_scan_sees_the_settings_classes():
    names = set(settings_classes())
    assert {
        "HeatmapSettings",
        "TranslationConfig",
        "DiffusionConfig",
        "ClipTrainSettings",
        "IngestConfig",
        "ReaderConfig",
        "PoolSettings",
        "SweepSettings",
        "DemoSettings",
        "HeatmapProvenance",
        "SynthConfig",
        "ReleaseChangeConfig",
    } <= names


@pytest.mark.parametrize("name", sorted(settings_classes()))
def test_every_settings_class_is_frozen_and_keyword_only(name):
    path, options = settings_classes()[name]
    assert options.get("frozen") and options.get("kw_only"), f"{name} in {path.name}"


def test_no_settings_class_is_constructed_positionally():
    """Nor any other keyword-only dataclass (WorkerSpec, ...)."""
    keyword_only = {n for n, (_, options) in _dataclasses().items() if options.get("kw_only")}
    names = set(settings_classes()) | keyword_only
    offenders = []
    for path in _sources(*PACKAGES, "tests", "benchmarks"):
        if path == Path(__file__):  # the positional call below is meant to fail
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called in names:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {called}")
    assert not offenders, "\n".join(offenders)


def test_a_positional_call_is_a_type_error():
    from daug_core.diffusion.config import TranslationConfig

    with pytest.raises(TypeError):
        TranslationConfig(300, 10)  # type: ignore[misc]
