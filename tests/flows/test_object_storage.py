"""The whole chain with everything on the loopback S3 server: a release in the bucket, ingested
into a store in the bucket, heatmaps from checkpoints in the bucket, one training epoch and an
evaluation with their outputs in the bucket; every array and table equal, bit for bit, to the
same chain on a local directory. While the S3 chain runs, building a ``pathlib.Path`` from a
URL is an error (``Path("s3://b/k")`` silently becomes ``s3:/b/k``).
"""

from __future__ import annotations

import io
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.runtime.pool import PoolSettings
from flows.train import train_flow
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location
from tests.factories import write_random_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

HEAT = HeatmapSettings.build(targets=("+No Finding",), translation={"level": 50, "steps": 3})
TRAINING = ClipTrainSettings(epochs=1, batch_size=8, seed=3)


class PathFromUrlError(AssertionError):
    pass


@pytest.fixture
def no_path_from_urls(monkeypatch) -> Iterator[None]:
    original = pathlib.PurePath._parse_args.__func__  # type: ignore[attr-defined]

    def refuse_urls(cls: Any, args: Any) -> Any:
        for arg in args:
            text = str(arg)
            if text.startswith(("s3:", "gs:")) or "s3://" in text or "gs://" in text:
                raise PathFromUrlError(f"pathlib.Path built from a URL: {text!r}")
        return original(cls, args)

    monkeypatch.setattr(pathlib.PurePath, "_parse_args", classmethod(refuse_urls))
    yield


def chain(release: str, root: Location, checkpoints: str) -> dict[str, Any]:
    store = root.child("store").url
    out = root.child("clip").url
    ingest_flow(release=release, store=store, ingest=IngestConfig(size=64, shard_items=8))
    heat = precompute_flow(
        store=store,
        checkpoints=checkpoints,
        heatmaps=HEAT,
        pool=PoolSettings(actors=1, batch_size=4),
        examples=2,
    )
    trained = train_flow(store=store, out=out, training=TRAINING, torch_threads=1)
    metrics = evaluate_flow(checkpoint=root.child("clip", "best").url, store=store)
    return {"store": store, "out": out, "heat": heat, "trained": trained, "metrics": metrics}


@pytest.fixture(scope="module")
def twins(s3_bucket, synthetic_pair, prefect_server, ray_session, tmp_path_factory):
    local = tmp_path_factory.mktemp("local-twin")
    ckpt = write_random_checkpoints(local / "ckpt")
    remote = Location.of(f"{s3_bucket}/twin-{time.time_ns()}")
    fs = remote.fs
    fs.put(str(synthetic_pair[0]), remote.child("release").path, recursive=True)
    fs.put(str(ckpt), remote.child("ckpt").path, recursive=True)
    return {
        "local": (Location.of(local), str(synthetic_pair[0]), str(ckpt)),
        "remote": (remote, remote.child("release").url, remote.child("ckpt").url),
    }


@pytest.fixture(scope="module")
def local_chain(twins) -> dict[str, Any]:
    root, release, ckpt = twins["local"]
    return chain(release, root, ckpt)


@pytest.fixture
def remote_chain(twins, local_chain, no_path_from_urls) -> dict[str, Any]:
    root, release, ckpt = twins["remote"]
    return chain(release, root, ckpt)


def test_the_chain_on_s3_equals_the_chain_on_a_local_directory(remote_chain, local_chain):
    assert remote_chain["store"].startswith("s3://")
    local, remote = (ImageStore.open(c["store"]) for c in (local_chain, remote_chain))
    columns = [c for c in local.items().columns if c != "source_path"]
    pd.testing.assert_frame_equal(remote.items()[columns], local.items()[columns])
    everything = np.arange(len(local))
    np.testing.assert_array_equal(remote.read_images(everything), local.read_images(everything))
    np.testing.assert_array_equal(remote.done_mask(), local.done_mask())
    np.testing.assert_array_equal(
        HeatmapStore(remote).read_heatmaps(everything),
        HeatmapStore(local).read_heatmaps(everything),
    )
    assert remote_chain["heat"]["done"] == local_chain["heat"]["done"] > 0
    assert remote_chain["heat"]["run_dir"].startswith("s3://")

    def outputs(run: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
        out = Location.of(run["out"])
        history = pd.read_csv(io.BytesIO(out.child("metrics.csv").read_bytes()))
        metrics = json.loads(out.child("metrics.json").read_text())
        return history.drop(columns="seconds"), metrics

    remote_history, remote_metrics = outputs(remote_chain)
    local_history, local_metrics = outputs(local_chain)
    pd.testing.assert_frame_equal(remote_history, local_history)
    assert remote_metrics["headline"] == local_metrics["headline"]
    assert remote_metrics["checkpoint_sha256"] == local_metrics["checkpoint_sha256"]
    evaluation = ImageStore.open(remote_chain["store"]).attrs["last_evaluation"]
    assert evaluation["path"].startswith("s3://")


def test_a_path_built_from_a_url_is_caught(no_path_from_urls):
    with pytest.raises(PathFromUrlError):
        pathlib.Path("s3://bucket/store")
    assert Location.of("s3://bucket/store").url == "s3://bucket/store"
    assert Location.of("s3://bucket/store").child("zarr.json").path == "bucket/store/zarr.json"


def test_a_run_file_on_s3_is_linked_by_a_presigned_url_that_serves_it(s3_bucket, tmp_path):
    import urllib.request

    from PIL import Image

    from flows.reports.artifacts import image_markdown
    from flows.reports.files import RunFolder, file_link

    run = RunFolder(f"{s3_bucket}/runs/linked")
    plot = run / "plot.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(plot)
    run.sync()
    link = file_link(plot)
    assert link.startswith("http://127.0.0.1:") and "Signature=" in link
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == plot.read_bytes()
    assert "*plot: [full resolution](http://127.0.0.1:" in image_markdown(plot, "plot")
    local = tmp_path / "local.png"
    Image.new("RGB", (8, 8)).save(local)
    assert file_link(local) == str(local.resolve())
