"""The errors the command line reports as one ``error:`` line (exit 2) instead of a traceback:
bad input, and places or services that cannot be used. One list, read by the entry point
(:func:`flows.cli.run`) and by the terminal's log filter (which drops Prefect's tracebacks of
the same errors, raised inside a flow)."""

from __future__ import annotations


def one_line_error(exc: BaseException) -> BaseException | None:
    """The error to report for ``exc`` in one line, or None when it is a fault of the program
    (a traceback, then). Light imports only: a CLI start must not pay for torch or zarr."""
    from daug_core.settings import CheckpointError, ConfigError
    from flows.cli.prefect_server import PrefectServerError
    from storage.errors import (
        EmptySelectionError,
        LocationError,
        ReleaseFormatError,
        StoreFormatError,
    )

    known = (
        ReleaseFormatError,
        StoreFormatError,
        FileExistsError,  # synth's ReleaseExistsError (an existing release, not overwritten)
        ConfigError,
        CheckpointError,
        EmptySelectionError,
        LocationError,
        PrefectServerError,
    )
    if isinstance(exc, known):
        return exc
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
        return None
    # A library's error that names a place that cannot be used (a full disk, no such bucket,
    # an endpoint that does not answer); fsspec comes with it, so only now.
    from storage.store.location import location_error

    return location_error(exc)
