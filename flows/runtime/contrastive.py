"""The contrastive training run, in one process or as one Ray Train worker: the store's
datasets, the epoch loop with its checkpoints (``last/``, ``best/``, ``epoch-NNN/``), model
selection, metrics and resume. :mod:`flows.train` is the flow around it; the layout of the
output folder is described there.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from daug_core import strict_json
from daug_core.checkpoints.contrastive import (
    load_clip_checkpoint,
    restore_trainer_state,
    save_clip_checkpoint,
)
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.compute import Compute, cpu_fp32
from daug_core.contrastive.config import (
    ContrastiveConfig,
    ModelSelection,
    contrastive_config_to_dict,
)
from daug_core.contrastive.losses import HybridContrastiveLoss
from daug_core.contrastive.model import build_model, build_tokenizer
from daug_core.contrastive.training import (
    ClipBatch,
    ContrastiveForward,
    EpochStats,
    PromptTokens,
    embed,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
)
from daug_core.distributed import SINGLE, Ranks
from daug_core.evaluation.classification import classification_auc
from daug_core.labels import CHEXPERT_LABELS
from daug_core.settings import ConfigError
from flows.reports import training as report
from flows.reports.files import RunFolder
from flows.runtime.ray_train import worker_compute
from storage.datasets.augment import AugmentConfig
from storage.datasets.contrastive import ContrastiveDataset, MissingHeatmaps, make_loader
from storage.store.checkpoint_cache import clip_header
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.tables import DirectoryTables

log = logging.getLogger(__name__)
LAST, BEST = "last", "best"


def epoch_dir(epoch: int) -> str:
    """The folder of an epoch kept by ``keep_epochs``: ``epoch-006``."""
    return f"epoch-{epoch:03d}"


METRIC_COLUMNS = {
    "epoch": "int64",
    "train_loss": "float64",
    "train_clip": "float64",
    "train_cls": "float64",
    "val_loss": "float64",
    "val_clip": "float64",
    "val_cls": "float64",
    "val_macro_auc": "float64",
    "lr": "float64",
    "seconds": "float64",
}


def heatmap_channels(config: ContrastiveConfig) -> tuple[str, ...] | None:
    """Stored heatmap channels the mode reads: none, the channel target, or all (append)."""
    mode = config.model.heatmap_mode
    if mode == "none":
        return None
    if mode in ("channel", "add"):
        return (config.model.channel_target,)
    return ()  # append: every stored channel, in stored order


def open_datasets(
    store: str | Path,
    config: ContrastiveConfig,
    heatmap_version: str | None,
    splits: list[str],
    missing_heatmaps: MissingHeatmaps = "exclude",
) -> dict[str, ContrastiveDataset]:
    """One dataset per split; training augmentation only on ``train``, which holds the
    config's training splits (train, or train + validate). Items whose heatmaps are not done
    are left out and counted, or refused (``missing_heatmaps="fail"``)."""
    channels = heatmap_channels(config)
    version = heatmap_version if channels is not None else None
    targets = None if not channels else list(channels)
    tokenizer = build_tokenizer(config.model)
    training = config.training
    augment = None
    if training.crop_scale_min < 1.0 or training.rotation_degrees > 0.0:
        augment = AugmentConfig(
            scale=(training.crop_scale_min, 1.0), degrees=training.rotation_degrees
        )
    return {
        split: ContrastiveDataset(
            store,
            training.train_split_names if split == "train" else split,
            heatmap_version=version,
            heatmap_targets=targets,
            missing_heatmaps=missing_heatmaps,
            augment=augment if split == "train" else None,
            seed=training.seed,
            text_transform=tokenizer,
        )
        for split in splits
    }


def prompt_tokens(config: ContrastiveConfig) -> PromptTokens:
    tokenizer = build_tokenizer(config.model)
    loss = config.loss
    negative = tokenizer(list(loss.negative_prompts)) if loss.class_loss == "paired" else None
    return PromptTokens(tokenizer(list(loss.class_prompts)), negative)


def clip_batches(loader: Iterator[dict[str, Any]] | Any) -> Iterator[ClipBatch]:
    """Collated dataset items as model batches."""
    for items in loader:
        yield ClipBatch(items["image"], items["heatmaps"], items["tokens"], items["labels"])


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs_run: int
    best_epoch: int
    best_metric: float
    history: pd.DataFrame
    train_items: int
    validate_items: int
    excluded: dict[str, dict[str, int]]
    seconds: float


def _selection_value(row: dict[str, float]) -> float:
    """Higher is better: validation macro AUC, or minus the validation loss without one."""
    auc = row["val_macro_auc"]
    return auc if not math.isnan(auc) else -row["val_loss"]


def _selection_key(row: dict[str, float]) -> tuple[bool, float]:
    """How ``model_selection="validate"`` ranks epochs: one with a defined validation macro
    AUC outranks any without (an AUC is undefined when no validate class has both positives
    and negatives, e.g. a small store); among those, the higher AUC wins, and among epochs
    without one, the lower validation loss."""
    return not math.isnan(row["val_macro_auc"]), _selection_value(row)


def train_contrastive(
    store: str | Path,
    out: str | Path,
    config: ContrastiveConfig,
    heatmap_version: str | None = DEFAULT_VERSION,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    missing_heatmaps: MissingHeatmaps = "exclude",
    compute: Compute | None = None,
    ranks: Ranks = SINGLE,
) -> TrainResult:
    """Train (or resume) into ``out`` on ``compute``'s device and precision (default: CPU,
    float32); see the module docstring for what is written.

    Data-parallel (``ranks.distributed``, in every rank of an initialised process group): the
    config's batch size is the global batch, each rank reads its share of every global batch
    and the loss sees the whole global batch, so N ranks take the single-process steps. Rank 0
    alone reads the checkpoint (and sends the resume state to the others), validates, and
    writes everything into ``out``; the other ranks never touch it. ``on_epoch`` runs on rank 0.
    """
    start = time.perf_counter()
    compute = compute or cpu_fp32()
    out = Path(out)
    data = open_datasets(store, config, heatmap_version, ["train", "validate"], missing_heatmaps)
    train_set, val_set = data["train"], data["validate"]
    training = config.training
    batch_size = min(training.batch_size, len(train_set))
    batch_size -= batch_size % ranks.world_size
    if batch_size < 2:
        raise ValueError(f"{store}: {len(train_set)} training item(s); need at least 2")
    if batch_size != training.batch_size and ranks.primary:
        log.warning(
            "batch size %d with %d training item(s) on %d worker(s): batches of %d "
            "(train.json records it as global_batch)",
            training.batch_size,
            len(train_set),
            ranks.world_size,
            batch_size,
        )
    total_steps = steps_per_epoch(len(train_set), batch_size) * training.epochs
    prompts = prompt_tokens(config)
    loss_fn = HybridContrastiveLoss(config.loss)

    targets = train_set.heatmap_targets
    model = build_model(config, targets, seed=training.seed).to(compute.device)
    optimizer = make_optimizer(model, training)
    scheduler = make_scheduler(optimizer, training, total_steps)
    resume = _resume(out, config, model, optimizer, scheduler) if ranks.primary else None
    resume = ranks.broadcast(resume)
    history: list[dict[str, float]] = []
    starts: list[int] = []
    if resume is not None:
        if not ranks.primary:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        history, starts = resume["history"], resume["starts"]
    first_epoch = len(history) + 1
    starts = [*starts, first_epoch]
    if ranks.primary:
        out.mkdir(parents=True, exist_ok=True)
    forward = ranks.wrap(ContrastiveForward(model), compute.device)

    best: dict[str, float] | None = None
    undefined_auc_said = False
    for done in history:  # the epoch selected so far (a resumed run)
        if best is None or _better(done, best, training.model_selection):
            best = done
    for epoch in range(first_epoch, training.epochs + 1):
        epoch_start = time.perf_counter()
        train_set.set_epoch(epoch)
        loader = make_loader(
            train_set,
            batch_size,
            True,
            training.seed,
            training.num_workers,
            drop_last=True,
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
        trained = train_epoch(
            model,
            loss_fn,
            clip_batches(loader),
            prompts,
            optimizer,
            scheduler,
            compute=compute,
            ranks=ranks,
            forward=forward,
        )
        row: dict[str, float] | None = None
        if ranks.primary:
            val_loader = make_loader(
                val_set, batch_size, False, training.seed, training.num_workers
            )
            validated = embed(model, loss_fn, clip_batches(val_loader), prompts, compute=compute)
            auc = classification_auc(validated.probabilities, validated.labels, CHEXPERT_LABELS)
            row = _metrics_row(epoch, trained, validated.stats, auc.macro, scheduler, epoch_start)
        row = ranks.broadcast(row)
        assert row is not None
        if ranks.primary and math.isnan(row["val_macro_auc"]) and not undefined_auc_said:
            undefined_auc_said = True
            log.warning(
                "validation macro AUC is undefined (%d validate item(s); no class has both "
                "positives and negatives there): %s",
                len(val_set),
                "epochs are selected by validation loss"
                if training.model_selection == "validate"
                else "the last epoch is kept (model_selection 'last')",
            )
        history.append(row)
        if best is None or _better(row, best, training.model_selection):
            best = row
        if not ranks.primary:
            continue
        info: dict[str, Any] = {
            "epoch": epoch,
            "step": epoch * total_steps // training.epochs,
            "history": history,
            "starts": starts,
            "heatmap_version": heatmap_version,
            "heatmap_provenance": train_set.heatmap_provenance if targets else None,
            "store": str(store),
            "compute": compute.record(),
            "workers": ranks.world_size,
        }
        # last/ is written after the others: it is what a rerun resumes from, so a run killed
        # between two of these writes redoes the epoch (the same weights, the same selection)
        # instead of resuming past a best/ or kept epoch it never wrote.
        if epoch in training.keep_epochs:
            kept = info | {"selected_by": f"epoch {epoch} (keep_epochs)"}
            save_clip_checkpoint(out / epoch_dir(epoch), model, config, kept)
        if best is row:
            selected = _rule(row, training.model_selection)
            save_clip_checkpoint(out / BEST, model, config, info | {"selected_by": selected})
        save_clip_checkpoint(out / LAST, model, config, info, optimizer, scheduler)
        _write_history(out, history)
        log.info("%s", report.epoch_line(row))
        log.debug("epoch %d: %s", epoch, row)
        if on_epoch is not None:
            on_epoch(row)

    assert best is not None
    frame = pd.DataFrame(history, columns=list(METRIC_COLUMNS))
    result = TrainResult(
        out=out,
        epochs_run=training.epochs - first_epoch + 1,
        best_epoch=int(best["epoch"]),
        best_metric=_selection_value(best),
        history=frame,
        train_items=len(train_set),
        validate_items=len(val_set),
        excluded={s: d.excluded.as_dict() for s, d in data.items()},
        seconds=time.perf_counter() - start,
    )
    if ranks.primary:
        report.plot_clip_curves(frame, out / "loss_curves.png")
        summary = {
            "config": contrastive_config_to_dict(config),
            "heatmap_version": heatmap_version,
            "heatmap_targets": list(targets),
            "train_items": result.train_items,
            "validate_items": result.validate_items,
            "excluded": result.excluded,
            "best_epoch": result.best_epoch,
            "best_metric": result.best_metric,
            "selected_by": _rule(best, training.model_selection),
            "best_sha256": checkpoint_sha256(out / BEST),
            "compute": compute.record(),
            "workers": ranks.world_size,
            "global_batch": batch_size,
            "epochs_run": result.epochs_run,
            "starts": starts,
            "seconds": round(result.seconds, 2),
        }
        (out / "train.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
    return result


def _resume(
    out: Path,
    config: ContrastiveConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any] | None:
    """Load ``out/last`` (if any) into the model, optimiser and schedule; what the other ranks
    need to do the same (state dicts, history), or None for a fresh run."""
    if clip_header(out / LAST) is None:
        return None
    saved = load_clip_checkpoint(out / LAST)
    changed = _changes(contrastive_config_to_dict(saved.config), contrastive_config_to_dict(config))
    if changed:
        raise ConfigError(
            f"{out} holds a run trained with other settings ({', '.join(changed)}): a run "
            "resumes only with its own (a learning-rate schedule ends at its epochs). To train "
            "with these settings, pass a new output folder"
        )
    model.load_state_dict(saved.model.state_dict())
    restore_trainer_state(out / LAST, optimizer, scheduler)
    log.info("resuming %s after epoch %d", out, int(saved.info["epoch"]))
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": [_restored(row) for row in saved.info["history"]],
        "starts": list(saved.info.get("starts", [1])),
    }


def _restored(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row read back from a checkpoint: an undefined number (written as ``null``,
    e.g. the AUC of a validate split without positives) is NaN again."""
    return {key: math.nan if value is None else value for key, value in row.items()}


def _changes(before: Any, after: Any, name: str = "") -> list[str]:
    """``name old -> new`` for every leaf of two config dicts that differs."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = list(dict.fromkeys([*before, *after]))
        return [
            change
            for key in keys
            for change in _changes(before.get(key), after.get(key), f"{name}.{key}".strip("."))
        ]
    return [] if before == after else [f"{name} {before!r} -> {after!r}"]


def load_train_result(out: Path) -> TrainResult:
    """The result of a finished run from the files rank 0 wrote (a data-parallel run's
    driver reads it this way)."""
    summary = json.loads((out / "train.json").read_text())
    history = DirectoryTables(out).read("metrics", METRIC_COLUMNS)
    if history is None:
        raise FileNotFoundError(f"{out} holds no metrics table")
    return TrainResult(
        out=out,
        epochs_run=int(summary["epochs_run"]),
        best_epoch=int(summary["best_epoch"]),
        best_metric=strict_json.float_or_nan(summary["best_metric"]),
        history=history,
        train_items=int(summary["train_items"]),
        validate_items=int(summary["validate_items"]),
        excluded=summary["excluded"],
        seconds=float(summary["seconds"]),
    )


def _rule(row: dict[str, float], selection: ModelSelection) -> str:
    if selection == "last":
        return "last_epoch"
    return "val_macro_auc" if not math.isnan(row["val_macro_auc"]) else "val_loss"


def _better(row: dict[str, float], best: dict[str, float], selection: ModelSelection) -> bool:
    """Whether ``row``'s epoch replaces ``best``'s as the selected one."""
    return selection == "last" or _selection_key(row) > _selection_key(best)


def _metrics_row(
    epoch: int,
    trained: EpochStats,
    validated: EpochStats,
    macro_auc: float,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    started: float,
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": trained.loss,
        "train_clip": trained.clip,
        "train_cls": trained.cls,
        "val_loss": validated.loss,
        "val_clip": validated.clip,
        "val_cls": validated.cls,
        "val_macro_auc": macro_auc,
        "lr": float(scheduler.get_last_lr()[0]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    DirectoryTables(out).write("metrics", pd.DataFrame(history, columns=list(METRIC_COLUMNS)))


def clip_worker(arguments: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel run (rank 0 writes into the run folder)."""
    ranks = Ranks.current()
    compute = worker_compute(arguments["compute"], arguments["scaling"])
    folder = RunFolder(arguments["out"]) if ranks.primary else None
    if folder is not None:
        folder.pull()
    train_contrastive(
        arguments["store"],
        folder.local if folder is not None else arguments["out"],
        arguments["config"],
        arguments["heatmap_version"],
        on_epoch=(lambda row: folder.sync()) if folder is not None else None,
        missing_heatmaps=arguments["missing_heatmaps"],
        compute=compute,
        ranks=ranks,
    )
    if folder is not None:
        folder.sync()
