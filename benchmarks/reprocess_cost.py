"""Reprocessing cost: a new release with 5 % new studies against the full run.

A synthetic base release (``--studies``, every view, 64 px) is processed in full: the ingest
flow, then the precompute flow (K = 7 targets from random-weight tiny checkpoints, the same
compute as trained weights; shortened translation: plain inversion, ``--steps`` DDIM steps).
A derived release (``daug synth-next`` defaults: 5 % new studies, 3 % relabelled, 2 % new
reports, 2 % changed images (``--pixel-fraction``), 2 % removed) is then brought in by the
reprocess flow with the same settings. Both in one process: Ray started once, Prefect's
ephemeral server warmed up by a first flow, so neither side pays those start-ups.

Target: reprocess wall time <= 0.1 x the full run's.

    .venv/bin/python benchmarks/reprocess_cost.py [--studies 300] [--steps 3] [--actors 2]
"""

from __future__ import annotations

from _precompute_setup import save_random_checkpoints  # sets the environment first

# isort: split
import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
from prefect import flow

from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.reprocess import reprocess_flow
from storage.synthetic import SynthConfig, write_synthetic_release
from storage.synthetic.next_release import ReleaseChangeConfig, write_next_release


@flow(name="warm-up")
def warm_up() -> None:
    """Starts Prefect's temporary server before anything is timed."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--level", type=int, default=500)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--pixel-fraction", type=float, default=0.02, help="images with new pixels (0: only new)"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="reprocess_cost_"))
    ckpt = root / "ckpt"
    save_random_checkpoints(ckpt)
    write_synthetic_release(root / "base", SynthConfig(studies=args.studies, size=64), seed=7)
    changes = ReleaseChangeConfig(pixel_fraction=args.pixel_fraction)
    derived = write_next_release(root / "base", root / "next", changes)
    print(f"derived release: changed images per kind {derived.counts}")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
    warm_up()
    heat = {
        "level": args.level,
        "steps": args.steps,
        "inversion_refinements": 0,
        "preset_name": "tiny",
        "batch_size": args.batch_size,
        "actors": args.actors,
    }
    store = root / "store"
    load_before = os.getloadavg()[0]

    t0 = time.perf_counter()
    ingested = ingest_flow(
        release=str(root / "base" / "release"), store=str(store), size=64, views=[]
    )
    t1 = time.perf_counter()
    computed = precompute_flow(store=str(store), checkpoints=str(ckpt), **heat)
    t2 = time.perf_counter()
    full = t2 - t0
    print(
        f"full run: {full:.1f} s (ingest {t1 - t0:.1f} s: {ingested['ingested']} images; "
        f"precompute {t2 - t1:.1f} s: {computed['done']} images x 7 targets)"
    )

    t3 = time.perf_counter()
    result = reprocess_flow(
        release=str(root / "next" / "release"),
        store=str(store),
        checkpoints=str(ckpt),
        batch_size=args.batch_size,
        actors=args.actors,
    )
    reprocess = time.perf_counter() - t3
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
    print(
        f"reprocess: {reprocess:.1f} s ({phases}); diff {result['counts']}; "
        f"ingested {result['ingested']}, heatmaps computed {result['heatmaps_computed']}"
    )
    t4 = time.perf_counter()
    again = reprocess_flow(
        release=str(root / "next" / "release"), store=str(store), checkpoints=str(ckpt)
    )
    print(
        f"second reprocess of the same release: {time.perf_counter() - t4:.1f} s, "
        f"ingested {again['ingested']}, heatmaps computed {again['heatmaps_computed']}"
    )
    ratio = reprocess / full
    verdict = "met" if ratio <= 0.1 else "MISSED"
    print(
        f"ratio reprocess / full = {ratio:.3f} (target <= 0.1: {verdict})"
        f"; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; work in {root}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
