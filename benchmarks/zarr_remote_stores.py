"""Zarr on S3 through fsspec (``zarr.storage.FsspecStore`` over s3fs, what the stores use) vs
obstore (``zarr.storage.ObjectStore`` over ``obstore.store.S3Store``), side by side on the
loopback S3 server: write an image-store-shaped array (one chunk per item), then read random
items one by one and in batches, as the heatmap workers and the training loader do.

Needs obstore, which the project does not depend on: ``.venv/bin/pip install obstore``.

Usage: .venv/bin/python benchmarks/zarr_remote_stores.py [--items 512] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.loopback

import numpy as np
import zarr

from storage.store.location import Location
from tests.loopback import S3Server


def fsspec_store(url: str) -> Any:
    return Location.of(url).zarr_store()


def obstore_store(url: str) -> Any:
    from obstore.store import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = S3Store(
        bucket,
        prefix=prefix,
        endpoint=os.environ["AWS_ENDPOINT_URL"],
        region="us-east-1",
        client_options={"allow_http": True},
    )
    return zarr.storage.ObjectStore(s3)


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    s3 = S3Server().start()
    os.environ.update(s3.environment())
    try:
        Location.of("s3://zarr-bench").fs.mkdir("zarr-bench")
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 65535, (args.items, args.size, args.size), dtype=np.uint16)
        makers = {"fsspec": fsspec_store, "obstore": obstore_store}
        results: dict[str, dict[str, list[float]]] = {
            name: {"write": [], "one by one": [], "batched": []} for name in makers
        }
        order = rng.permutation(args.items)
        for round_ in range(args.rounds):
            names = list(makers) if round_ % 2 == 0 else list(reversed(makers))
            for name in names:
                url = f"s3://zarr-bench/{name}-{round_}"
                store = makers[name](url)
                array = zarr.create_array(
                    store,
                    shape=pixels.shape,
                    chunks=(1, args.size, args.size),
                    dtype=pixels.dtype,
                    overwrite=True,
                )

                def write(array: Any = array) -> None:
                    array[:] = pixels

                results[name]["write"].append(timed(write))
                reader = zarr.open_array(makers[name](url), mode="r")
                chosen = order[: args.items // 4]

                def one_by_one(reader: Any = reader, chosen: Any = chosen) -> None:
                    for i in chosen:
                        reader[int(i)]

                def batched(reader: Any = reader) -> None:
                    for start in range(0, args.items, args.batch):
                        picked = np.sort(order[start : start + args.batch])
                        reader.get_orthogonal_selection((picked, slice(None), slice(None)))

                results[name]["one by one"].append(timed(one_by_one) / len(chosen))
                results[name]["batched"].append(timed(batched) / args.items)
                assert np.array_equal(reader[int(order[0])], pixels[int(order[0])])
        mb = pixels[0].nbytes / 1e6
        print(f"{args.items} items of {args.size}² uint16 ({mb:.2f} MB each), one chunk per item")
        for what in ("write", "one by one", "batched"):
            means = {n: float(np.mean(results[n][what])) for n in makers}
            unit = "s total" if what == "write" else "ms per item"
            scale = 1.0 if what == "write" else 1e3
            shown = ", ".join(f"{n} {means[n] * scale:.2f} {unit}" for n in makers)
            ratio = means["obstore"] / means["fsspec"]
            print(f"{what:>10}: {shown}; obstore / fsspec time {ratio:.2f}")
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
