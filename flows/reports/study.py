"""What the study shows: the downstream table with intervals and paired p-values, the heatmap
answers (guided vs unguided, softmax vs sigmoid), the chart and the artifacts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from daug_core.evaluation.study_statistics import HEADLINE
from flows.reports.ablation import METRIC_LABELS as LABELS
from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(estimate: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    text = "n/a" if not math.isfinite(estimate) else f"{estimate:{sign}.3f}"
    return f"{text} [{_number(low)}, {_number(high)}]"


def _means(row: pd.Series) -> str:
    """The second source's mean, then the first's: 'unguided -> softmax'."""
    return f"{_number(row['second_mean'], 2)} → {_number(row['first_mean'], 2)}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"p {value:.3f}" if value >= 0.001 else "p < 0.001"


def downstream_markdown(rows: pd.DataFrame, grid: str, baseline: str) -> str:
    """One table per grid: each variant's metric with its 95 % interval and, below the
    baseline, its difference to the baseline with interval and p."""
    first = rows.iloc[0]
    lines = [
        f"**{grid} grid**: mean over {int(first['seeds'])} seeds on {int(first['images'])} test "
        f"images, 95 % BCa bootstrap interval over the images; Δ = variant − {baseline} "
        "(paired: same resampled images), two-sided paired bootstrap p.",
        "",
        "| variant | " + " | ".join(LABELS[m] for m in HEADLINE if m in set(rows["metric"])) + " |",
        "|---|" + "---|" * rows["metric"].nunique(),
    ]
    for variant, mine in rows.groupby("variant", sort=False):
        cells = []
        for _, r in mine.iterrows():
            cell = _interval(r["estimate"], r["low"], r["high"])
            if variant != baseline:
                delta = _interval(r["difference"], r["difference_low"], r["difference_high"], True)
                cell += f"<br>Δ {delta} {_p(r['p_value'])}"
            cells.append(cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap_markdown(paired: Sequence[dict[str, Any]]) -> str:
    """The two heatmap questions from the quality flow's paired rows: does guidance add over
    the unguided reconstruction error (softmax − unguided), is softmax better than sigmoid."""
    if not paired:
        return "Heatmap quality was not run."
    table = pd.DataFrame(list(paired))
    lines = [
        "Held-out lesion images; the two means (second → first), their difference with its "
        "95 % BCa interval and paired bootstrap p (n: images where both define the metric; "
        "chance: the specificity of uniform heat on those images, their lesion-area share).",
        "",
    ]
    for first, second, title in (
        ("softmax", "unguided", "does softmax guidance add over reconstruction error"),
        ("sigmoid", "unguided", "does sigmoid guidance add over reconstruction error"),
        ("softmax", "sigmoid", "softmax vs sigmoid"),
    ):
        mine = table[(table["first"] == first) & (table["second"] == second)]
        if mine.empty:
            continue
        metrics = list(dict.fromkeys(mine["metric"]))
        lines += [
            f"**{title}** ({first} − {second})",
            "",
            "| target | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for target, rows in mine.groupby("target", sort=False):
            cells = []
            for metric in metrics:
                row = rows[rows["metric"] == metric].iloc[0]
                chance = _number(row.get("chance_mean"), 2)
                level = f", chance {chance}" if chance != "n/a" else ""
                cells.append(
                    f"{_means(row)}: "
                    f"{_interval(row['difference'], row['low'], row['high'], True)} "
                    f"{_p(row['p_value'])} (n {int(row['n'])}{level})"
                )
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_differences(rows: pd.DataFrame, path: Path) -> Path:
    """Forest plot: every variant's difference to its grid's baseline per metric, with the
    95 % interval; 0 is marked."""
    versus = rows[np.isfinite(rows["difference"].to_numpy(dtype=np.float64))]
    metrics = [m for m in HEADLINE if m in set(versus["metric"])]
    variants = list(dict.fromkeys(versus["label"]))
    figure, axes = plt.subplots(
        1, max(len(metrics), 1), figsize=(2.4 * max(len(metrics), 1), 0.4 * len(variants) + 1.4)
    )
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=False):
        mine = versus[versus["metric"] == metric].set_index("label").reindex(variants)
        y = np.arange(len(variants))
        d = mine["difference"].to_numpy(dtype=np.float64)
        low = np.nan_to_num(d - mine["difference_low"].to_numpy(dtype=np.float64))
        high = np.nan_to_num(mine["difference_high"].to_numpy(dtype=np.float64) - d)
        ax.errorbar(d, y, xerr=[low, high], fmt="o", capsize=2, markersize=3)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"Δ {LABELS[metric]}", fontsize=8)
        ax.set_yticks(y, variants if ax is axes[0] else [""] * len(variants), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()
    figure.suptitle("variant − baseline, 95 % bootstrap interval over test images", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def publish(key: str, rows: pd.DataFrame, markdown: str, chart: Path) -> None:
    table_artifact(
        f"{key}-downstream", rows.round(4), "Every variant and metric with intervals and p."
    )
    markdown_artifact(
        f"{key}-results",
        f"{markdown}\n\n{image_markdown(chart, 'differences to the baseline')}\n",
        "The study's answers: heatmaps against the unguided baseline, softmax vs sigmoid, and "
        "every ablation variant against its baseline with intervals.",
    )
