"""The temporary Prefect server of a CLI run, owned through a pid file.

Without ``PREFECT_API_URL`` Prefect starts a temporary server (a ``uvicorn`` child) at the
first flow run and stops it at exit. A CLI killed by SIGKILL (or the OOM killer) never reaches
its exit handlers, and the server lives on, reparented to pid 1. So the CLI starts that server
itself, Prefect's own singleton (``SubprocessASGIServer()``, which every Prefect client of the
process then uses), and records it in ``$PREFECT_HOME/cli-servers/<server pid>.json`` with
its owner's pid. Every CLI start stops the servers whose owner is gone: found by those records,
never by process name, and each pid checked against its recorded start time so a reused pid is
never signalled.

With ``PREFECT_API_URL`` set, the server there is asked once, briefly, before the run: one that
does not answer is one error naming the URL, not Prefect's retries and their tracebacks.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RECORDS = "cli-servers"
# Prefect waits 20 s for its temporary server by default; the first start on a new
# PREFECT_HOME creates and migrates the database, which takes longer on a loaded 2-core host.
STARTUP_TIMEOUT_S = 120
# A server that answers does so in milliseconds; a closed port refuses at once.
HEALTH_TIMEOUT_S = 3.0


class PrefectServerError(Exception):
    """The Prefect server named by PREFECT_API_URL does not answer."""


def require_answer(api_url: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Ask ``api_url``/health once (what Prefect's client asks): no connection within
    ``timeout`` seconds is a :class:`PrefectServerError`. Any HTTP answer will do: something
    listens there, and Prefect's client says what it makes of it."""
    import httpx

    try:
        httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout)
    except httpx.TransportError as exc:
        raise PrefectServerError(
            f"the Prefect server at {api_url} (PREFECT_API_URL) does not answer ({exc}); "
            "start it, or unset PREFECT_API_URL to run with a temporary one"
        ) from None


@dataclass(frozen=True, kw_only=True)
class ServerRecord:
    """One temporary server and the CLI process that owns it."""

    owner_pid: int
    owner_started: int
    server_pid: int
    server_started: int
    port: int


def process_started(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot; /proc/<pid>/stat field 22),
    None if no such process is running. Together with the pid it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def _alive(pid: int, started: int) -> bool:
    return process_started(pid) == started


def records_dir() -> Path:
    """``$PREFECT_HOME/cli-servers``. The environment variable wins over every other source of
    Prefect's settings, so when it is set, Prefect (2 s to import) is not asked."""
    home = os.environ.get("PREFECT_HOME")
    if not home:
        from prefect.settings import get_current_settings

        home = str(get_current_settings().home)
    return Path(home).expanduser() / RECORDS


def stop_orphans(directory: Path) -> list[int]:
    """Stop every recorded server whose owner is no longer running; return their pids.
    Records of servers that are gone already are removed; live owners' records are kept."""
    stopped = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = ServerRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            logger.warning("ignoring unreadable server record %s", path)
            continue
        if _alive(record.owner_pid, record.owner_started):
            continue
        if _alive(record.server_pid, record.server_started):
            _terminate(record.server_pid, record.server_started)
            stopped.append(record.server_pid)
            logger.info(
                "stopped the temporary Prefect server (pid %d, port %d) left by a killed run",
                record.server_pid,
                record.port,
            )
        path.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, started: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s, the process ``pid`` started at ``started``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ensure_temporary_server() -> None:
    """Start Prefect's temporary server for this process and record it, unless a server is
    configured (PREFECT_API_URL: it must answer, :func:`require_answer`) or already running.
    Stopped, and its record removed, at exit."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        require_answer(str(settings.api.url))
        return
    if not settings.server.ephemeral.enabled:
        return
    server = SubprocessASGIServer()
    if server.running:
        return
    server.start(timeout=max(settings.server.ephemeral.startup_timeout_seconds, STARTUP_TIMEOUT_S))
    assert server.server_process is not None and server.port is not None
    server_pid = server.server_process.pid
    record = ServerRecord(
        owner_pid=os.getpid(),
        owner_started=process_started(os.getpid()) or 0,
        server_pid=server_pid,
        server_started=process_started(server_pid) or 0,
        port=server.port,
    )
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{server_pid}.json"

    def stop() -> None:
        try:
            server.stop()
        finally:  # a signal during the stop still removes the record
            path.unlink(missing_ok=True)

    atexit.register(stop)  # before the record exists: a signal between the two leaves none
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(asdict(record)))
    partial.replace(path)
