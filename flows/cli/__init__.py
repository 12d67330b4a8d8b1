"""The ``daug`` command line: one subcommand per flow (the same function a deployment runs;
without PREFECT_API_URL, Prefect starts a temporary local server for the run), with progress
bars. One module per command group; their options are generated from the settings dataclasses
(:mod:`flows.cli.options`).
"""

from __future__ import annotations

import importlib
import signal

from flows.cli.app import app
from flows.cli.console import console

__all__ = ["app", "run"]
# Importing a command module registers its commands; this order is the order of --help.
COMMAND_MODULES = ("data", "diffusion", "contrastive", "operations", "demo")
for _name in COMMAND_MODULES:
    importlib.import_module(f"flows.cli.{_name}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt): the flows stop their writers and
    release the store's lease, Prefect's temporary server is stopped, the exit code is not 0.
    A second SIGTERM terminates at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signum}")


def run() -> None:
    """Console entry point: known input errors print one clear line instead of a traceback."""
    # Light modules only: a CLI start must not pay for torch, diffusers or zarr.
    from daug_core.settings import CheckpointError, ConfigError
    from flows.cli.prefect_server import records_dir, stop_orphans
    from storage.errors import EmptySelectionError, ReleaseFormatError, StoreFormatError

    signal.signal(signal.SIGTERM, _terminate)
    stop_orphans(records_dir())
    try:
        app()
    except (
        ReleaseFormatError,
        StoreFormatError,
        FileExistsError,
        ConfigError,
        CheckpointError,
        EmptySelectionError,
    ) as exc:
        # FileExistsError: synth's ReleaseExistsError (an existing release, not overwritten)
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # one that escaped typer's own handling (exit 130 too)
        raise SystemExit(130) from None
