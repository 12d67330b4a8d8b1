"""Train flow: the open_clip image-text model with DAug heatmap channels and the hybrid loss.

Trains on the store's train split, validates every epoch on the validate split (model
selection by validation macro AUC of the class prompts; validation loss when no class has an
AUC), checkpoints every epoch and resumes from the last one. Output folder ``OUT``::

    last/            the last epoch: weights, config, trainer state (resume point)
    best/            the selected epoch: weights and config (what evaluation loads)
    epoch-NNN/       the epochs of ``keep_epochs`` (official preset: 1, 6, 10), evaluated alike
    metrics.csv      one row per epoch: train and validation losses, validation AUC, lr
    loss_curves.png  train / validation loss and validation AUC per epoch
    train.json       summary: config, data counts, best epoch, seconds
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from prefect import flow, get_run_logger

from daug_core.compute import ComputeSettings
from daug_core.contrastive.presets import ClipTrainSettings
from flows.reports import training as report
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder
from flows.runtime.contrastive import (
    BEST,
    LAST,
    clip_worker,
    load_train_result,
    train_contrastive,
)
from flows.runtime.ray_train import ScalingSettings, run_data_parallel
from storage.datasets.contrastive import (
    MissingHeatmaps,
)
from storage.store.checkpoint_cache import clip_header
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.location import Location

log = logging.getLogger(__name__)


@flow(
    name="train",
    flow_run_name=run_namer(
        "train",
        "store",
        detail=lambda p: getattr(p.get("training"), "heatmap_mode", None) or "default",
    ),
)
def train_flow(
    store: str,
    out: str,
    training: ClipTrainSettings = ClipTrainSettings(),
    heatmap_version: str = DEFAULT_VERSION,
    missing_heatmaps: MissingHeatmaps = "exclude",
    torch_threads: int = 0,
    compute: ComputeSettings = ComputeSettings(),
    scaling: ScalingSettings = ScalingSettings(),
) -> dict[str, Any]:
    """Train the heatmap-augmented CLIP model on STORE's train split into OUT (resumable).

    Args:
        store: image store (with heatmaps in ``STORE/heatmaps/<heatmap_version>`` unless the
            heatmap mode is ``none``).
        out: output folder; rerunning with the same config resumes after the last epoch.
        training: preset (tiny: 64 px, CPU; paper: ViT-B/32 at 256 px) and overrides: heatmap
            mode (none | channel | add | append), hybrid loss weight and class loss, epochs,
            batch size (the global batch over all workers), learning rate, seed, a local
            pretrained open_clip file.
        heatmap_version: the heatmap version to read.
        missing_heatmaps: exclude (and count) items whose heatmaps are not done, or fail.
        torch_threads: torch threads of this process (0: torch's default).
        compute: device (auto: CUDA when present) and precision (fp32, bf16, fp16).
        scaling: data-parallel workers on Ray Train (1: this process), GPUs and CPUs per
            worker, restarts after a lost worker, the Ray cluster.
    """
    logger = get_run_logger()
    config = training.config()
    scaling.check(compute, config.training.batch_size)
    amp = None if scaling.distributed else compute.resolve()  # fails here, before data is read
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    mode = config.model.heatmap_mode
    key = artifact_key("train", Location.of(store).name, mode)
    progress = ProgressReporter(f"{key}-progress", config.training.epochs, "epochs")
    folder = RunFolder(out)  # a URL trains into a local copy, uploaded after every epoch
    folder.pull()
    existing = clip_header(folder / LAST)
    if existing is not None:
        progress.advance(int(json.loads(existing.read_text())["info"]["epoch"]))

    def epoch_done(row: dict[str, float]) -> None:
        folder.sync()
        progress.advance(1)

    if amp is None:
        arguments = {
            "store": store,
            "out": out,
            "config": config,
            "heatmap_version": heatmap_version,
            "missing_heatmaps": missing_heatmaps,
            "compute": compute,
            "scaling": scaling,
        }
        run_data_parallel(clip_worker, arguments, scaling, name=f"train-{key}")
        folder.pull()
        result = load_train_result(folder.local)
        progress.advance(result.epochs_run)
    else:
        result = train_contrastive(
            store,
            folder.local,
            config,
            heatmap_version,
            on_epoch=epoch_done,
            missing_heatmaps=missing_heatmaps,
            compute=amp,
        )
        folder.sync()
    record = json.loads((folder / "train.json").read_text())["compute"]
    summary = {
        "out": folder.url,
        "best": folder.location.child(BEST).url,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_items": result.train_items,
        "validate_items": result.validate_items,
        "excluded": result.excluded,
        "final": result.history.iloc[-1].to_dict(),
        "seconds": round(result.seconds, 2),
        "compute": record,
        "workers": scaling.workers,
    }
    report.publish_clip(
        key,
        store,
        str(folder.local),
        summary
        | {
            "history": result.history,
            "heatmap_mode": mode,
            "preset": training.preset,
            "best_metric": result.best_metric,
        },
    )
    logger.info("training finished: best epoch %d in %s", result.best_epoch, out)
    return summary
