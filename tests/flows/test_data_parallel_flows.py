"""`train` and `train-generator` with 2 Ray Train workers (gloo, on the session's local Ray):
the single-process numbers, files written by rank 0 only, a run whose worker is killed
mid-run resumed in one process to the uninterrupted run's model."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from daug_core.checkpoints.contrastive import load_clip_checkpoint
from daug_core.checkpoints.diffusion import load_classifier_checkpoint, load_generator_checkpoint
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.presets import DiffusionTrainSettings
from flows.ingest import ingest_flow
from flows.runtime.ray_train import ScalingSettings
from flows.train import train_flow
from flows.train_generator import train_generator_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread", "ray_session")]

TRAINING = ClipTrainSettings(heatmap_mode="channel", epochs=2, batch_size=8, seed=3)
EPOCHS = 2
TWO = ScalingSettings(workers=2)
COLUMNS = ["train_loss", "train_clip", "train_cls", "val_loss", "val_macro_auc", "lr"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_clip_checkpoint(folder).model.state_dict()


def _assert_same_model(ours: Path, reference: Path, atol: float = 1e-4) -> None:
    a, b = _weights(ours), _weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def one_worker(contrastive_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    train_flow(store=str(contrastive_store), out=str(out), training=TRAINING)
    return out


@pytest.fixture(scope="module")
def two_workers(contrastive_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    summary = train_flow(store=str(contrastive_store), out=str(out), training=TRAINING, scaling=TWO)
    assert summary["workers"] == 2 and summary["epochs_run"] == EPOCHS
    return out


def test_two_workers_train_the_single_process_model(one_worker: Path, two_workers: Path) -> None:
    one, two = pd.read_csv(one_worker / "metrics.csv"), pd.read_csv(two_workers / "metrics.csv")
    assert two["epoch"].tolist() == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(two[COLUMNS], one[COLUMNS], rtol=0, atol=1e-4)
    _assert_same_model(two_workers / "last", one_worker / "last")
    # Rank 0 alone wrote: the same files as one process, each once.
    assert _files(two_workers) == _files(one_worker)
    summary = pd.read_json(two_workers / "train.json", typ="series")
    assert (summary["workers"], summary["global_batch"], summary["starts"]) == (2, 8, [1])


def _kill_a_worker_after_the_first_epoch(out: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 300
    while not (out / "last" / "model.json").is_file():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes()
        except OSError:
            continue
        if b"RayTrainWorker" in title:  # Ray's process title: ray::RayTrainWorker...
            pid = int(cmdline.parent.name)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return


def test_a_killed_two_worker_run_resumes_in_one_process_to_the_same_model(
    contrastive_store: Path, two_workers: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_the_first_epoch, args=(out, killed))
    killer.start()
    with pytest.raises(Exception, match=r"(?i)worker|actor|died|fail"):
        train_flow(store=str(contrastive_store), out=str(out), training=TRAINING, scaling=TWO)
    killer.join()
    assert killed, "no Ray Train worker was found to kill"
    stopped_at = int(load_clip_checkpoint(out / "last").info["epoch"])
    assert 1 <= stopped_at < EPOCHS  # killed mid-run: epochs left to do

    # The 2-worker checkpoint resumes in one process and ends where the 2-worker run ended.
    summary = train_flow(store=str(contrastive_store), out=str(out), training=TRAINING)
    assert summary["epochs_run"] == EPOCHS - stopped_at
    record = pd.read_json(out / "train.json", typ="series")
    assert (record["workers"], record["starts"]) == (1, [1, stopped_at + 1])
    metrics = pd.read_csv(out / "metrics.csv")
    reference = pd.read_csv(two_workers / "metrics.csv")
    np.testing.assert_allclose(metrics[COLUMNS], reference[COLUMNS], rtol=0, atol=1e-4)
    _assert_same_model(out / "last", two_workers / "last")


def test_train_generator_with_two_workers_matches_one_process(
    synthetic_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=16, reader=ReaderConfig(views=())),
    )
    settings = DiffusionTrainSettings(generator_steps=3, classifier_steps=3)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        runs[workers] = train_generator_flow(
            store=str(store),
            out=str(out),
            training=settings,
            eval_split="test",
            scaling=ScalingSettings(workers=workers),
        )
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert _files(one) == _files(two)
    for name in ("generator", "classifier"):
        np.testing.assert_allclose(
            pd.read_csv(two / f"{name}_losses.csv")["loss"],
            pd.read_csv(one / f"{name}_losses.csv")["loss"],
            rtol=0,
            atol=1e-4,
        )
    generators = [load_generator_checkpoint(p / "generator") for p in (one, two)]
    classifiers = [load_classifier_checkpoint(p / "classifier").classifier for p in (one, two)]
    for a, b in (
        (generators[0].unet, generators[1].unet),
        (classifiers[0], classifiers[1]),
    ):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-4, msg=name)
    assert generators[1].step == 3
    assert [r["steps_after"] for r in runs[2]["runs"]] == [3, 3]
    assert runs[2]["scaling"]["workers"] == 2
