"""Train-generator flow: the DDPM generator and the noise-aware classifier from an image store.

Both models train on the store's train split, resume from their last checkpoint, and report
progress, loss curves and the classifier's AUC per noise level as Prefect artifacts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from daug_core.checkpoints import (
    CLASSIFIER_DIR,
    GENERATOR_DIR,
    checkpoint_sha256,
    load_classifier_checkpoint,
    load_generator_checkpoint,
    save_classifier_checkpoint,
    save_generator_checkpoint,
)
from daug_core.classifier_eval import evaluate_classifier
from daug_core.classifier_loss import pos_weight_from_labels
from daug_core.classifier_training import (
    ClassifierState,
    init_classifier_state,
    train_classifier,
)
from daug_core.compute import Compute, ComputeSettings
from daug_core.config import DiffusionConfig, DiffusionTrainSettings, TrainingConfig
from daug_core.generator import GeneratorState, init_generator_state, train_generator
from daug_core.model_input import to_model_space
from daug_core.training import StepReport, TrainingResult
from flows.reports import training as report
from flows.reports.artifacts import ProgressReporter, artifact_key
from flows.reports.files import RunFolder, write_json
from storage.batches import (
    Batch,
    Selection,
    random_batches,
    select,
    selection_sha256,
    sequential_batches,
)
from storage.image_store import ImageStore
from storage.labels import SUPER_CLASS_COLUMNS
from storage.location import Location
from storage.tables import DirectoryTables


def _run_name() -> str:
    store = Location.of(str(flow_run.parameters.get("store", "store"))).name
    return f"train-generator-{store}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


def to_model_input(batch: Batch, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A store batch as model input: images in [-1, 1] at the model's size, labels as float."""
    return to_model_space(batch.images, image_size), torch.from_numpy(batch.labels).float()


@dataclass(frozen=True)
class ModelRun:
    name: str
    steps_before: int
    steps_after: int
    seconds: float
    final_loss: float
    sha256: str


class LossLog:
    """Loss per step in ``<out>/<name>_losses.csv``, kept consistent with the checkpoint."""

    def __init__(self, out: Path, name: str, checkpoint_step: int) -> None:
        self.tables = DirectoryTables(out)
        self.name = f"{name}_losses"
        old = self.tables.read(self.name, {"step": "float", "loss": "float"})
        rows = [] if old is None else old[old["step"] <= checkpoint_step].to_dict("records")
        self.rows: list[dict[str, float]] = [
            {"step": float(r["step"]), "loss": float(r["loss"])} for r in rows
        ]

    def add(self, report: StepReport) -> None:
        self.rows.append({"step": float(report.step), "loss": report.loss})

    def flush(self) -> None:
        self.tables.write(self.name, pd.DataFrame(self.rows, columns=["step", "loss"]))


def _checkpointing(
    every: int,
    save: Callable[[], object],
    losses: LossLog,
    progress: ProgressReporter,
    upload: Callable[[], None],
) -> Callable[[StepReport], bool]:
    def on_step(report: StepReport) -> bool:
        losses.add(report)
        progress.advance(1)
        if report.step % every == 0:
            save()
            losses.flush()
            upload()
        return False

    return on_step


def _batches(
    store: ImageStore,
    selection: Selection,
    config: DiffusionConfig,
    batch_size: int,
    seed: int,
    start: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in random_batches(store, selection, batch_size, seed, start):
        yield to_model_input(batch, config.image_size)


def _train(
    name: str,
    state: GeneratorState | ClassifierState,
    train: Callable[..., TrainingResult],
    save: Callable[[Any, Path], Path],
    train_cfg: TrainingConfig,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    folder: RunFolder,
    steps: int,
    amp: Compute,
) -> ModelRun:
    """Train ``state`` up to ``steps`` in ``amp``'s precision, checkpointing (and uploading the
    checkpoint when the output folder is a URL), logging losses and progress."""
    out = folder.local
    path = out / name
    before = state.step
    losses = LossLog(out, name, before)
    progress = ProgressReporter(
        artifact_key("train-generator", folder.location.name, name),
        steps - before,
        f"{name} steps",
    )
    result = train(
        state,
        batches,
        until_step=steps,
        on_step=_checkpointing(
            train_cfg.checkpoint_every, lambda: save(state, path), losses, progress, folder.sync
        ),
        precision=amp.precision,
    )
    save(state, path)
    losses.flush()
    folder.sync()
    last = result.losses[-1] if result.losses else float("nan")
    return ModelRun(name, before, state.step, result.seconds, last, checkpoint_sha256(path))


@task(cache_policy=NO_CACHE, retries=1, task_run_name="train-generator-unet")
def train_generator_task(
    store: ImageStore,
    selection: Selection,
    config: DiffusionConfig,
    out: RunFolder,
    seed: int,
    steps: int,
    amp: Compute,
) -> ModelRun:
    path = out.local / GENERATOR_DIR
    if (path / "trainer_state.json").is_file():
        state = load_generator_checkpoint(path, device=amp.device)
        get_run_logger().info("resuming the generator at step %d", state.step)
    else:  # the RNG stays on the CPU: the same noise on every device
        generator = torch.Generator().manual_seed(seed)
        state = init_generator_state(config, generator=generator, device=amp.device)
    cfg = config.generator_training
    batches = _batches(store, selection, config, cfg.batch_size, seed, state.step)
    return _train(
        GENERATOR_DIR,
        state,
        train_generator,
        save_generator_checkpoint,
        cfg,
        batches,
        out,
        steps,
        amp,
    )


@task(cache_policy=NO_CACHE, retries=1, task_run_name="train-noise-aware-classifier")
def train_classifier_task(
    store: ImageStore,
    selection: Selection,
    config: DiffusionConfig,
    out: RunFolder,
    seed: int,
    steps: int,
    amp: Compute,
) -> ModelRun:
    path = out.local / CLASSIFIER_DIR
    if (path / "trainer_state.json").is_file():
        state = load_classifier_checkpoint(path, device=amp.device)
        get_run_logger().info("resuming the classifier at step %d", state.step)
    else:
        # BCE pos_weight = negatives / positives per class over the training labels.
        state = init_classifier_state(
            config,
            pos_weight=pos_weight_from_labels(selection.labels),
            generator=torch.Generator().manual_seed(seed + 1),
            device=amp.device,
        )
    cfg = config.classifier_training
    batches = _batches(store, selection, config, cfg.batch_size, seed + 1, state.step)
    return _train(
        CLASSIFIER_DIR,
        state,
        train_classifier,
        save_classifier_checkpoint,
        cfg,
        batches,
        out,
        steps,
        amp,
    )


@flow(name="train-generator", flow_run_name=_run_name)
def train_generator_flow(
    store: str,
    out: str,
    training: DiffusionTrainSettings = DiffusionTrainSettings(),
    eval_split: str = "validate",
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Train the DDPM generator and the noise-aware classifier on STORE's train split.

    Args:
        store: image store (its images are resized to the preset's size when they differ).
        out: checkpoint folder: ``generator/``, ``classifier/``, loss CSVs and plots.
        training: preset (tiny: 64 px, CPU minutes; paper: 512 px), seed (weights, noise and
            batch sampling; a resumed run continues identically) and the step counts to train
            to (default: the preset's).
        eval_split: split on which the classifier's AUC per noise level is measured.
        compute: device (auto: CUDA when present) and precision of both models' training.
    """
    logger = get_run_logger()
    config = training.config()
    amp = compute.resolve()  # an impossible device fails here, before any data is read
    image_store = ImageStore.open(store, read_only=True)
    if image_store.size < config.image_size:
        raise ValueError(
            f"store {store} holds {image_store.size} px images; the "
            f"{training.preset} preset needs at least {config.image_size} px"
        )
    folder = RunFolder(out)  # a URL trains into a local copy, uploaded at every checkpoint
    folder.pull()
    out_path = folder.local
    train = select(image_store, ["train"], SUPER_CLASS_COLUMNS)
    logger.info("training on %d images of %s", len(train.indices), store)
    seed = training.seed
    runs = [
        train_generator_task(
            image_store, train, config, folder, seed, config.generator_training.num_steps, amp
        ),
        train_classifier_task(
            image_store, train, config, folder, seed, config.classifier_training.num_steps, amp
        ),
    ]

    held_out = select(image_store, [eval_split], SUPER_CLASS_COLUMNS)
    trained = load_classifier_checkpoint(out_path / CLASSIFIER_DIR, device=amp.device)
    classifier = trained.classifier.eval()
    evaluation = evaluate_classifier(
        classifier,
        (
            to_model_input(b, config.image_size)
            for b in sequential_batches(image_store, held_out, 64)
        ),
        schedule=config.schedule,
        generator=torch.Generator().manual_seed(seed + 2),
    )
    metrics = pd.DataFrame(evaluation.rows())
    metrics.to_csv(out_path / "classifier_noise_levels.csv", index=False)
    by_level = metrics.groupby("timestep")[["auc", "accuracy"]].mean().reset_index()
    plot = report.plot_generator_losses(out_path)
    report.publish_generator(
        artifact_key("train-generator", folder.location.name),
        store,
        out,
        runs,
        by_level,
        metrics,
        plot,
    )
    summary = {
        "out": folder.url,
        "preset": training.preset,
        "seed": seed,
        "training": dataclasses.asdict(training),
        "compute": amp.record(),
        "training_data_sha256": selection_sha256(image_store, train),
        "runs": [dataclasses.asdict(r) for r in runs],
        "classifier_mean_auc_by_t": dict(
            zip(
                by_level["timestep"].astype(int).tolist(),
                by_level["auc"].astype(float).tolist(),
                strict=True,
            )
        ),
        "loss_curves": str(plot),
    }
    write_json(summary, out_path / "train_summary.json")
    folder.sync()
    logger.info("classifier mean AUC by t: %s", summary["classifier_mean_auc_by_t"])
    return summary
