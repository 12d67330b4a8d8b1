"""The evaluate flow on a checkpoint trained for two epochs: every metric written, numbers
consistent with independent computations, plots present."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from daug_core.checkpoints.contrastive import load_clip_checkpoint
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.labels import CHEXPERT_LABELS
from flows.evaluate import evaluate, evaluate_flow
from flows.reports.evaluation import headline_markdown
from flows.runtime.contrastive import train_contrastive
from storage.store.image import ImageStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def not_json(word: str) -> None:
    raise AssertionError(f"{word} is not JSON")


@pytest.fixture(scope="module")
def trained(contrastive_store, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    config = ClipTrainSettings(heatmap_mode="channel", epochs=2, batch_size=8).config()
    train_contrastive(contrastive_store, out, config)
    return out


def test_flow_writes_every_metric_and_plot(contrastive_store, trained):
    metrics = evaluate_flow(checkpoint=str(trained / "best"), store=str(contrastive_store))
    on_disk = json.loads((trained / "metrics.json").read_text(), parse_constant=not_json)
    assert on_disk["headline"] == metrics["headline"]
    assert set(metrics["headline"]) == {
        "auc_macro",
        "auc_weighted",
        "x2x_map5",
        "x2x_wmap5",
        "r2x_map5",
        "r2x_wmap5",
        "i2r_recall5",
    }
    retrieval = metrics["retrieval"]
    for direction in ("image_to_image", "report_to_image"):
        assert set(retrieval[direction]) == {"1", "3", "5", "10"}
        for at_k in retrieval[direction].values():
            assert 0.0 <= at_k["map_official"] <= at_k["map_present"] <= 1.0
    assert metrics["heatmap_mode"] == "channel" and metrics["heatmap_targets"] == ["+No Finding"]
    assert metrics["database_items"] > metrics["test_items"] > 0
    undefined = set(metrics["classification"]["undefined"])
    for name, auc in metrics["classification"]["per_class"].items():
        assert (name in undefined) == np.isnan(auc)
        # An undefined AUC is null in metrics.json (bare NaN is not JSON).
        assert (on_disk["classification"]["per_class"][name] is None) == (name in undefined)
    assert undefined, "the tiny test split should leave some class without both labels"
    for name in ("roc_curves.png", "precision_at_k.png", "examples.png"):
        assert (trained / name).stat().st_size > 2000, name
    assert (trained / "auc_per_class.csv").is_file() and (trained / "retrieval.csv").is_file()
    recorded = ImageStore.open(contrastive_store).attrs["last_evaluation"]  # for daug status
    assert recorded["headline"] == metrics["headline"]
    assert recorded["path"] == str((trained / "metrics.json").resolve())


def test_numbers_match_independent_computations(contrastive_store, trained):
    loaded = load_clip_checkpoint(trained / "best")
    evaluation = evaluate(loaded, contrastive_store, "v1")
    t = evaluation.test.embedded
    for c, name in enumerate(CHEXPERT_LABELS):
        y = t.labels[:, c]
        keep = ~np.isnan(y)
        auc = evaluation.classification.per_class[name]
        if len(np.unique(y[keep])) == 2:
            assert auc == pytest.approx(roc_auc_score(y[keep], t.probabilities[keep, c]))
        else:
            assert np.isnan(auc)
    # Recall@k of image→report by brute force over the similarity matrix.
    sims = t.image @ t.text.T
    studies = np.asarray(evaluation.test.study_ids)
    for k, recall in zip(evaluation.pairs.ks, evaluation.pairs.image_to_report, strict=True):
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        hits = (studies[top] == studies[:, None]).any(axis=1)
        assert recall == pytest.approx(hits.mean())
    # The test images embedded here are the store's test split, minus items without heatmaps.
    assert len(evaluation.test.indices) == len(set(evaluation.test.dicom_ids))


def test_headline_table_writes_undefined_numbers_as_na():
    """An undefined headline number (NaN in memory, null read back from metrics.json) is
    ``n/a`` in the printed table, as docs/metrics.md says."""
    table = headline_markdown({"auc_macro": 0.51234, "x2x_map5": float("nan"), "r2x_map5": None})
    assert "| classification AUC, macro | 0.5123 |" in table
    assert "| image→image mAP@5 (official: absent classes = 0) | n/a |" in table
    assert "| report→image mAP@5 (official) | n/a |" in table
