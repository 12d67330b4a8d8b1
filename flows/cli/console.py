"""The terminal side of a run: progress bars drawn from the flows' progress records, stage
rules, log lines, and running a flow with them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from flows.runtime.notices import RUN_LOG_ONLY

console = Console(stderr=True)


# Prefect's engine narrates every flow, subflow and task run at INFO (begun, finished in
# Completed, its URL) and the temporary server's start and stop: the run's page has them; the
# terminal at default verbosity does not (a failed state is logged at ERROR and stays).
RUN_CHATTER: tuple[str, ...] = (
    "Beginning flow run",
    "Beginning subflow run",
    "Finished in state Completed",
    "View at ",
    "Created task run",
    "Created subflow run",
    "Executing ",
    "Starting temporary server",
    "Stopping temporary server",
)


class QuietRuns(logging.Filter):
    """Drops Prefect's :data:`RUN_CHATTER`, the records a flow marks for its run's log only
    (:data:`~flows.runtime.notices.RUN_LOG_ONLY`: a stage heading the terminal draws as a
    rule), Prefect's report of an error the command prints itself as one line
    (:mod:`flows.cli.errors`) with its traceback, and the failed states that repeat a failure
    already told."""

    def __init__(self) -> None:
        super().__init__()
        self.told_once = False  # a one-line error went by: the run ends with it

    def filter(self, record: logging.LogRecord) -> bool:
        if any(getattr(record, key, None) == value for key, value in RUN_LOG_ONLY.items()):
            return False
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            from flows.cli.errors import one_line_error

            if one_line_error(record.exc_info[1]) is not None:
                self.told_once = True
                return False
        # A task's failed state repeats its failure record (with the traceback), the flow's own
        # line about it, or the one-line error; a flow's, after a one-line error, repeats that.
        failed = str(record.msg).startswith("Finished in state Failed")
        if failed and (self.told_once or record.name.startswith("prefect.task_runs")):
            return False
        chatter = record.levelno <= logging.INFO
        return not (chatter and str(record.msg).startswith(RUN_CHATTER))


class LineHandler(logging.Handler):
    """A record as one line above the progress bars, never wrapped (one line in a log file; the
    terminal wraps it on screen), warnings and errors prefixed with their level. (Its name has
    no leading underscore: Prefect keeps the root logger's handlers only when they look like a
    user's.)"""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = Text(self.format(record))
            if record.levelno >= logging.WARNING:
                style = "bold red" if record.levelno >= logging.ERROR else "bold yellow"
                line = Text.assemble((f"{record.levelname.lower()}: ", style), line)
            console.print(line, soft_wrap=True, highlight=False)
        except Exception:
            self.handleError(record)


def log_handler(verbose: bool) -> logging.Handler:
    """The terminal's log handler: with ``verbose`` (``daug -v``) rich's, every record with its
    time and level; else one unwrapped line per record, without Prefect's run chatter."""
    if verbose:
        return RichHandler(console=console, show_path=False)
    handler = LineHandler()
    handler.addFilter(QuietRuns())
    return handler


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
