"""What a precompute run shows: the summary table, the example overlay grid, the artifacts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from flows.reports.artifacts import image_markdown, markdown_artifact, table_artifact
from flows.reports.files import save_figure
from storage.store.heatmap_shards import HeatmapShardResult
from storage.store.heatmaps import HeatmapProvenance, HeatmapStore
from storage.store.image import ImageStore


def summary_table(
    results: list[HeatmapShardResult],
    targets: tuple[str, ...],
    already_done: int,
    skipped_failed: int,
    seconds: float,
) -> pd.DataFrame:
    """Items done / skipped / failed by reason, throughput and mean heat per target."""
    done = sum(r.done for r in results)
    failed: Counter[str] = Counter()
    for r in results:
        failed.update(r.failed)
    rows: list[dict[str, object]] = [
        {"group": "items", "value": "done", "number": done},
        {"group": "items", "value": "skipped (already done)", "number": already_done},
        {"group": "items", "value": "skipped (failed before)", "number": skipped_failed},
        *[
            {"group": "failed", "value": reason, "number": count}
            for reason, count in sorted(failed.items())
        ],
        {
            "group": "throughput",
            "value": "image·class/s",
            "number": round(done * len(targets) / seconds, 3) if seconds > 0 else 0.0,
        },
    ]
    heat = np.sum([r.heat_sum for r in results], axis=0) if results else np.zeros(len(targets))
    for target, total in zip(targets, np.atleast_1d(heat), strict=True):
        mean = float(total) / done if done else float("nan")
        rows.append({"group": "mean heat", "value": target, "number": round(mean, 5)})
    return pd.DataFrame(rows)


def plot_examples(
    images: ImageStore, heatmaps: HeatmapStore, indices: np.ndarray, out: Path
) -> Path | None:
    """A grid: one row per item, the image then each target's heatmap over it."""
    if len(indices) == 0:
        return None
    pixels = images.read_images(indices)
    maps = heatmaps.read_heatmaps(indices)
    k = len(heatmaps.targets)
    figure, axes = plt.subplots(
        len(indices), k + 1, figsize=(1.6 * (k + 1), 1.6 * len(indices)), squeeze=False
    )
    extent = (0.0, 1.0, 1.0, 0.0)  # image and heatmap may differ in pixels, not in area
    for row, (image, heat) in enumerate(zip(pixels, maps, strict=True)):
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
        axes[row, 0].set_ylabel(str(indices[row]), fontsize=7)
        for col in range(k):
            ax = axes[row, col + 1]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
            ax.imshow(heat[col], cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
            if row == 0:
                ax.set_title(heatmaps.targets[col], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=7)
    figure.tight_layout()
    return save_figure(figure, out / "examples.png")


def publish(
    key: str,
    store: str,
    version: str,
    provenance: HeatmapProvenance,
    summary: pd.DataFrame,
    failures: pd.DataFrame,
    counts: dict[str, Any],
    grid: Path | None,
    run_dir: str,
) -> None:
    """The run's artifacts: summary and failure tables, and the markdown with the grid."""
    tr = provenance.translation
    table_artifact(
        f"{key}-summary",
        summary,
        f"Heatmaps {version} of {store}: items, failures by reason, throughput, mean heat.",
    )
    table_artifact(f"{key}-failures", failures, "Items without heatmaps, with the reason.")
    markdown_artifact(
        f"{key}-examples",
        "\n".join(
            [
                f"## precompute: {store} → heatmaps/{version}",
                "",
                f"Targets (channel order): {', '.join(provenance.targets)}; "
                f"{tr.mode} guidance, scale {tr.scale}, level {tr.level}, "
                f"{tr.steps} DDIM steps, preset {provenance.preset}.",
                "",
                f"Done now: {counts['done']}; already done: {counts['already_done']}; "
                f"failed items: {len(failures)}; {counts['seconds']:.1f} s.",
                "",
                image_markdown(grid, "example heatmaps") if grid else "No examples yet.",
                "",
                f"Run folder: `{run_dir}`",
            ]
        ),
        f"Heatmaps {version}: settings, counts and an image/heatmap grid of finished items.",
    )
