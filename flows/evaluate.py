"""Evaluate flow: classification AUC, class-based retrieval and pair retrieval of a trained
contrastive checkpoint, exactly as ../shared/EVALUATION.md defines them.

Queries are the test split; the retrieval database is train + validate images. Writes, into
``OUT`` (default: the checkpoint's folder)::

    metrics.json        every number below, with the checkpoint's sha256 and the data counts
    auc_per_class.csv   per-class ROC AUC (undefined classes empty)
    retrieval.csv       AP per class and k for image→image and report→image
    roc_curves.png      ROC curve per class on the test split
    precision_at_k.png  mAP@k / wmAP@k against k for both directions
    examples.png        test images with their heatmap channels (and ground-truth masks)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from sklearn.metrics import roc_curve

from daug_core.checkpoints import checkpoint_sha256
from daug_core.clip_model import build_tokenizer
from daug_core.clip_training import (
    ClipBatch,
    ClipCheckpoint,
    Embedded,
    embed,
    load_clip_checkpoint,
)
from daug_core.losses import HybridContrastiveLoss
from daug_core.metrics import ClassificationAuc, classification_auc
from daug_core.retrieval import ClassRetrieval, PairRecall, class_retrieval, pair_recall
from flows.monitoring import artifact_key, table_artifact
from flows.train import prompt_tokens
from storage.contrastive_dataset import ContrastiveDataset, make_loader
from storage.image_store import ImageStore
from storage.ingest import store_fit_mode
from storage.labels import CHEXPERT_LABELS
from storage.status import record_evaluation
from storage.synthetic.ground_truth import GroundTruthMasks

log = logging.getLogger(__name__)
CLASS_KS = (1, 3, 5, 10)
PAIR_KS = (1, 5, 10)


def _run_name() -> str:
    params = flow_run.parameters
    checkpoint = Path(str(params.get("checkpoint", "checkpoint")))
    return f"evaluate-{checkpoint.parent.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


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
        """The numbers a results table shows (k = 5 for class retrieval)."""
        x2x, r2x = self.image_to_image.at(5), self.report_to_image.at(5)
        recall = dict(zip(self.pairs.ks, self.pairs.image_to_report, strict=True))
        return {
            "auc_macro": self.classification.macro,
            "auc_weighted": self.classification.weighted,
            "x2x_map5": x2x.map_official,
            "x2x_wmap5": x2x.wmap,
            "r2x_map5": r2x.map_official,
            "r2x_wmap5": r2x.wmap,
            "i2r_recall5": recall.get(5, math.nan),
        }


def evaluate(loaded: ClipCheckpoint, store: str | Path, heatmap_version: str | None) -> Evaluation:
    """Every metric of EVALUATION.md for one checkpoint on one store."""
    test = embed_split(loaded, store, ["test"], heatmap_version)
    database = embed_split(loaded, store, ["train", "validate"], heatmap_version)
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


# ---- plots ----------------------------------------------------------------------------------
def plot_roc_curves(evaluation: Evaluation, path: Path) -> None:
    t = evaluation.test.embedded
    figure, ax = plt.subplots(figsize=(5.5, 5))
    for c, name in enumerate(CHEXPERT_LABELS):
        auc = evaluation.classification.per_class[name]
        if math.isnan(auc):
            continue
        keep = ~np.isnan(t.labels[:, c])
        fpr, tpr, _ = roc_curve(t.labels[keep, c], t.probabilities[keep, c])
        ax.plot(fpr, tpr, label=f"{name} ({auc:.2f})", linewidth=1)
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"test ROC, macro AUC {evaluation.classification.macro:.3f}", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_precision_at_k(evaluation: Evaluation, path: Path) -> None:
    figure, ax = plt.subplots(figsize=(5, 3.5))
    for label, result in (
        ("image→image", evaluation.image_to_image),
        ("report→image", evaluation.report_to_image),
    ):
        ks = [r.k for r in result.results]
        ax.plot(ks, [r.map_official for r in result.results], "-o", label=f"{label} mAP@k")
        ax.plot(ks, [r.wmap for r in result.results], "--s", label=f"{label} wmAP@k")
    ax.set_xlabel("k")
    ax.set_ylabel("mean average precision")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_examples(
    loaded: ClipCheckpoint,
    store: str | Path,
    heatmap_version: str | None,
    test: SplitEmbedding,
    truth: Path | None,
    path: Path,
    count: int = 6,
) -> None:
    """Test images, their heatmap channels and, with ``truth``, the union of their lesion
    masks fitted to the store's geometry."""
    targets = list(loaded.heatmap_targets) or None
    dataset = ContrastiveDataset(
        store,
        "test",
        heatmap_version=heatmap_version if targets else None,
        heatmap_targets=targets,
    )
    masks = GroundTruthMasks.open(truth) if truth else None
    fit = store_fit_mode(ImageStore.open(store, read_only=True))
    rows = min(count, len(dataset))
    k = len(loaded.heatmap_targets)
    cols = 1 + k + (1 if masks is not None else 0)
    figure, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.7 * rows), squeeze=False)
    for r in range(rows):
        item = dataset[r]
        image = item["image"][0].numpy()
        axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(item["dicom_id"][:10], fontsize=6)
        for c in range(k):
            axes[r, 1 + c].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[r, 1 + c].imshow(item["heatmaps"][c].numpy(), cmap="jet", alpha=0.5)
            if r == 0:
                axes[r, 1 + c].set_title(loaded.heatmap_targets[c], fontsize=7)
        if masks is not None:
            union = np.zeros_like(image)
            if item["dicom_id"] in masks:
                fitted = masks.masks(item["dicom_id"], image.shape[0], fit)
                union = np.asarray(fitted.any(axis=0), dtype=np.float32)
            axes[r, -1].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[r, -1].imshow(np.ma.masked_equal(union, 0), cmap="autumn", alpha=0.6)
            if r == 0:
                axes[r, -1].set_title("lesion masks", fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | Path,
    out: str | Path | None = None,
    heatmap_version: str | None = None,
    truth: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate and write metrics.json, the CSV tables and the plots; returns metrics.json."""
    start = time.perf_counter()
    loaded = load_clip_checkpoint(checkpoint)
    version = heatmap_version or loaded.info.get("heatmap_version")
    target = Path(out) if out else Path(checkpoint).parent
    target.mkdir(parents=True, exist_ok=True)
    evaluation = evaluate(loaded, store, version)
    metrics = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": checkpoint_sha256(checkpoint),
        "store": str(Path(store).resolve()),
        "heatmap_version": version if loaded.heatmap_targets else None,
        "heatmap_mode": loaded.config.model.heatmap_mode,
        "heatmap_targets": list(loaded.heatmap_targets),
        "loss_weight": loaded.config.loss.weight,
        "test_items": len(evaluation.test.indices),
        "database_items": len(evaluation.database.indices),
        **metrics_dict(evaluation),
    }
    pd.DataFrame(evaluation.classification.rows()).to_csv(target / "auc_per_class.csv", index=False)
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
        plot_roc_curves(evaluation, target / "roc_curves.png")
        plot_precision_at_k(evaluation, target / "precision_at_k.png")
        plot_examples(
            loaded,
            store,
            version,
            evaluation.test,
            Path(truth) if truth else None,
            target / "examples.png",
        )
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    tmp = target / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    tmp.replace(target / "metrics.json")
    return metrics


def headline_markdown(headline: dict[str, float]) -> str:
    names = {
        "auc_macro": "classification AUC, macro",
        "auc_weighted": "classification AUC, weighted",
        "x2x_map5": "image→image mAP@5 (official: absent classes = 0)",
        "x2x_wmap5": "image→image wmAP@5",
        "r2x_map5": "report→image mAP@5 (official)",
        "r2x_wmap5": "report→image wmAP@5",
        "i2r_recall5": "image→report Recall@5",
    }
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {names[k]} | {v:.4f} |" for k, v in headline.items()]
    return "\n".join(lines)


@flow(name="evaluate", flow_run_name=_run_name)
def evaluate_flow(
    checkpoint: str,
    store: str,
    out: str | None = None,
    heatmap_version: str | None = None,
    truth: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained contrastive checkpoint (a ``best/`` or ``last/`` folder) on STORE.

    Args:
        checkpoint: checkpoint folder written by the train flow.
        store: image store (its test split = queries, train + validate = database).
        out: output folder (default: the checkpoint's parent).
        heatmap_version: heatmap version to read (default: the one the model trained on).
        truth: synthetic ground-truth folder (``OUT/ground_truth``) for the example grid.
    """
    logger = get_run_logger()
    metrics = evaluate_checkpoint(checkpoint, store, out, heatmap_version, truth)
    target = Path(out) if out else Path(checkpoint).parent
    key = artifact_key("evaluate", Path(checkpoint).parent.name)
    per_class = pd.DataFrame(
        {
            "class": list(CHEXPERT_LABELS),
            "auc": [metrics["classification"]["per_class"][c] for c in CHEXPERT_LABELS],
            "positives": [metrics["classification"]["positives"][c] for c in CHEXPERT_LABELS],
        }
    )
    table_artifact(f"{key}-auc", per_class.round(4), "Per-class test ROC AUC (empty: undefined).")
    plots = "\n\n".join(
        f"![{name}]({(target / name).resolve().as_uri()})"
        for name in ("roc_curves.png", "precision_at_k.png", "examples.png")
    )
    create_markdown_artifact(
        key=f"{key}-summary",
        markdown=f"## evaluate: {checkpoint}\n\n"
        f"{metrics['test_items']} test queries, {metrics['database_items']} database images, "
        f"mode {metrics['heatmap_mode']}, w = {metrics['loss_weight']}.\n\n"
        f"{headline_markdown(metrics['headline'])}\n\n{plots}\n",
    )
    # The store remembers its last evaluation (`daug status`, reprocess metric deltas).
    record_evaluation(ImageStore.open(store), target / "metrics.json", metrics)
    logger.info("evaluation of %s: %s", checkpoint, metrics["headline"])
    return metrics
