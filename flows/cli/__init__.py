"""The ``daug`` command line: one subcommand per flow (the same function a deployment runs;
without PREFECT_API_URL, Prefect starts a temporary local server for the run), with progress
bars. One module per command group; their options are generated from the settings dataclasses
(:mod:`flows.cli.options`).
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys

from flows.cli.app import app
from flows.cli.console import console

__all__ = ["app", "run"]
logger = logging.getLogger(__name__)
# Importing a command module registers its commands; this order is the order of --help.
COMMAND_MODULES = ("data", "diffusion", "contrastive", "operations", "explain", "search", "demo")
for _name in COMMAND_MODULES:
    importlib.import_module(f"flows.cli.{_name}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt): the flows stop their writers and
    release the store's lease, Prefect's temporary server is stopped, the exit code is not 0.
    A second SIGTERM terminates at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signum}")


def run() -> None:
    """Console entry point: known input errors, and places or services that cannot be used,
    print one clear line (:mod:`flows.cli.errors`) instead of a traceback."""
    # Light modules only: a CLI start must not pay for torch, diffusers or zarr.
    from rich.markup import escape

    from flows.cli.errors import one_line_error
    from flows.cli.prefect_server import records_dir, stop_orphans

    signal.signal(signal.SIGTERM, _terminate)
    stop_orphans(records_dir())
    try:
        app()
    except KeyboardInterrupt:  # one that escaped typer's own handling (exit 130 too)
        raise SystemExit(130) from None
    except Exception as exc:
        error = one_line_error(exc)
        if error is None:
            raise
        console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        _quiet_exit()
        raise SystemExit(2) from None


def _quiet_exit() -> None:
    """After the one error line, the exit stays quiet about what the failure left behind: the
    pending writes of other shards in fsspec's event loop (an S3 endpoint gone mid-ingest),
    which asyncio logs, and the interpreter reports, as they are destroyed."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: logger.debug("at exit: %s", unraisable.exc_value)
