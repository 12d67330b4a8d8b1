"""Evaluate flow: classification AUC, class-based retrieval and pair retrieval of a trained
contrastive checkpoint, exactly as docs/metrics.md defines them.

Queries are the test split; the retrieval database is train + validate images. Writes, into
``OUT`` (default: the checkpoint's folder)::

    metrics.json        every number below, with the checkpoint's sha256 and the data counts
    test_outputs.npz    per test image: probabilities, labels, x→x and r→x AP@5 per class (what
                        ``daug study`` resamples for its intervals)
    auc_per_class.csv   per-class ROC AUC (undefined classes empty)
    retrieval.csv       AP per class and k for image→image and report→image
    roc_curves.png      ROC curve per class on the test split
    precision_at_k.png  mAP@k / wmAP@k against k for both directions
    examples.png        test images with their heatmap channels (and ground-truth masks)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from daug_core.checkpoints.contrastive import ClipCheckpoint, load_clip_checkpoint
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.compute import Compute, ComputeSettings, cpu_fp32
from daug_core.contrastive.losses import HybridContrastiveLoss
from daug_core.contrastive.model import build_tokenizer
from daug_core.contrastive.training import ClipBatch, Embedded, embed
from daug_core.evaluation.classification import ClassificationAuc, classification_auc
from daug_core.evaluation.retrieval import ClassRetrieval, PairRecall, class_retrieval, pair_recall
from daug_core.evaluation.study_statistics import RunOutputs
from daug_core.labels import CHEXPERT_LABELS
from flows.reports import evaluation as report
from flows.reports.artifacts import artifact_key, run_namer
from flows.reports.files import RunFolder, write_json
from flows.reports.html import format_cell
from flows.runtime.contrastive import prompt_tokens
from storage.datasets.contrastive import ContrastiveDataset, make_loader
from storage.store.location import Location
from storage.store.status import remember_evaluation

log = logging.getLogger(__name__)
CLASS_KS = (1, 3, 5, 10)
PAIR_KS = (1, 5, 10)
TEST_OUTPUTS = "test_outputs.npz"


@dataclass(frozen=True)
class SplitEmbedding:
    embedded: Embedded
    dicom_ids: list[str]
    study_ids: list[str]
    indices: np.ndarray


def embed_split(
    loaded: ClipCheckpoint,
    store: str | Path,
    splits: list[str],
    heatmap_version: str | None,
    batch_size: int = 64,
    compute: Compute | None = None,
) -> SplitEmbedding:
    """Embeddings of the finished items of ``splits`` (items without heatmaps left out)."""
    targets = list(loaded.heatmap_targets) or None
    dataset = ContrastiveDataset(
        store,
        splits,
        heatmap_version=heatmap_version if targets else None,
        heatmap_targets=targets,
        missing_heatmaps="exclude",
        augment=None,
        text_transform=build_tokenizer(loaded.config.model),
    )
    dicom_ids: list[str] = []
    study_ids: list[str] = []
    indices: list[int] = []

    def batches() -> Iterator[ClipBatch]:
        for items in make_loader(dataset, batch_size, shuffle=False, seed=0):
            dicom_ids.extend(items["dicom_id"])
            study_ids.extend(items["study_id"])
            indices.extend(int(i) for i in items["index"])
            yield ClipBatch(items["image"], items["heatmaps"], items["tokens"], items["labels"])

    embedded = embed(
        loaded.model,
        HybridContrastiveLoss(loaded.config.loss),
        batches(),
        prompt_tokens(loaded.config),
        compute=compute,
    )
    return SplitEmbedding(embedded, dicom_ids, study_ids, np.asarray(indices, dtype=np.int64))


@dataclass(frozen=True)
class Evaluation:
    classification: ClassificationAuc
    image_to_image: ClassRetrieval
    report_to_image: ClassRetrieval
    pairs: PairRecall
    test: SplitEmbedding
    database: SplitEmbedding

    def headline(self) -> dict[str, float]:
        """The numbers a results table shows (k = 5 for class retrieval): NaN (``null`` in
        metrics.json) where a number is undefined, e.g. @5 with a database under 5 items."""
        x2x, r2x = self.image_to_image.get(5), self.report_to_image.get(5)
        recall = dict(zip(self.pairs.ks, self.pairs.image_to_report, strict=True))
        return {
            "auc_macro": self.classification.macro,
            "auc_weighted": self.classification.weighted,
            "x2x_map5": x2x.map_official if x2x else math.nan,
            "x2x_wmap5": x2x.wmap if x2x else math.nan,
            "r2x_map5": r2x.map_official if r2x else math.nan,
            "r2x_wmap5": r2x.wmap if r2x else math.nan,
            "i2r_recall5": recall.get(5, math.nan),
        }

    def test_outputs(self) -> RunOutputs:
        """Per test image: what the headline's AUCs and mAP@5s are computed from."""
        return RunOutputs(
            ids=np.asarray(self.test.dicom_ids, dtype=str),
            probabilities=np.asarray(self.test.embedded.probabilities, dtype=np.float64),
            labels=np.asarray(self.test.embedded.labels, dtype=np.float64),
            x2x_ap=self.image_to_image.at(5).query_ap,
            r2x_ap=self.report_to_image.at(5).query_ap,
        )


def evaluate(
    loaded: ClipCheckpoint,
    store: str | Path,
    heatmap_version: str | None,
    compute: Compute | None = None,
) -> Evaluation:
    """Every metric of docs/metrics.md for one checkpoint on one store (on the model's device)."""
    test = embed_split(loaded, store, ["test"], heatmap_version, compute=compute)
    database = embed_split(loaded, store, ["train", "validate"], heatmap_version, compute=compute)
    t, d = test.embedded, database.embedded
    class_ks = tuple(k for k in CLASS_KS if k <= len(d.image))
    pair_ks = tuple(k for k in PAIR_KS if k <= len(t.image))
    return Evaluation(
        classification=classification_auc(t.probabilities, t.labels, CHEXPERT_LABELS),
        image_to_image=class_retrieval(
            t.image, t.labels, d.image, d.labels, CHEXPERT_LABELS, class_ks
        ),
        report_to_image=class_retrieval(
            t.text, t.labels, d.image, d.labels, CHEXPERT_LABELS, class_ks
        ),
        pairs=pair_recall(t.image, t.text, test.study_ids, pair_ks),
        test=test,
        database=database,
    )


def _retrieval_dict(result: ClassRetrieval) -> dict[str, Any]:
    return {
        str(r.k): {
            "map_official": r.map_official,
            "map_present": r.map_present,
            "wmap": r.wmap,
            "ap": dict(zip(result.class_names, r.ap, strict=True)),
        }
        for r in result.results
    }


def metrics_dict(evaluation: Evaluation) -> dict[str, Any]:
    c = evaluation.classification
    return {
        "headline": evaluation.headline(),
        "classification": {
            "per_class": c.per_class,
            "positives": c.positives,
            "macro": c.macro,
            "weighted": c.weighted,
            "undefined": list(c.undefined),
        },
        "retrieval": {
            "queries": evaluation.image_to_image.num_queries,
            "database": evaluation.image_to_image.database_size,
            "queries_per_class": dict(
                zip(CHEXPERT_LABELS, evaluation.image_to_image.queries_per_class, strict=True)
            ),
            "image_to_image": _retrieval_dict(evaluation.image_to_image),
            "report_to_image": _retrieval_dict(evaluation.report_to_image),
        },
        "pair_recall": {
            "ks": list(evaluation.pairs.ks),
            "image_to_report": list(evaluation.pairs.image_to_report),
            "report_to_image": list(evaluation.pairs.report_to_image),
            "pairs": evaluation.pairs.num_pairs,
        },
    }


def evaluate_checkpoint(
    checkpoint: str | Path | Location,
    store: str | Path,
    out: str | Path | Location | None = None,
    heatmap_version: str | None = None,
    truth: str | Path | None = None,
    plots: bool = True,
    compute: Compute | None = None,
) -> dict[str, Any]:
    """Evaluate (on ``compute``'s device and precision; default CPU, float32) and write
    metrics.json, the CSV tables and the plots; returns metrics.json."""
    start = time.perf_counter()
    compute = compute or cpu_fp32()
    source = Location.of(checkpoint)
    local = RunFolder(source)
    local.pull()  # a checkpoint on object storage is read from a local copy
    loaded = load_clip_checkpoint(local.local)
    loaded.model.to(compute.device)
    version = heatmap_version or loaded.info.get("heatmap_version")
    folder = RunFolder(Location.of(out) if out else source.parent)
    target = folder.local
    evaluation = evaluate(loaded, store, version, compute)
    metrics = {
        "checkpoint": source.url,
        "checkpoint_sha256": checkpoint_sha256(local.local),
        "store": Location.of(store).url,
        "heatmap_version": version if loaded.heatmap_targets else None,
        "heatmap_mode": loaded.config.model.heatmap_mode,
        "heatmap_targets": list(loaded.heatmap_targets),
        "loss_weight": loaded.config.loss.weight,
        "compute": compute.record(),
        "test_items": len(evaluation.test.indices),
        "database_items": len(evaluation.database.indices),
        **metrics_dict(evaluation),
    }
    pd.DataFrame(evaluation.classification.rows()).to_csv(target / "auc_per_class.csv", index=False)
    if any(r.k == 5 for r in evaluation.image_to_image.results):
        evaluation.test_outputs().save(target / TEST_OUTPUTS)
    retrieval = [
        {"direction": name, **row}
        for name, result in (
            ("image_to_image", evaluation.image_to_image),
            ("report_to_image", evaluation.report_to_image),
        )
        for row in result.rows()
    ]
    pd.DataFrame(retrieval).to_csv(target / "retrieval.csv", index=False)
    if plots:
        report.plot_roc_curves(evaluation, target / "roc_curves.png")
        report.plot_precision_at_k(evaluation, target / "precision_at_k.png")
        report.plot_examples(
            loaded,
            store,
            version,
            evaluation.test,
            Path(truth) if truth else None,
            target / "examples.png",
        )
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    write_json(metrics, target / "metrics.json")
    folder.sync()
    return metrics


@flow(name="evaluate", flow_run_name=run_namer("evaluate", "checkpoint", parent=True))
def evaluate_flow(
    checkpoint: str,
    store: str,
    out: str | None = None,
    heatmap_version: str | None = None,
    truth: str | None = None,
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Evaluate a trained contrastive checkpoint (a ``best/`` or ``last/`` folder) on STORE.

    Args:
        checkpoint: checkpoint folder written by the train flow.
        store: image store (its test split = queries, train + validate = database).
        out: output folder (default: the checkpoint's parent).
        heatmap_version: heatmap version to read (default: the one the model trained on).
        truth: synthetic ground-truth folder (``OUT/ground_truth``) for the example grid.
        compute: device (auto: CUDA when present) and precision of the embedding passes.
    """
    logger = get_run_logger()
    amp = compute.resolve()
    metrics = evaluate_checkpoint(checkpoint, store, out, heatmap_version, truth, compute=amp)
    target = RunFolder(Location.of(out) if out else Location.of(checkpoint).parent)
    key = artifact_key("evaluate", Location.of(checkpoint).parent.name)
    report.publish(key, checkpoint, target.local, metrics)
    # The store remembers its last evaluation (`daug status`, reprocess metric deltas).
    remember_evaluation(store, target.location.child("metrics.json").url, metrics)
    headline = metrics["headline"]
    logger.info(
        "evaluation of %s: AUC macro %s, x2x mAP@5 %s, r2x mAP@5 %s",
        checkpoint,
        *(format_cell(headline[name]) for name in ("auc_macro", "x2x_map5", "r2x_map5")),
    )
    logger.debug("evaluation headline: %s", headline)
    return metrics
