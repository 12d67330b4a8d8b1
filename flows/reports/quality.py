"""What the heatmap-quality flow shows: the sweep plot, case grids, tables and the report.

The scoring itself lives in :mod:`flows.quality`; this module only draws and publishes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from daug_core.diffusion.config import GuidanceMode
from daug_core.diffusion.targets import Target
from daug_core.labels import SUPER_CLASS_NAMES, slug
from daug_core.strict_json import strict
from flows.quality.scoring import HEADLINE_METRICS, ItemKind, failures_of, target_mask
from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure
from storage.geometry import FitMode
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic.ground_truth import GroundTruthMasks

MODES: tuple[GuidanceMode, GuidanceMode] = ("softmax", "sigmoid")
SWEEP_COLUMNS: tuple[str, ...] = (
    "label",
    "target",
    "items",
    "seconds_per_image",
    "pointing_game",
    "pixel_auroc",
    "mass_inside",
    "off_target_share",
    "specificity",
    "chance_specificity",
)


@dataclass(frozen=True)
class ScoredSource:
    """One scored heatmap version: its item scores and per-target summary."""

    name: str
    version: str
    store: HeatmapStore
    scores: pd.DataFrame
    summary: pd.DataFrame


def plot_sweep(table: pd.DataFrame, path: Path) -> Path:
    """Pointing game and pixel AUROC of the sweep's first target against the noise level, one
    line per (mode, scale, steps) whose legend gives its seconds per image; a third panel
    shows the seconds per image (every target's rows are in sweep.csv)."""
    target = str(table["target"].iloc[0])
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    first = table[table["target"] == target]
    for (mode, scale, steps), group in first.groupby(["mode", "scale", "steps"], sort=True):
        group = group.sort_values("level")
        seconds = float(group["seconds_per_image"].mean())
        label = f"{mode} s={scale:g}, {steps} steps ({seconds:.2f} s/image)"
        for ax, metric in ((axes[0], "pointing_game"), (axes[1], "pixel_auroc")):
            ax.plot(group["level"], group[metric], marker="o", label=label)
    for ax, title in ((axes[0], "pointing game"), (axes[1], "pixel AUROC")):
        ax.set_ylim(-0.05, 1.05)  # both metrics live in [0, 1]; a fixed axis compares runs
        ax.set_xlabel("noise level L")
        ax.set_ylabel(title)
        ax.set_title(f"{target}: {title}", fontsize=9)
    axes[1].legend(fontsize=7)
    timing = first.groupby("steps")["seconds_per_image"].mean()
    # Bars at positions with the step counts as tick labels: bars at strings that read as
    # numbers make matplotlib log a notice about categorical units on every plot.
    positions = np.arange(len(timing))
    axes[2].bar(positions, timing.to_numpy())
    axes[2].set_xticks(positions, [str(n) for n in timing.index])
    axes[2].set_xlabel("DDIM steps (each way)")
    axes[2].set_ylabel("seconds per image")
    axes[2].set_title("cost (inversion + guided decoding)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def pick_cases(scores: pd.DataFrame, target: str, count: int) -> list[int]:
    """Up to ``count`` item indices for ``target``: lesion images first, then the rest."""
    mine = scores[(scores["target"] == target) & (scores["kind"] != ItemKind.FAILED.value)]
    ordered = pd.concat(
        [mine[mine["kind"] == ItemKind.LESION.value], mine[mine["kind"] != ItemKind.LESION.value]]
    )
    return [int(i) for i in dict.fromkeys(ordered["index"])][: max(0, count)]


def plot_cases(
    image_store: ImageStore,
    sources: dict[str, HeatmapStore],
    truth: GroundTruthMasks,
    fit: FitMode,
    target: str,
    indices: Sequence[int],
    path: Path,
    class_names: Sequence[str] = SUPER_CLASS_NAMES,
) -> Path | None:
    """One row per case: the image, each source's ``target`` heatmap over it (colour scale
    0 to that map's maximum, so weak maps stay readable), the ground-truth masks (the
    target's lesion yellow, the image's other lesions orange)."""
    if not indices:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    pixels = image_store.read_images(idx)
    dicom_ids = image_store.items().set_index("index").loc[idx, "dicom_id"].tolist()
    maps = {
        name: store.read_heatmaps(idx)[:, list(store.targets).index(target)]
        for name, store in sources.items()
    }
    cols = 2 + len(sources)
    figure, axes = plt.subplots(len(idx), cols, figsize=(1.8 * cols, 1.8 * len(idx)), squeeze=False)
    extent = (0.0, 1.0, 1.0, 0.0)  # image and heatmap may differ in pixels, not in area
    name = Target.parse(target, class_names).class_name
    for row, (image, dicom_id) in enumerate(zip(pixels, dicom_ids, strict=True)):
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        axes[row, 0].set_ylabel(f"{idx[row]}: {str(dicom_id)[:8]}", fontsize=6)
        for col, (source, heat) in enumerate(maps.items(), start=1):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
            peak = float(np.nanmax(heat[row])) if np.isfinite(heat[row]).any() else 1.0
            ax.imshow(heat[row], cmap="jet", alpha=0.5, vmin=0, vmax=max(peak, 1e-6), extent=extent)
            if row == 0:
                ax.set_title(f"{source}", fontsize=7)
        ax = axes[row, -1]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        if str(dicom_id) in truth:
            masks = truth.masks(str(dicom_id), image.shape[0], fit)
            lesions = masks.any(axis=0).astype(float) * 0.4
            own = target_mask(masks, name)
            overlay = np.where(own, 1.0, lesions)
            ax.imshow(
                np.ma.masked_equal(overlay, 0),
                cmap="autumn",
                vmin=0,
                vmax=1,
                alpha=0.7,
                extent=extent,
            )
        else:
            ax.text(0.5, 0.5, "no masks", ha="center", va="center", fontsize=6, color="red")
        if row == 0:
            ax.set_title("lesion mask", fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(target, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if math.isnan(float(value)) else f"{float(value):.3f}"
    return str(value)


def markdown_table(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    cols = list(columns) if columns is not None else list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for _, row in table.iterrows()]
    return "\n".join(lines)


def per_target(summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The headline numbers of a summary table, keyed by target (NaN -> None)."""
    return {
        str(row["target"]): {m: strict(row[m]) for m in HEADLINE_METRICS}
        for _, row in summary.iterrows()
    }


def headline_markdown(
    scored: pd.DataFrame | None, version: str | None, modes: pd.DataFrame | None
) -> str:
    parts = []
    if scored is not None:
        parts += [
            f"Heatmaps {version}:",
            "",
            markdown_table(scored, ["target", *HEADLINE_METRICS]),
            "",
        ]
    if modes is not None:
        columns = ["target", "n_lesion_softmax"] + [
            f"{m}_{suffix}"
            for m in ("pointing_game", "pixel_auroc", "off_target_share")
            for suffix in (*MODES, "diff")
        ]
        parts += [
            "Softmax vs sigmoid guidance (diff = softmax - sigmoid; off_target_share: heat on "
            "other findings' lesions, lower is better):",
            "",
            markdown_table(modes, columns),
            "",
        ]
    return "\n".join(parts).strip() or "Nothing was scored."


def case_grids(
    image_store: ImageStore,
    scored: ScoredSource | None,
    modes: dict[str, ScoredSource],
    truth: GroundTruthMasks,
    fit: FitMode,
    count: int,
    run_dir: Path,
    class_names: Sequence[str],
) -> dict[str, Path]:
    """cases-<target>.png per target: of the mode comparison when it ran, else of the
    scored version."""
    if modes:
        sources = {name: s.store for name, s in modes.items()}
        scores = modes[MODES[0]].scores
        targets = modes[MODES[0]].store.targets
    elif scored is not None:
        sources = {scored.version: scored.store}
        scores, targets = scored.scores, scored.store.targets
    else:
        return {}
    grids: dict[str, Path] = {}
    for target in targets:
        cases = pick_cases(scores, target, count)
        path = run_dir / f"cases-{'plus' if target.startswith('+') else 'minus'}-{slug(target)}.png"
        grid = plot_cases(image_store, sources, truth, fit, target, cases, path, class_names)
        if grid is not None:
            grids[target] = grid
    return grids


def failures_table(sources: Sequence[ScoredSource]) -> pd.DataFrame:
    parts = [failures_of(s.scores).assign(source=s.name) for s in sources]
    columns = ["source", "index", "dicom_id", "reason"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).reindex(columns=columns)


def publish(
    key: str,
    store: str,
    result: dict[str, Any],
    scored: ScoredSource | None,
    modes_table: pd.DataFrame | None,
    sweep_table: pd.DataFrame | None,
    sweep_plot: Path | None,
    grids: dict[str, Path],
    failures: pd.DataFrame,
) -> None:
    run_dir = result["run_dir"]
    lines = [
        f"## heatmap quality: {store}",
        "",
        f"Splits {', '.join(result['splits'])}; pointing-game tolerance {result['tolerance']} px; "
        f"masks fitted with `{result['fit']}`; {result['failures']} failed items; "
        f"{result['seconds']:.1f} s.",
        "",
        result["markdown"],
        "",
    ]
    if scored is not None:
        table_artifact(f"{key}-summary", scored.summary.round(4), f"Heatmaps {scored.version}.")
    if modes_table is not None:
        table_artifact(
            f"{key}-modes", modes_table.round(4), "Softmax vs sigmoid guidance per target."
        )
    if sweep_table is not None:
        table_artifact(
            f"{key}-sweep",
            sweep_table.round(4),
            "Heatmaps per target over mode x scale x level x steps: localisation and "
            "specificity vs seconds per image.",
        )
        lines += [
            "Sweep (in-process):",
            "",
            markdown_table(
                sweep_table,
                SWEEP_COLUMNS,
            ),
            "",
        ]
        if sweep_plot is not None:
            lines += [image_markdown(sweep_plot, "sweep: localisation and cost"), ""]
    table_artifact(f"{key}-failures", failures, "Items that could not be scored, with the reason.")
    for target, path in grids.items():
        lines += [image_markdown(path, f"cases {target}"), ""]
    lines += ["", f"Run folder: `{run_dir}`"]
    markdown_artifact(
        f"{key}-report",
        "\n".join(lines),
        "Heatmap quality: headline tables, the sweep plot and image/heatmap/mask cases.",
    )
