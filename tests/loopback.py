"""Loopback infrastructure for the distributed tests and benchmarks: a free port, the S3
server (moto's server mode, in its own process) and a multi-node Ray cluster of `ray start`
processes on 127.0.0.1. Everything stays on loopback and is stopped by its owner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SLOT = "gpu_slot"  # what a GPU would be: one per worker node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """``python -m moto.server`` on a free loopback port; :meth:`environment` is what clients
    need (the standard endpoint variables and dummy credentials)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start in {timeout:.0f} s") from None
                time.sleep(0.2)

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "FSSPEC_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


# Token auth is off on loopback only; a real cluster keeps its token. (The nodes listen on
# 127.0.0.1; a driver's `ray.init(address="127.0.0.1:P")` is resolved by Ray to this host's own
# network address for the GCS connection, `resolve_ip_for_localhost`: the traffic stays on this
# host. The switch that would stop that, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, also refuses
# multi-node clusters.)
LOOPBACK_RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


class LoopbackCluster:
    """A head node and worker nodes, each a `ray start` of its own on 127.0.0.1. Starting it
    sets :data:`LOOPBACK_RAY_ENV` in this process too (the driver connects on loopback)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = os.environ | {
            "RAY_USAGE_STATS_ENABLED": "0",
            **LOOPBACK_RAY_ENV,
            "http_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("PYTHONPATH", None)

    def ray(self, *args: str) -> None:
        result = subprocess.run(
            [str(BIN / "ray"), *args],
            cwd=self.root,  # no repository here: the nodes import the installed package
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def start(self, workers: int, head_slot: bool = False) -> None:
        """The head (with a slot of its own when ``head_slot``) and ``workers`` worker nodes."""
        os.environ.update(LOOPBACK_RAY_ENV)
        self.ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            "--num-cpus=1",
            f"--resources={json.dumps({SLOT: 1} if head_slot else {})}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        )
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> None:
        self.ray(
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--resources={json.dumps({SLOT: 1})}",
        )

    def stop(self) -> None:
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=self.env, capture_output=True, timeout=120
        )


def node_processes(node_manager_port: int) -> list[int]:
    """Pids of one node's raylet and of every process it started (its Ray workers)."""
    parents: dict[int, int] = {}
    raylet = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "raylet" in cmdline and f"--node_manager_port={node_manager_port}" in cmdline:
            raylet = int(proc.name)
    if raylet is None:
        return []
    found = {raylet}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return sorted(found)
        found |= more
