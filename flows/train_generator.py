"""Train-generator flow: the DDPM generator and the noise-aware classifier from an image store.

Both models train on the store's train split, resume from their last checkpoint, and report
progress, loss curves and the classifier's AUC per noise level as Prefect artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from daug_core.checkpoints.diffusion import (
    load_classifier_checkpoint,
    load_generator_checkpoint,
    save_classifier_checkpoint,
    save_generator_checkpoint,
)
from daug_core.checkpoints.layout import checkpoint_sha256, trainer_step
from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
from daug_core.compute import Compute, ComputeSettings
from daug_core.diffusion.classifier.evaluation import evaluate_classifier
from daug_core.diffusion.classifier.loss import pos_weight_from_labels
from daug_core.diffusion.classifier.training import (
    ClassifierState,
    init_classifier_state,
    train_classifier,
)
from daug_core.diffusion.config import DiffusionConfig
from daug_core.diffusion.generator import GeneratorState, init_generator_state, train_generator
from daug_core.diffusion.presets import DiffusionTrainSettings
from daug_core.distributed import SINGLE, Ranks
from daug_core.labels import SUPER_CLASS_COLUMNS
from daug_core.model_input import to_model_space
from daug_core.training import StepReport, TrainingResult
from flows.reports import training as report
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder, write_json
from flows.runtime.notices import RUN_LOG_ONLY
from flows.runtime.ray_train import ScalingSettings, run_data_parallel, worker_compute
from flows.runtime.retry import worth_retrying
from storage.datasets.batches import (
    Batch,
    Selection,
    random_batches,
    select,
    selection_sha256,
    sequential_batches,
)
from storage.errors import StoreFormatError
from storage.store.image import ImageStore
from storage.store.tables import DirectoryTables

log = logging.getLogger(__name__)


def to_model_input(batch: Batch, config: DiffusionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A store batch as model input: images at the model's size in the config's input range
    (the one its heatmaps will decode in), labels as float."""
    images = to_model_space(batch.images, config.image_size, config.translation.input_range)
    return images, torch.from_numpy(batch.labels).float()


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


def _batches(
    store: ImageStore,
    selection: Selection,
    config: DiffusionConfig,
    batch_size: int,
    seed: int,
    start: int,
    ranks: Ranks,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    batches = random_batches(
        store, selection, batch_size, seed, start, rank=ranks.rank, world_size=ranks.world_size
    )
    for batch in batches:
        yield to_model_input(batch, config)


State = GeneratorState | ClassifierState


def _model_state(
    name: str,
    path: Path | None,
    config: DiffusionConfig,
    selection: Selection,
    seed: int,
    amp: Compute,
) -> State:
    """The checkpoint at ``path`` to resume from, or (none there, or no path) a new state
    drawn from ``seed``."""
    resume = path is not None and trainer_step(path) is not None
    if resume:
        log.info("resuming the %s at its checkpoint in %s", name, path)
    if name == GENERATOR_DIR:
        if path is not None and resume:
            return load_generator_checkpoint(path, device=amp.device)
        # The RNG stays on the CPU: the same noise on every device.
        generator = torch.Generator().manual_seed(seed)
        return init_generator_state(config, generator=generator, device=amp.device)
    if path is not None and resume:
        return load_classifier_checkpoint(path, device=amp.device)
    # BCE pos_weight = negatives / positives per class over the training labels.
    return init_classifier_state(
        config,
        pos_weight=pos_weight_from_labels(selection.labels),
        generator=torch.Generator().manual_seed(seed + 1),
        device=amp.device,
    )


def _share_state(state: State, ranks: Ranks) -> None:
    """Rank 0's state (resumed from its checkpoint, or new) copied into every rank's: only
    rank 0 needs to see the run folder."""
    if not ranks.distributed:
        return
    module = state.unet if isinstance(state, GeneratorState) else state.classifier
    ema = state.ema if isinstance(state, GeneratorState) else None
    payload: dict[str, Any] | None = None
    if ranks.primary:
        payload = {
            "model": module.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "rng": state.generator.get_state(),
            "step": state.step,
            "pos_weight": getattr(state, "pos_weight", None),
        }
    payload = ranks.broadcast(payload)
    if ranks.primary:
        return
    assert payload is not None
    module.load_state_dict(payload["model"])
    if ema is not None:
        ema.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.generator.set_state(payload["rng"])
    state.step = int(payload["step"])
    if isinstance(state, ClassifierState):
        state.pos_weight = payload["pos_weight"].to(state.pos_weight.device)


def fit_model(
    name: str,
    store: ImageStore,
    selection: Selection,
    config: DiffusionConfig,
    out: Path,
    seed: int,
    steps: int,
    amp: Compute,
    ranks: Ranks = SINGLE,
    on_checkpoint: Callable[[], None] = lambda: None,
    progress: ProgressReporter | None = None,
) -> ModelRun:
    """Train the generator or the classifier (``name``) up to ``steps`` in ``amp``'s precision
    from its checkpoint in ``out`` (or from ``seed``). Rank 0 checkpoints every
    ``checkpoint_every`` steps and at the end, then calls ``on_checkpoint`` (the upload of a
    URL run folder), and keeps the loss table; the other ranks only train."""
    path = out / name
    # Other ranks build the same architecture, then take rank 0's numbers.
    state = _model_state(name, path if ranks.primary else None, config, selection, seed, amp)
    _share_state(state, ranks)
    if name == GENERATOR_DIR:
        train: Callable[..., TrainingResult] = train_generator
        save: Callable[[Any, Path], Path] = save_generator_checkpoint
        train_cfg, batch_seed = config.generator_training, seed
    else:
        train, save = train_classifier, save_classifier_checkpoint
        train_cfg, batch_seed = config.classifier_training, seed + 1
    batches = _batches(
        store, selection, config, train_cfg.batch_size, batch_seed, state.step, ranks
    )
    before = state.step
    losses = LossLog(out, name, before) if ranks.primary else None

    def on_step(report: StepReport) -> bool:
        if progress is not None:
            progress.advance(1)
        if losses is None:
            return False
        losses.add(report)
        if report.step % train_cfg.checkpoint_every == 0:
            save(state, path)
            losses.flush()
            on_checkpoint()
        return False

    result = train(state, batches, until_step=steps, on_step=on_step, compute=amp, ranks=ranks)
    # A model resumed with nothing left to train reports its checkpoint's last recorded loss
    # (NaN only when the loss table has none: a checkpoint brought without its table).
    recorded = losses.rows[-1]["loss"] if losses is not None and losses.rows else float("nan")
    last = result.losses[-1] if result.losses else recorded
    if losses is None:
        return ModelRun(name, before, state.step, result.seconds, last, "")
    save(state, path)
    losses.flush()
    on_checkpoint()
    return ModelRun(name, before, state.step, result.seconds, last, checkpoint_sha256(path))


def _diffusion_worker(arguments: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel run: the generator, then the classifier."""
    ranks = Ranks.current()
    amp = worker_compute(arguments["compute"], arguments["scaling"])
    folder = RunFolder(arguments["out"]) if ranks.primary else None
    if folder is not None:
        folder.pull()
    store = ImageStore.open(arguments["store"], read_only=True)
    for name, steps in arguments["models"]:
        fit_model(
            name,
            store,
            arguments["selection"],
            arguments["config"],
            folder.local if folder is not None else Path(arguments["out"]),
            arguments["seed"],
            steps,
            amp,
            ranks,
            on_checkpoint=folder.sync if folder is not None else lambda: None,
        )


def _checkpoint_step(path: Path) -> int:
    return trainer_step(path) or 0


@task(
    cache_policy=NO_CACHE,
    retries=1,
    retry_condition_fn=worth_retrying,
    task_run_name="train-{name}",
)
def train_model_task(
    name: str,
    store: str,
    selection: Selection,
    config: DiffusionConfig,
    out: RunFolder,
    seed: int,
    steps: int,
    amp: Compute,
) -> ModelRun:
    """The generator or the classifier, in this process."""
    progress = ProgressReporter(
        artifact_key("train-generator", out.location.name, name),
        steps - _checkpoint_step(out.local / name),
        f"{name} steps",
    )
    image_store = ImageStore.open(store, read_only=True)
    return fit_model(
        name, image_store, selection, config, out.local, seed, steps, amp,
        on_checkpoint=out.sync, progress=progress,
    )  # fmt: skip


@task(cache_policy=NO_CACHE, task_run_name="train-data-parallel")
def train_models_data_parallel_task(
    models: list[tuple[str, int]],
    store: str,
    selection: Selection,
    config: DiffusionConfig,
    out: RunFolder,
    seed: int,
    compute: ComputeSettings,
    scaling: ScalingSettings,
) -> list[ModelRun]:
    """Both models, one after the other, on one group of Ray Train workers (the group starts
    once; Ray restarts it after a lost worker, up to ``scaling.max_failures`` times)."""
    before = {name: _checkpoint_step(out.local / name) for name, _ in models}
    started = time.perf_counter()
    arguments = {
        "models": models,
        "store": store,
        "selection": selection,
        "config": config,
        "out": out.url,
        "seed": seed,
        "compute": compute,
        "scaling": scaling,
    }
    run_data_parallel(_diffusion_worker, arguments, scaling, name="train-generator")
    out.pull()
    seconds = time.perf_counter() - started
    runs = []
    for name, _ in models:
        path = out.local / name
        after = _checkpoint_step(path)
        rows = LossLog(out.local, name, after).rows
        last = rows[-1]["loss"] if rows else float("nan")
        runs.append(ModelRun(name, before[name], after, seconds, last, checkpoint_sha256(path)))
    return runs


def training_selection(
    store: str, training: DiffusionTrainSettings
) -> tuple[ImageStore, Selection]:
    """The store and its usable train items, checked before anything is created: images
    smaller than the preset's size are a StoreFormatError, no usable item an
    EmptySelectionError (each one error line in the CLI)."""
    image_store = ImageStore.open(store, read_only=True)
    size = training.config().image_size
    if image_store.size < size:
        raise StoreFormatError(
            f"store {store} holds {image_store.size} px images; the "
            f"{training.preset} preset needs at least {size} px"
        )
    return image_store, select(image_store, ["train"], SUPER_CLASS_COLUMNS)


@flow(name="train-generator", flow_run_name=run_namer("train-generator", "store"))
def train_generator_flow(
    store: str,
    out: str,
    training: DiffusionTrainSettings = DiffusionTrainSettings(),
    eval_split: str = "validate",
    compute: ComputeSettings = ComputeSettings(),
    scaling: ScalingSettings = ScalingSettings(),
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
        scaling: data-parallel workers on Ray Train (1: this process; the batch sizes are
            global batches), GPUs and CPUs per worker, restarts, the Ray cluster.
    """
    logger = get_run_logger()
    config = training.config()
    scaling.check(compute, config.generator_training.batch_size)
    scaling.check(compute, config.classifier_training.batch_size)
    # An impossible device fails here, before any data is read. Data-parallel runs train on
    # the workers' devices; this process then only evaluates the classifier (fp32, auto).
    amp = compute.resolve() if not scaling.distributed else ComputeSettings().resolve()
    image_store, train = training_selection(store, training)
    folder = RunFolder(out)  # a URL trains into a local copy, uploaded at every checkpoint
    folder.pull()
    out_path = folder.local
    logger.info("training on %d images of %s", len(train.indices), store)
    seed = training.seed
    models = [
        (GENERATOR_DIR, config.generator_training.num_steps),
        (CLASSIFIER_DIR, config.classifier_training.num_steps),
    ]
    if scaling.distributed:
        runs = train_models_data_parallel_task(
            models, store, train, config, folder, seed, compute, scaling
        )
    else:
        runs = [
            train_model_task(name, store, train, config, folder, seed, steps, amp)
            for name, steps in models
        ]

    held_out = select(image_store, [eval_split], SUPER_CLASS_COLUMNS)
    trained = load_classifier_checkpoint(out_path / CLASSIFIER_DIR, device=amp.device)
    classifier = trained.classifier.eval()
    evaluation = evaluate_classifier(
        classifier,
        (to_model_input(b, config) for b in sequential_batches(image_store, held_out, 64)),
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
        "compute": amp.record() if not scaling.distributed else dataclasses.asdict(compute),
        "scaling": dataclasses.asdict(scaling),
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
    # The CLI prints the result, these numbers with it.
    logger.info(
        "classifier mean AUC by t: %s", summary["classifier_mean_auc_by_t"], extra=RUN_LOG_ONLY
    )
    return summary
