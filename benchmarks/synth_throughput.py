"""Throughput of the synthetic MIMIC-CXR generator: 1,000 studies at 128 px, DICOM.

Usage: .venv/bin/python benchmarks/synth_throughput.py [--studies N] [--size S] [--seed X]

Prints wall time, images/s and the time share of rendering (phantoms, lesions, masks,
reports, labels: pure compute) versus file writing (DICOM, masks.zarr, reports, CSVs).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from storage.synthetic import SynthConfig, write_synthetic_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("dicom", "jpg"), default="dicom")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = SynthConfig(studies=args.studies, size=args.size, image_format=args.format)
    with tempfile.TemporaryDirectory(prefix="synth_bench_") as tmp:
        start = time.perf_counter()
        summary = write_synthetic_release(Path(tmp), config, seed=args.seed)
        wall = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
    accounted = summary.render_seconds + summary.write_seconds
    render, write = summary.render_seconds, summary.write_seconds
    print(f"studies          {summary.studies} ({summary.patients} patients)")
    print(f"images           {summary.images} ({summary.frontal_images} frontal)")
    print(f"output size      {size_mb:.1f} MB")
    print(f"wall time        {wall:.1f} s")
    print(f"throughput       {summary.images / wall:.1f} images/s")
    print(f"                 {summary.studies / wall:.1f} studies/s")
    print(f"render share     {render / accounted:.0%} ({render:.1f} s)")
    print(f"write share      {write / accounted:.0%} ({write:.1f} s)")


if __name__ == "__main__":
    main()
