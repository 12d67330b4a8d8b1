"""Training and evaluating on a store as small as a first real release: a validate split
whose AUCs are all undefined, a retrieval database under k = 5 items. Undefined numbers are
NaN / null and stated, never a crash, and a run resumes whatever its metrics were."""

from __future__ import annotations

import errno
import json
import logging
import math

import pytest

from daug_core.contrastive.presets import ClipTrainSettings
from flows.evaluate import evaluate_flow
from flows.runtime.contrastive import train_contrastive
from storage.store.image import ImageStore
from storage.store.lease import StoreLease

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def config(epochs: int):
    return ClipTrainSettings(heatmap_mode="channel", epochs=epochs, batch_size=8, seed=3).config()


class _Stop(Exception):
    pass


def _stop(row: dict[str, float]) -> None:
    raise _Stop


def test_a_run_with_undefined_validation_auc_resumes_and_selects_by_loss(
    small_store, tmp_path, caplog
):
    out = tmp_path / "run"
    with pytest.raises(_Stop):  # the run dies right after epoch 1 was checkpointed
        train_contrastive(small_store, out, config(3), on_epoch=_stop)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flows.runtime.contrastive"):
        result = train_contrastive(small_store, out, config(3))
    assert result.epochs_run == 2 and result.validate_items == 1
    assert result.history["val_macro_auc"].isna().all()
    losses = result.history["val_loss"]
    assert result.best_epoch == int(result.history["epoch"][losses.idxmin()])
    assert result.best_metric == pytest.approx(-losses.min())
    summary = json.loads((out / "train.json").read_text())
    assert summary["selected_by"] == "val_loss"
    # 8 asked, 2 training images with heatmaps: what ran is recorded and said
    assert (summary["config"]["training"]["batch_size"], summary["global_batch"]) == (8, 2)
    assert "batch size 8 with 2 training item(s) on 1 worker(s): batches of 2" in caplog.text
    # once a run, not once an epoch
    said = [r.getMessage() for r in caplog.records if "AUC is undefined" in r.getMessage()]
    assert said == [
        "validation macro AUC is undefined (1 validate item(s); no class has both positives "
        "and negatives there): epochs are selected by validation loss"
    ]
    again = train_contrastive(small_store, out, config(3))  # a finished run reruns as well
    assert again.epochs_run == 0 and again.best_epoch == result.best_epoch


def test_evaluate_with_a_database_under_five_items_reports_null_not_a_crash(small_store, tmp_path):
    out = tmp_path / "run"
    train_contrastive(small_store, out, config(1))
    metrics = evaluate_flow(checkpoint=str(out / "best"), store=str(small_store))
    assert metrics["database_items"] == 3  # the train image without heatmaps is left out
    headline = metrics["headline"]
    for name in ("x2x_map5", "x2x_wmap5", "r2x_map5", "r2x_wmap5"):
        assert math.isnan(headline[name]), name
    assert set(metrics["retrieval"]["image_to_image"]) == {"1", "3"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["headline"]["x2x_map5"] is None


def test_evaluate_does_not_write_a_store_another_run_holds(small_store, tmp_path, caplog):
    out = tmp_path / "run"
    train_contrastive(small_store, out, config(1))
    before = ImageStore.open(small_store).attrs.get("last_evaluation")
    with (
        StoreLease(small_store, owner="precompute:v1"),
        caplog.at_level(logging.WARNING, logger="storage.store.status"),
    ):
        metrics = evaluate_flow(checkpoint=str(out / "best"), store=str(small_store))
    assert (out / "metrics.json").is_file() and metrics["test_items"] > 0
    assert ImageStore.open(small_store).attrs.get("last_evaluation") == before
    assert any("not recorded" in r.getMessage() for r in caplog.records)


def test_evaluate_on_a_store_it_cannot_write_still_evaluates(small_store, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_contrastive(small_store, out, config(1))

    def read_only(self: StoreLease) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(small_store))

    monkeypatch.setattr(StoreLease, "acquire", read_only)
    metrics = evaluate_flow(checkpoint=str(out / "best"), store=str(small_store))
    assert json.loads((out / "metrics.json").read_text())["test_items"] == metrics["test_items"]
