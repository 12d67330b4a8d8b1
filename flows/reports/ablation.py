"""What the ablation flow shows: the mean ± std table, the bar chart and the artifacts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from daug_core.evaluation.study_statistics import HEADLINE
from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure

METRIC_LABELS = {
    "auc_macro": "AUC macro",
    "auc_weighted": "AUC weighted",
    "x2x_map5": "x→x mAP@5",
    "x2x_wmap5": "x→x wmAP@5",
    "r2x_map5": "r→x mAP@5",
    "r2x_wmap5": "r→x wmAP@5",
}


def results_markdown(summary: pd.DataFrame, seeds: list[int]) -> str:
    """The table of means (± the sample std over seeds; one seed has none to show)."""
    labels = METRIC_LABELS
    what = f"Mean ± std over seeds {seeds}" if len(seeds) > 1 else f"One seed ({seeds[0]})"
    lines = [
        f"{what} (test split; mAP@5 is the official convention: "
        "classes without a query count as 0).",
        "",
        "| variant | " + " | ".join(labels[m] for m in HEADLINE) + " |",
        "|---|" + "---|" * len(HEADLINE),
    ]
    for variant, row in summary.iterrows():
        cells = [
            f"{row[('mean', m)]:.3f}"
            + (f" ± {_fmt_std(row[('std', m)])}" if len(seeds) > 1 else "")
            for m in HEADLINE
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_std(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def plot_ablation(summary: pd.DataFrame, path: Path) -> Path:
    metrics = ("auc_macro", "x2x_map5", "r2x_map5")
    figure, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(summary)
    x = np.arange(len(metrics))
    for i, (variant, row) in enumerate(summary.iterrows()):
        means = [row[("mean", m)] for m in metrics]
        stds = [np.nan_to_num(row[("std", m)]) for m in metrics]
        ax.bar(x + i * width, means, width, yerr=stds, capsize=2, label=str(variant))
    ax.set_xticks(x + width * (len(summary) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("ablation (mean ± std over seeds)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def publish(key: str, store: str, runs: pd.DataFrame, markdown: str, chart: Path) -> None:
    table_artifact(f"{key}-runs", runs.round(4), "Headline metrics of every (variant, seed).")
    markdown_artifact(
        f"{key}-summary",
        f"## ablate: {store}\n\n{markdown}\n\n{image_markdown(chart, 'ablation')}\n",
        "Ablation grid: mean ± std per variant over seeds, and the bar chart.",
    )
