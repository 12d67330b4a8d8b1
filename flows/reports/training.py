"""What the training flows show: loss curves, per-epoch tables and their artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure


def plot_generator_losses(out: Path) -> Path:
    """Both loss curves of a train-generator folder (raw and a 50-step moving average)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, name in zip(axes, (GENERATOR_DIR, CLASSIFIER_DIR), strict=True):
        table = pd.read_csv(out / f"{name}_losses.csv")
        ax.plot(table["step"], table["loss"], alpha=0.3, label="loss")
        ax.plot(table["step"], table["loss"].rolling(50, min_periods=1).mean(), label="mean of 50")
        ax.set_title(f"{name} ({'DDPM eps MSE' if name == GENERATOR_DIR else 'masked BCE'})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    figure.tight_layout()
    return save_figure(figure, out / "loss_curves.png", dpi=100)


def publish_generator(
    key: str,
    store: str,
    out: str,
    runs: list[Any],
    by_level: pd.DataFrame,
    metrics: pd.DataFrame,
    plot: Path,
) -> None:
    """The classifier's AUC per noise level (table) and the run summary with the curves."""
    table_artifact(
        f"{key}-classifier-auc",
        metrics,
        "Noise-aware classifier on the evaluation split: AUC and accuracy per class and t.",
    )
    markdown_artifact(
        f"{key}-summary",
        "\n".join(
            [
                f"## train-generator: {store} -> {out}",
                "",
                "| model | steps | seconds | last loss | sha256 |",
                "|---|---|---|---|---|",
                *[
                    f"| {r.name} | {r.steps_before} → {r.steps_after} | {r.seconds:.0f} | "
                    f"{r.final_loss:.4f} | `{r.sha256[:16]}` |"
                    for r in runs
                ],
                "",
                "Classifier mean AUC by noise level t:",
                "",
                "```",
                by_level.to_string(index=False, float_format="%.3f"),
                "```",
                "",
                image_markdown(plot, "loss curves"),
            ]
        ),
        "Generator and classifier: steps, last loss, weights sha256, AUC by t, loss curves.",
    )


def plot_clip_curves(history: pd.DataFrame, path: Path) -> Path:
    """Train / validation hybrid loss and validation macro AUC per epoch."""
    figure, (losses, aucs) = plt.subplots(1, 2, figsize=(9, 3.2))
    for column, style in (("train_loss", "-o"), ("val_loss", "-s")):
        losses.plot(history["epoch"], history[column], style, label=column, markersize=3)
    losses.set_xlabel("epoch")
    losses.set_ylabel("hybrid loss")
    losses.legend()
    aucs.plot(history["epoch"], history["val_macro_auc"], "-o", markersize=3)
    aucs.set_xlabel("epoch")
    aucs.set_ylabel("validation macro AUC")
    figure.tight_layout()
    return save_figure(figure, path)


def publish_clip(key: str, store: str, out: str, summary: dict[str, Any]) -> None:
    """Per-epoch metrics (table) and the run summary with the curves."""
    history: pd.DataFrame = summary["history"]
    table_artifact(
        f"{key}-metrics", history.round(4), f"Per-epoch losses and validation macro AUC of {out}."
    )
    curves = Path(out) / "loss_curves.png"
    markdown_artifact(
        f"{key}-summary",
        "\n".join(
            [
                f"## train: {store} ({summary['heatmap_mode']}, preset {summary['preset']})",
                "",
                f"Train items {summary['train_items']}, validate items "
                f"{summary['validate_items']}; excluded {summary['excluded']}.",
                f"Best epoch {summary['best_epoch']} (selection value "
                f"{summary['best_metric']:.4f}); {summary['epochs_run']} epoch(s) run in "
                f"{summary['seconds']:.1f} s.",
                "",
                image_markdown(curves, "loss curves") if curves.is_file() else "",
                "",
                f"Checkpoint: `{summary['best']}`",
            ]
        ),
        f"Contrastive training of {out}: data counts, best epoch, loss and AUC curves.",
    )


def epoch_line(row: dict[str, float]) -> str:
    """One epoch in one line for a terminal."""
    auc = row["val_macro_auc"]
    return (
        f"epoch {int(row['epoch']):>3}: train {row['train_loss']:.3f} "
        f"(clip {row['train_clip']:.3f}, cls {row['train_cls']:.3f}), "
        f"val {row['val_loss']:.3f}, val AUC {'n/a' if auc != auc else f'{auc:.3f}'}, "
        f"lr {row['lr']:.2e}, {row['seconds']:.1f} s"
    )
