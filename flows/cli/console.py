"""The terminal side of a run: progress bars drawn from the flows' progress records, stage
rules, and running a flow with both."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True)


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


class _ProgressHandler(logging.Handler):
    """Draws the ``daug.progress`` log records of a flow as rich progress bars."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        payload = getattr(record, "daug_progress", None)
        if payload is None:
            return
        done, total, description = payload
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[description], completed=done, total=total)


class _StageHandler(logging.Handler):
    """Draws the ``daug.stage`` log records (the demo's steps) as rules."""

    def emit(self, record: logging.LogRecord) -> None:
        console.rule(record.getMessage())


@contextmanager
def _listening(name: str, handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextmanager
def flow_progress() -> Iterator[None]:
    """Progress bars and stage rules for the flows run inside the block."""
    with (
        progress_bars() as progress,
        _listening("daug.progress", _ProgressHandler(progress)),
        _listening("daug.stage", _StageHandler()),
    ):
        yield


def run_flow(flow: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
    """Run ``flow`` (the same function a deployment runs) with progress bars. Paths become
    strings (flow parameters travel as JSON). Without a configured Prefect server the run's
    temporary server is started here and recorded (:mod:`flows.cli.prefect_server`)."""
    from flows.cli.prefect_server import ensure_temporary_server

    ensure_temporary_server()
    with flow_progress():
        return flow(**{k: str(v) if isinstance(v, Path) else v for k, v in params.items()})
