"""Ingest with 2 worker processes against 1 (in-process) on 512 px DICOMs. Goal: >= 1.7x.

pydicom's parsing holds the GIL, so two threads never beat one (ingest_overhead.py); worker
processes that open the store themselves and each own their shards should. Same release into
two fresh stores per round, the order alternating between rounds; flow wall time, after a
warm-up run (Prefect's temporary server, the page cache of the release). Each 2-process run
pays its own process start-up (spawn, imports), as a real run does. Also printed: the cores
each run kept busy (CPU seconds of this process and its reaped children over wall time), the
ceiling of what more processes can give on this machine.

Usage: .venv/bin/python benchmarks/ingest_processes.py [--studies 1000] [--rounds 2]
       [--release PATH]  (an existing synthetic release instead of writing one)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig
from storage.synthetic import SynthConfig, write_synthetic_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--release", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ingest_processes_"))
    release = (
        args.release
        or write_synthetic_release(
            root / "synth", SynthConfig(studies=args.studies, size=args.size), seed=11
        ).release_dir
    )
    config = IngestConfig(size=256, shard_items=32)
    ingest_flow(release=str(release), store=str(root / "warm-up"), ingest=config, workers=2)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[float]] = {1: [], 2: []}
    images = 0
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            store = root / f"store-{workers}"
            shutil.rmtree(store, ignore_errors=True)
            cpu, started = cpu_seconds(), time.perf_counter()
            run = ingest_flow(
                release=str(release), store=str(store), ingest=config, workers=workers
            )
            seconds[workers].append(time.perf_counter() - started)
            cores[workers].append((cpu_seconds() - cpu) / seconds[workers][-1])
            images = run["ingested"]
            print(
                f"round {round_ + 1}: {workers} process(es) {seconds[workers][-1]:.1f} s, "
                f"{cores[workers][-1]:.2f} cores busy",
                flush=True,
            )
    one, two = (sum(seconds[w]) / len(seconds[w]) for w in (1, 2))
    busy = {w: sum(cores[w]) / len(cores[w]) for w in (1, 2)}
    print(f"{images} images into a 256 px store, shards of 32")
    print(
        f"1 process {one:.1f} s ({busy[1]:.2f} cores), 2 processes {two:.1f} s "
        f"({busy[2]:.2f} cores): speed-up {one / two:.2f}x"
    )


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have been waited for."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
