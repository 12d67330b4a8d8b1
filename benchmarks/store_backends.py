"""The same store on the loopback S3 server and on a local directory, side by side: heatmap
precompute throughput (image·class/s) and the contrastive training loader's throughput
(items/s). Goal: the S3 store at >= 0.8x the local one.

Both stores are ingested from one synthetic release (64 px); the precompute runs the flow with
1 actor x 1 CPU on each store, in alternating order over the rounds; the loader reads every
train item (image + heatmap channels + tokens) once per round through ``make_loader``.

Usage: .venv/bin/python benchmarks/store_backends.py [--studies 80] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _precompute_setup import save_random_checkpoints  # sets the environment first

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.loopback
import ray

from daug_core.contrastive.model import build_tokenizer
from daug_core.contrastive.presets import contrastive_preset
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.runtime.pool import PoolSettings
from storage.datasets.contrastive import ContrastiveDataset, make_loader
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location
from storage.synthetic import SynthConfig, write_synthetic_release
from tests.loopback import S3Server


def loader_rate(store: str, version: str) -> float:
    dataset = ContrastiveDataset(
        store,
        "train",
        heatmap_version=version,
        text_transform=build_tokenizer(contrastive_preset("tiny").model),
    )
    started = time.perf_counter()
    items = sum(len(batch["index"]) for batch in make_loader(dataset, 32, False, 0, 0))
    return items / (time.perf_counter() - started)


def get_latency(store: str, count: int = 200) -> float:
    """Seconds per sequential GET of one of the store's image chunk objects (the server's
    per-request cost as a client sees it: the ceiling of any one-by-one reader)."""
    root = Location.of(store).child("images")
    chunks = [name for name in root.list() if name.startswith("c/")][:count]
    started = time.perf_counter()
    for name in chunks:
        root.child(name).read_bytes()
    return (time.perf_counter() - started) / max(len(chunks), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="store_backends_"))
    s3 = S3Server().start()
    os.environ.update(s3.environment())
    try:
        Location.of("s3://daug-bench").fs.mkdir("daug-bench")
        release = write_synthetic_release(
            root / "synth", SynthConfig(studies=args.studies, size=64), seed=5
        )
        save_random_checkpoints(root / "ckpt")
        stores = {"local": str(root / "store"), "s3": "s3://daug-bench/store"}
        for store in stores.values():
            ingest_flow(
                release=str(release.release_dir),
                store=store,
                ingest=IngestConfig(size=64, shard_items=16),
            )
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2)
        settings = HeatmapSettings.build(translation={"level": 50, "steps": 3})
        pool = PoolSettings(actors=1, cpus_per_actor=1.0, batch_size=8)
        heat: dict[str, list[float]] = {name: [] for name in stores}
        load: dict[str, list[float]] = {name: [] for name in stores}
        for round_ in range(args.rounds):
            order = list(stores) if round_ % 2 == 0 else list(reversed(stores))
            for name in order:
                run = precompute_flow(
                    store=stores[name],
                    checkpoints=str(root / "ckpt"),
                    heatmaps=settings,
                    pool=pool,
                    heatmap_version=f"r{round_}",
                    examples=0,
                )
                heat[name].append(run["image_class_per_second"])
                load[name].append(loader_rate(stores[name], f"r{round_}"))
                print(
                    f"round {round_ + 1} {name:>5}: precompute "
                    f"{heat[name][-1]:.2f} image·class/s, loader {load[name][-1]:.0f} items/s",
                    flush=True,
                )
        ray.shutdown()
        mean = {n: (sum(heat[n]) / len(heat[n]), sum(load[n]) / len(load[n])) for n in stores}
        for name, (h, rate) in mean.items():
            print(f"{name:>5}: precompute {h:.2f} image·class/s, loader {rate:.0f} items/s")
        print(f"s3 / local: precompute {mean['s3'][0] / mean['local'][0]:.2f}x")
        print(f"s3 / local: training loader {mean['s3'][1] / mean['local'][1]:.2f}x")
        print(f"s3 GET of one stored chunk object: {get_latency(stores['s3']) * 1e3:.1f} ms each")
        items = len(ImageStore.open(stores["s3"]))
        done = int(HeatmapStore(ImageStore.open(stores["s3"]), "r0").done_mask().sum())
        print(f"({items} items in the stores, {done} with heatmaps)")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        s3.stop()


if __name__ == "__main__":
    main()
