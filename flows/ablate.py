"""Ablation flow: the DAug paper's grids on one store, same splits, several seeds.

Three grids (``grid``), each four variants (paper Tables 2-3): no heatmap or the heatmap in
channel 0, times the CLIP loss alone or the hybrid loss.

* ``ours``: ``baseline`` (no heatmap, w = 1: CLIP loss only), ``daug`` (heatmap, w = 1),
  ``hybrid`` (no heatmap, hybrid loss with the settings' w, default the preset's 0.7),
  ``daug+hybrid`` (both).
* ``classification`` and ``retrieval``: the official code's grids (``configs/abl/*.yaml`` of
  github.com/drjinying/DAug), with its names and its fixed w per row. Classification:
  ``cls_baseline`` and ``cls_daug`` at w = 0 (the class loss alone), ``cls_hcontra`` and
  ``cls_all`` at w = 0.7. Retrieval: ``retrieval_baseline`` and ``retrieval_daug`` at w = 1,
  ``retrieval_hcontra`` and ``retrieval_all`` at w = 0.8.

Every (variant, seed) trains into ``OUT/<variant>/seed-<s>`` (resumable: a rerun skips
finished runs and resumes unfinished ones) and is evaluated on the test split. Writes
``OUT/ablation_runs.csv`` (one row per run), ``OUT/ablation.csv`` (mean and std per
variant), ``OUT/RESULTS.md`` and ``OUT/ablation.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from daug_core.compute import ComputeSettings
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.evaluation.study_statistics import HEADLINE
from flows.ablation_grids import (
    VARIANTS,
    AblationGrid,
    Variant,
    grid_variants,
    variant_settings,
)
from flows.evaluate import TEST_OUTPUTS, evaluate_checkpoint
from flows.reports import ablation as report
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder
from flows.runtime.contrastive import BEST, train_contrastive
from flows.runtime.notices import RUN_LOG_ONLY
from flows.runtime.retry import worth_retrying
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.location import Location

log = logging.getLogger(__name__)


@task(
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=worth_retrying,
    cache_policy=NO_CACHE,
    task_run_name="ablate-{variant.name}-seed-{seed}",
)
def ablation_run(
    store: str,
    out: Path,
    variant: Variant,
    seed: int,
    training: ClipTrainSettings,
    heatmap_version: str,
    compute: ComputeSettings,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one (variant, seed); skips both when already done
    (evaluates again when only the per-image test outputs are missing: a run finished before
    they were kept)."""
    run_dir = out / variant.name / f"seed-{seed}"
    metrics_path = run_dir / "metrics.json"
    config = variant_settings(training, variant, seed).config()
    if not (metrics_path.is_file() and (run_dir / TEST_OUTPUTS).is_file()):
        amp = compute.resolve()
        if not metrics_path.is_file():
            train_contrastive(store, run_dir, config, heatmap_version, compute=amp)
        evaluate_checkpoint(
            run_dir / BEST, store, run_dir, heatmap_version, plots=False, compute=amp
        )
    metrics = json.loads(metrics_path.read_text())
    return {"variant": variant.name, "seed": seed, "w": config.loss.weight, **metrics["headline"]}


def summarise(runs: pd.DataFrame, variants: tuple[Variant, ...] = VARIANTS) -> pd.DataFrame:
    """Mean and sample std (ddof = 1) per variant, in the order of ``variants``."""
    order = [v.name for v in variants if v.name in set(runs["variant"])]
    grouped = runs.groupby("variant")[list(HEADLINE)]
    mean, std = grouped.mean().loc[order], grouped.std(ddof=1).loc[order]
    table = pd.concat({"mean": mean, "std": std}, axis=1)
    table.insert(0, ("runs", ""), runs.groupby("variant").size().loc[order])
    return table


@flow(name="ablate", flow_run_name=run_namer("ablate", "store"))
def ablate_flow(
    store: str,
    out: str,
    seeds: list[int] | None = None,
    variants: list[str] | None = None,
    grid: AblationGrid = "ours",
    heatmap_modes: list[str] | None = None,
    training: ClipTrainSettings = ClipTrainSettings(),
    heatmap_version: str = DEFAULT_VERSION,
    torch_threads: int = 1,
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Train and evaluate the paper's ablation grid; mean ± std table over seeds.

    Args:
        store: image store with heatmaps (``+No Finding`` at least) in ``heatmap_version``.
        out: output folder; a rerun skips finished runs.
        seeds: training seeds (default 0, 1, 2).
        variants: subset of the grid's variants (default all), e.g. baseline, daug, hybrid,
            daug+hybrid for ``ours``.
        grid: ``ours``, or the official code's ``classification`` or ``retrieval`` grid
            (module docstring).
        heatmap_modes: heatmap modes of the grid's heatmap rows (default channel): ``channel`` keeps
            the row's name, ``add`` / ``append`` add rows ``<name>-add`` / ``<name>-append``.
        training: the preset and overrides every run starts from; each variant sets the
            heatmap mode, w (``ours``: 1 without the hybrid loss, else ``training.weight``,
            default the preset's 0.7; the official grids fix w per row) and the seed.
        heatmap_version: heatmap version to read.
        torch_threads: torch threads per process (runs go two at a time on the task
            runner's threads; one torch thread each keeps both cores busy without the
            collapse measured for 2 threads under contention). 0 keeps torch's default.
        compute: device (auto: CUDA when present) and precision of every run.
    """
    logger = get_run_logger()
    compute.resolve()  # an impossible device fails here, before any run starts
    seeds = list(seeds) if seeds is not None else [0, 1, 2]
    chosen = grid_variants(grid, variants, training, heatmap_modes or ("channel",))
    if not seeds:
        raise ValueError("seeds must not be empty")
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    folder = RunFolder(out)  # a URL: runs train into a local copy, uploaded as they finish
    folder.pull()
    target = folder.local
    key = artifact_key("ablate", Location.of(store).name)
    progress = ProgressReporter(f"{key}-progress", len(chosen) * len(seeds), "ablation runs")
    futures = [
        ablation_run.submit(store, target, variant, seed, training, heatmap_version, compute)
        for variant in chosen
        for seed in seeds
    ]
    rows = []
    for future in as_completed(futures):
        rows.append(future.result())
        folder.sync()
        progress.advance(1)
    runs = pd.DataFrame(rows).sort_values(["variant", "seed"]).reset_index(drop=True)
    runs.to_csv(target / "ablation_runs.csv", index=False)
    summary = summarise(runs, chosen)
    flat = summary.copy()
    flat.columns = [f"{c[0]}_{c[1]}" if c[1] else c[0] for c in flat.columns]
    flat.to_csv(target / "ablation.csv", index_label="variant")
    markdown = report.results_markdown(summary, seeds)
    (target / "RESULTS.md").write_text(f"# Ablation on {store}\n\n{markdown}\n")
    chart = report.plot_ablation(summary, target / "ablation.png")
    report.publish(key, store, runs, markdown, chart)
    folder.sync()
    # The CLI prints the table when the flow returns (flows.cli.contrastive.show_markdown).
    logger.info("ablation finished:\n%s", markdown, extra=RUN_LOG_ONLY)
    return {
        "out": folder.url,
        "runs": len(runs),
        "markdown": markdown,
        "summary": flat.reset_index().to_dict("records"),
    }
