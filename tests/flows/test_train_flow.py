"""The train flow on a small synthetic store with heatmaps: loss goes down, outputs are
written, a resumed run equals an uninterrupted one, bad settings are refused."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from daug_core.checkpoints.contrastive import load_clip_checkpoint
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.settings import ConfigError
from flows.runtime.contrastive import train_contrastive
from flows.train import train_flow
from tests.factories import HEATMAP_TARGETS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def small(mode: str = "channel", epochs: int = 2, **changes: object):
    config = ClipTrainSettings(
        heatmap_mode=mode,  # type: ignore[arg-type]
        epochs=epochs,
        batch_size=8,
        seed=3,
    ).config()
    return (
        dataclasses.replace(config, training=dataclasses.replace(config.training, **changes))
        if changes
        else config
    )


def test_flow_trains_lowers_the_loss_and_writes_its_outputs(contrastive_store, tmp_path):
    store = contrastive_store
    out = tmp_path / "run"
    result = train_flow(
        store=str(store),
        out=str(out),
        training=ClipTrainSettings(heatmap_mode="channel", epochs=3, batch_size=8, seed=3),
    )
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert np.isfinite(metrics[["val_loss", "val_clip", "val_cls"]].to_numpy()).all()
    assert result["excluded"]["train"]["no_heatmap"] == 1
    assert (out / "loss_curves.png").stat().st_size > 1000
    best = load_clip_checkpoint(out / "best")
    assert best.heatmap_targets == ("+No Finding",)
    assert best.config.model.heatmap_mode == "channel"
    assert best.info["epoch"] == result["best_epoch"]
    # auto is the CPU here; where and how it trained is in the summary and the checkpoint
    assert result["compute"] == best.info["compute"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert (result["compute"]["device"], result["compute"]["precision"]) == (device, "fp32")
    auc = metrics["val_macro_auc"]
    assert best.info["selected_by"] == "val_macro_auc"
    assert auc.iloc[result["best_epoch"] - 1] == auc.max()


def test_resumed_training_equals_an_uninterrupted_run(contrastive_store, tmp_path):
    whole = train_contrastive(contrastive_store, tmp_path / "whole", small(epochs=2))
    part = tmp_path / "part"  # the run dies right after epoch 1 was checkpointed
    with pytest.raises(_Stop):
        train_contrastive(contrastive_store, part, small(epochs=2), on_epoch=_stop_after_first)
    resumed = train_contrastive(contrastive_store, part, small(epochs=2))
    assert resumed.epochs_run == 1
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), whole.history.drop(columns="seconds")
    )
    a = load_clip_checkpoint(part / "last").model.state_dict()
    b = load_clip_checkpoint(tmp_path / "whole" / "last").model.state_dict()
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=0, atol=0, msg=name)


class _Stop(Exception):
    pass


def _stop_after_first(row: dict[str, float]) -> None:
    raise _Stop


@pytest.mark.parametrize("mode", ["none", "add", "append"])
def test_every_mode_trains_one_epoch(contrastive_store, tmp_path, mode):
    result = train_contrastive(contrastive_store, tmp_path / mode, small(mode, epochs=1))
    saved = load_clip_checkpoint(tmp_path / mode / "best")
    expected = {"none": (), "add": ("+No Finding",), "append": HEATMAP_TARGETS}[mode]
    assert saved.heatmap_targets == expected
    assert np.isfinite(result.history["train_loss"]).all()
    excluded = 0 if mode == "none" else 1
    assert result.excluded["train"]["no_heatmap"] == excluded


def test_another_config_in_the_same_folder_is_refused(contrastive_store, tmp_path):
    train_contrastive(contrastive_store, tmp_path / "run", small(epochs=1))
    with pytest.raises(ConfigError) as refused:
        train_contrastive(contrastive_store, tmp_path / "run", small(epochs=3, learning_rate=2e-3))
    assert str(refused.value) == (
        f"{tmp_path / 'run'} holds a run trained with other settings (training.learning_rate "
        "0.001 -> 0.002, training.epochs 1 -> 3): a run resumes only with its own (a "
        "learning-rate schedule ends at its epochs). To train with these settings, pass a new "
        "output folder"
    )
    shutil.rmtree(tmp_path / "run")


def test_missing_heatmaps_can_fail_instead_of_excluding(contrastive_store, tmp_path):
    from storage.datasets.contrastive import MissingHeatmapsError

    with pytest.raises(MissingHeatmapsError, match="have no heatmaps"):
        train_contrastive(
            contrastive_store, tmp_path / "run", small(epochs=1), missing_heatmaps="fail"
        )


def test_the_official_recipe_trains_on_train_and_validate_and_keeps_the_last_epoch(
    contrastive_store, tmp_path
):
    ours = train_contrastive(contrastive_store, tmp_path / "ours", small("none", epochs=1))
    official = small(
        "none",
        epochs=2,
        train_splits="train+validate",
        model_selection="last",
        keep_epochs=(1, 6, 10),  # the official run's tested epochs; 6 and 10 are not reached
    )
    result = train_contrastive(contrastive_store, tmp_path / "official", official)
    assert result.train_items == ours.train_items + ours.validate_items
    assert result.best_epoch == 2
    assert load_clip_checkpoint(tmp_path / "official" / "best").info["selected_by"] == "last_epoch"
    kept = sorted(p.name for p in (tmp_path / "official").glob("epoch-*"))
    assert kept == ["epoch-001"]
    first = load_clip_checkpoint(tmp_path / "official" / "epoch-001")
    assert first.info["epoch"] == 1 and first.info["selected_by"] == "epoch 1 (keep_epochs)"
    last = load_clip_checkpoint(tmp_path / "official" / "best").model.state_dict()
    weights = first.model.state_dict()
    assert any(not torch.equal(weights[k], last[k]) for k in weights)  # epoch 1's, not the last
