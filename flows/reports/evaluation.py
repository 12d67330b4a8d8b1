"""What the evaluate flow shows: ROC curves, precision at k, example images, the headline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from daug_core.checkpoints.contrastive import ClipCheckpoint
from daug_core.labels import CHEXPERT_LABELS
from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure
from flows.reports.html import format_cell
from storage.datasets.contrastive import ContrastiveDataset
from storage.store.image import ImageStore
from storage.store.ingest_shards import store_fit_mode
from storage.synthetic.ground_truth import GroundTruthMasks

if TYPE_CHECKING:
    from flows.evaluate import Evaluation, SplitEmbedding

PLOTS = ("roc_curves.png", "precision_at_k.png", "examples.png")


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
    save_figure(figure, path)


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
    save_figure(figure, path)


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
    save_figure(figure, path)


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
    # An undefined number (NaN, or null read back from metrics.json) shows as n/a.
    lines += [f"| {names[k]} | {format_cell(v, 4)} |" for k, v in headline.items()]
    return "\n".join(lines)


def publish(key: str, checkpoint: str, target: Path, metrics: dict[str, Any]) -> None:
    """Per-class AUC (table) and the summary with the headline and the plots."""
    per_class = pd.DataFrame(
        {
            "class": list(CHEXPERT_LABELS),
            "auc": [metrics["classification"]["per_class"][c] for c in CHEXPERT_LABELS],
            "positives": [metrics["classification"]["positives"][c] for c in CHEXPERT_LABELS],
        }
    )
    table_artifact(f"{key}-auc", per_class.round(4), "Per-class test ROC AUC (empty: undefined).")
    plots = "\n\n".join(
        image_markdown(target / name, name.removesuffix(".png").replace("_", " "))
        for name in PLOTS
        if (target / name).is_file()
    )
    markdown_artifact(
        f"{key}-summary",
        f"## evaluate: {checkpoint}\n\n"
        f"{metrics['test_items']} test queries, {metrics['database_items']} database images, "
        f"mode {metrics['heatmap_mode']}, w = {metrics['loss_weight']}.\n\n"
        f"{headline_markdown(metrics['headline'])}\n\n{plots}\n",
        "Test metrics of a contrastive checkpoint: headline table, ROC curves, precision@k, "
        "examples.",
    )
