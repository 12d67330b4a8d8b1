"""Ingest flow overhead: the Prefect flow vs the same functions in a plain loop.

Both ingest the same ~2,000-image synthetic release (128 px DICOMs, every view) into a
fresh 64 px store. The flow runs one Prefect task per shard on Prefect's ephemeral server;
it is measured with one task worker (same parallelism as the loop: the ratio is pure
orchestration overhead) and with two (what `daug ingest` uses on this 2-core machine).
Target: overhead <= 10 % at equal parallelism.

    .venv/bin/python benchmarks/ingest_overhead.py [--studies 1000] [--image-size 128]

A Prefect flow run has a fixed cost of about 1 s on this machine, most of it the join of
Prefect's heartbeat thread, which sleeps in 1 s increments; per task the cost is a few ms.
So the ratio depends on how much work one run holds: run it with ``--image-size 512``
(closer to real radiographs) as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.store.image import ImageStore
from storage.store.ingest_shards import ingest_shard, plan_ingest
from storage.synthetic import SynthConfig, write_synthetic_release

SIZE, SHARD = 64, 64


def plain_loop(release: Path, store_path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    config = IngestConfig(size=SIZE, shard_items=SHARD, reader=ReaderConfig(views=()))
    reader = ReleaseReader(release, config.reader)
    store = ImageStore.create(store_path, SIZE, SHARD)
    plan = plan_ingest(store, reader, config)
    for work in plan.shards:
        ingest_shard(store, reader, work, plan.image_format, config.fit)
    store.consolidate()
    return time.perf_counter() - start, plan.pending


def flow_run(release: Path, store_path: Path, workers: int) -> float:
    runner = ingest_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    start = time.perf_counter()
    runner(release=str(release), store=str(store_path), size=SIZE, shard_items=SHARD, views=[])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=128, help="synthetic DICOM side")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth = SynthConfig(studies=args.studies, size=args.image_size)
        write_synthetic_release(root / "synth", synth, seed=0)
        release = root / "synth" / "release"
        # Warm-up: start the ephemeral Prefect server and fill the page cache.
        flow_run(release, root / "warmup", workers=1)
        loop_s, images = plain_loop(release, root / "loop")
        flow1_s = flow_run(release, root / "flow1", workers=1)
        flow2_s = flow_run(release, root / "flow2", workers=2)
    print(f"images ingested:            {images} ({args.image_size} px DICOMs -> {SIZE} px)")
    print(f"plain loop:                 {loop_s:6.2f} s  ({images / loop_s:6.0f} images/s)")
    print(f"flow, 1 task worker:        {flow1_s:6.2f} s  ({images / flow1_s:6.0f} images/s)")
    print(f"flow, 2 task workers:       {flow2_s:6.2f} s  ({images / flow2_s:6.0f} images/s)")
    print(f"overhead, equal parallelism: {100 * (flow1_s / loop_s - 1):+.1f} % (target <= 10 %)")
    print(f"flow (2 workers) / loop:     {loop_s / flow2_s:.2f}x throughput")


if __name__ == "__main__":
    main()
