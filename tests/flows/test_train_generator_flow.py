"""train-generator end to end on a tiny store: checkpoints, resume, loss log, AUC table."""

import json

import pandas as pd
import pytest

from daug_core.checkpoints.diffusion import load_generator_checkpoint
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.diffusion.presets import DiffusionTrainSettings
from flows.ingest import ingest_flow
from flows.train_generator import train_generator_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig

pytestmark = pytest.mark.slow


def test_trains_checkpoints_and_resumes(tmp_path, synthetic_pair, prefect_server):
    store = tmp_path / "store"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=16, reader=ReaderConfig(views=())),
    )
    out = tmp_path / "ckpt"
    first = train_generator_flow(
        store=str(store),
        out=str(out),
        training=DiffusionTrainSettings(generator_steps=2, classifier_steps=3),
        eval_split="test",
    )
    gen, cls = first["runs"]
    assert (gen["steps_before"], gen["steps_after"]) == (0, 2)
    assert (cls["steps_before"], cls["steps_after"]) == (0, 3)
    assert gen["sha256"] == checkpoint_sha256(out / "generator")
    assert len(pd.read_csv(out / "generator_losses.csv")) == 2
    assert (out / "loss_curves.png").stat().st_size > 1000
    levels = pd.read_csv(out / "classifier_noise_levels.csv")
    assert sorted(levels["timestep"].unique()) == [0, 100, 200, 300, 500]
    assert len(levels) == 5 * 7
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["preset"] == "tiny" and summary["compute"]["precision"] == "fp32"

    second = train_generator_flow(
        store=str(store),
        out=str(out),
        training=DiffusionTrainSettings(generator_steps=4, classifier_steps=3),
        eval_split="test",
    )
    gen2, cls2 = second["runs"]
    assert (gen2["steps_before"], gen2["steps_after"]) == (2, 4)
    assert (cls2["steps_before"], cls2["steps_after"]) == (3, 3)  # already trained: no work
    assert cls2["sha256"] == cls["sha256"]
    # Resumed with nothing left to train: the checkpoint's last recorded loss, not NaN.
    assert cls2["final_loss"] == pd.read_csv(out / "classifier_losses.csv")["loss"].iloc[-1]
    assert load_generator_checkpoint(out / "generator").step == 4
    losses = pd.read_csv(out / "generator_losses.csv")
    assert losses["step"].tolist() == [1, 2, 3, 4]
