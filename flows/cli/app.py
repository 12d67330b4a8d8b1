"""The ``daug`` typer application, its global options, and how a command runs its flow."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
import typer.rich_utils
from rich.text import Text

from daug_core import strict_json
from flows.cli.console import log_handler, run_flow
from flows.cli.options import settings_command


def _folding(highlighter: Any) -> Any:
    """``highlighter`` whose text folds onto the next line where typer's help table is too
    narrow for it, instead of ending in an ellipsis (``--inversion-refi…`` at 80 columns)."""

    class Folding(type(highlighter)):  # type: ignore[misc]
        def __call__(self, text: str | Text) -> Text:
            highlighted: Text = super().__call__(text)
            highlighted.overflow = "fold"
            return highlighted

    return Folding()


typer.rich_utils.highlighter = _folding(typer.rich_utils.highlighter)
typer.rich_utils.negative_highlighter = _folding(typer.rich_utils.negative_highlighter)

app = typer.Typer(
    help="DAug on chest X-rays: synthesise or ingest MIMIC-CXR, train, precompute heatmaps.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="debug logging (per-epoch records in full)")
    ] = False,
) -> None:
    from flows.runtime.notices import VERBOSE_ENV, quiet_notices

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[log_handler(verbose)],
    )
    # Prefect's client logs every HTTP request, and each task run its final state, at INFO.
    for noisy in ("httpx", "httpcore", "prefect.task_runs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library notices (open_clip's model-name parsing, diffusers' dtype, ...) go unless -v;
    # the Ray actors this command starts inherit the choice through the environment.
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet_notices()


def load_flow(entrypoint: str) -> Callable[..., dict[str, Any]]:
    """The flow at ``module:function`` (imported on use: Prefect and the models load only
    when a command runs, so ``daug --help`` stays fast)."""
    module, name = entrypoint.split(":")
    flow: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    return flow


def command(
    panel: str,
    name: str | None = None,
    flow: str | None = None,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command under ``panel`` of ``daug --help``, its settings parameters expanded
    into options (:func:`~flows.cli.options.settings_command`).

    With ``flow`` (``module:function``, as in deployment.yaml) the command is that flow's CLI:
    its body checks the input (and may return parameters to replace), then the flow runs with
    the command's parameters of the same names (a test holds them to the flow's: same names,
    same types) and ``show`` prints the result."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def body(**params: Any) -> None:
            params |= func(**params) or {}
            if flow is None:
                return
            flow_fn = load_flow(flow)
            wanted = inspect.signature(flow_fn).parameters
            result = run_flow(flow_fn, **{k: v for k, v in params.items() if k in wanted})
            (show or print_json)(result)

        expanded = settings_command(body)
        expanded.__flow__ = flow  # type: ignore[attr-defined]
        app.command(name, rich_help_panel=panel)(expanded)
        return expanded

    return register


def print_json(result: dict[str, Any]) -> None:
    """A command's result as strict JSON (undefined numbers ``null``) on stdout, where a
    program reads it (``daug ingest ... > summary.json``); logs and progress go to stderr."""
    sys.stdout.write(strict_json.dumps(result, indent=2, default=str) + "\n")
