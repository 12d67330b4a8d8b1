"""The ``daug`` command line: one subcommand per flow, with progress bars.

Every subcommand that runs a flow calls the same Prefect flow a deployment runs; without
PREFECT_API_URL, Prefect starts a temporary local server for the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast, get_args

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from storage.synthetic import SynthConfig, SynthSummary

app = typer.Typer(
    help="DAug on chest X-rays: synthesise or ingest MIMIC-CXR, train, precompute heatmaps.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
log = logging.getLogger("daug.cli")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


class _ProgressHandler(logging.Handler):
    """Draws the ``daug.progress`` log records of a flow as rich progress bars."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        payload = getattr(record, "daug_progress", None)
        if payload is None:
            return
        done, total, description = payload
        if description not in self.tasks:
            self.tasks[description] = self.progress.add_task(description, total=total)
        self.progress.update(self.tasks[description], completed=done, total=total)


@contextmanager
def _flow_progress() -> Iterator[None]:
    progress_logger = logging.getLogger("daug.progress")
    with _progress() as progress:
        handler = _ProgressHandler(progress)
        progress_logger.addHandler(handler)
        progress_logger.setLevel(logging.INFO)
        progress_logger.propagate = False
        try:
            yield
        finally:
            progress_logger.removeHandler(handler)


def _write_synthetic(
    out: Path, config: SynthConfig, seed: int, overwrite: bool = False
) -> SynthSummary:
    from storage.synthetic import write_synthetic_release

    with _progress() as progress:
        task = progress.add_task("studies written", total=config.studies)
        return write_synthetic_release(
            out,
            config,
            seed=seed,
            progress=lambda done, _: progress.update(task, completed=done),
            overwrite=overwrite,
        )


def _check_checkpoints(checkpoints: Path) -> None:
    """A train-generator output has generator/ and classifier/ (checked before any flow)."""
    for name in ("generator", "classifier"):
        if not (checkpoints / name).is_dir():
            raise typer.BadParameter(
                f"{checkpoints / name} does not exist", param_hint="--checkpoints"
            )


def _check_targets(texts: list[str] | None, class_names: tuple[str, ...], hint: str) -> None:
    """Every "+Class" / "-Class" names a class (checked before any flow)."""
    from daug_core.guidance import Target, TargetError

    try:
        for text in texts or []:
            Target.parse(text, class_names)
    except TargetError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # Prefect's client logs every HTTP request, and each task run its final state, at INFO.
    for noisy in ("httpx", "httpcore", "prefect.task_runs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="output folder: OUT/release and OUT/ground_truth")],
    studies: Annotated[int, typer.Option(help="number of studies")] = 200,
    size: Annotated[int, typer.Option(help="nominal image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same bytes)")] = 0,
    image_format: Annotated[
        str, typer.Option("--format", help="dicom (MIMIC-CXR) or jpg (MIMIC-CXR-JPG)")
    ] = "dicom",
    gzip_csv: Annotated[bool, typer.Option(help="write the CSVs as .csv.gz")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing OUT/release")] = False,
) -> None:
    """Write a synthetic MIMIC-CXR release with ground-truth lesion masks beside it."""
    from storage.synthetic import SynthConfig

    if image_format not in ("dicom", "jpg"):
        raise typer.BadParameter("--format must be dicom or jpg")
    fmt: Literal["dicom", "jpg"] = "dicom" if image_format == "dicom" else "jpg"
    config = SynthConfig(studies=studies, size=size, image_format=fmt, gzip_csv=gzip_csv)
    summary = _write_synthetic(out, config, seed, overwrite)
    console.print(f"release: {out / 'release'}\nground truth: {out / 'ground_truth'}")
    console.print(summary)


@app.command("synth-next")
def synth_next(
    base: Annotated[
        Path, typer.Argument(help="a `daug synth` output: BASE/release, BASE/ground_truth")
    ],
    out: Annotated[Path, typer.Argument(help="output folder: OUT/release and OUT/ground_truth")],
    new_fraction: Annotated[float, typer.Option(help="new studies, fraction of BASE's")] = 0.05,
    relabel_fraction: Annotated[float, typer.Option(help="studies with a flipped label")] = 0.03,
    report_fraction: Annotated[float, typer.Option(help="studies with a changed report")] = 0.02,
    pixel_fraction: Annotated[float, typer.Option(help="images with new pixels")] = 0.02,
    remove_fraction: Annotated[float, typer.Option(help="studies removed")] = 0.02,
    seed: Annotated[int | None, typer.Option(help="random seed (default: BASE's)")] = None,
    size: Annotated[int | None, typer.Option(help="new images' side (default: BASE's)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing OUT/release")] = False,
) -> None:
    """Derive a next synthetic release from BASE with known changes (ground_truth/changes.csv)."""
    from storage.synthetic.next_release import ReleaseChangeConfig, write_next_release

    try:
        changes = ReleaseChangeConfig(
            new_fraction, relabel_fraction, report_fraction, pixel_fraction, remove_fraction, size
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = write_next_release(base, out, changes, seed, overwrite=overwrite)
    console.print(f"release: {summary.release_dir}\nchanges: {summary.changes_csv}")
    console.print(f"changed images per kind: {summary.counts} ({summary.images} images)")


@app.command()
def ingest(
    release: Annotated[Path, typer.Argument(help="release root (files/ + mimic-cxr-2.0.0-*.csv)")],
    store: Annotated[Path, typer.Option(help="image store directory")],
    size: Annotated[int, typer.Option(help="stored image side S")] = 256,
    shard_items: Annotated[int, typer.Option(help="items per shard (unit of work)")] = 64,
    sharded: Annotated[bool, typer.Option(help="Zarr sharding: one file per shard")] = False,
    labeler: Annotated[str, typer.Option(help="chexpert or negbio")] = "chexpert",
    view: Annotated[
        list[str] | None, typer.Option(help="view to keep (repeat); default PA, AP, AP AXIAL")
    ] = None,
    all_views: Annotated[bool, typer.Option(help="keep every view, lateral included")] = False,
    uncertainty: Annotated[str, typer.Option(help="u-zeros, u-ones or ignore")] = "u-zeros",
    fit: Annotated[str, typer.Option(help="pad or crop to the square")] = "pad",
    retry_quarantined: Annotated[bool, typer.Option(help="retry quarantined items")] = False,
) -> None:
    """Ingest a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG release into a Zarr image store."""
    from flows.ingest import ingest_flow
    from storage.release import ReleaseReader

    if labeler not in ("chexpert", "negbio"):
        raise typer.BadParameter("--labeler must be chexpert or negbio")
    views = [] if all_views else view
    # Fail before starting a Prefect server when the release is plainly not there.
    reader = ReleaseReader(release)
    for kind in ("metadata", "split", labeler):
        reader.csv_path(kind)
    with _flow_progress():
        result = ingest_flow(
            release=str(release),
            store=str(store),
            size=size,
            shard_items=shard_items,
            sharded=sharded,
            labeler="negbio" if labeler == "negbio" else "chexpert",
            views=views,
            uncertainty=uncertainty,
            fit=fit,
            retry_quarantined=retry_quarantined,
        )
    console.print_json(json.dumps(result, default=str))


@app.command("train-generator")
def train_generator(
    store: Annotated[Path, typer.Option(help="image store to train on (train split)")],
    out: Annotated[Path, typer.Option(help="checkpoint folder (resumed when it exists)")],
    preset: Annotated[str, typer.Option(help="tiny (64 px, CPU) or paper (512 px, GPU)")] = "tiny",
    seed: Annotated[int, typer.Option(help="seed for weights, noise and batches")] = 0,
    generator_steps: Annotated[
        int | None, typer.Option(help="total generator steps (default: the preset's)")
    ] = None,
    classifier_steps: Annotated[
        int | None, typer.Option(help="total classifier steps (default: the preset's)")
    ] = None,
) -> None:
    """Train the DDPM generator and the noise-aware classifier (resumable)."""
    from flows.train_generator import train_generator_flow

    with _flow_progress():
        result = train_generator_flow(
            store=str(store),
            out=str(out),
            preset_name=preset,
            seed=seed,
            generator_steps=generator_steps,
            classifier_steps=classifier_steps,
        )
    console.print_json(json.dumps(result, default=str))


@app.command()
def precompute(
    store: Annotated[
        Path, typer.Option(help="image store (heatmaps go to STORE/heatmaps/VERSION)")
    ],
    checkpoints: Annotated[
        Path, typer.Option(help="train-generator output: generator/ and classifier/")
    ],
    target: Annotated[
        list[str] | None,
        typer.Option(help='"+Class" or "-Class" (repeat; channel order); default +c for all 7'),
    ] = None,
    mode: Annotated[str | None, typer.Option(help="softmax or sigmoid guidance")] = None,
    scale: Annotated[float | None, typer.Option(help="classifier guidance scale")] = None,
    level: Annotated[int | None, typer.Option(help="noise level L (timestep)")] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps over [0, L]")] = None,
    inversion_refinements: Annotated[
        int | None, typer.Option(help="fixed-point refinements per inversion step")
    ] = None,
    difference: Annotated[
        str | None, typer.Option(help="minmax (official) or raw |x0 - x_cf| / 2")
    ] = None,
    smoothing_sigma: Annotated[
        float | None, typer.Option(help="Gaussian blur of the heatmap, px (0: none)")
    ] = None,
    preset: Annotated[str, typer.Option(help="tiny (64 px) or paper (512 px)")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="images per actor call")] = 8,
    actors: Annotated[
        int, typer.Option(help="Ray actors holding the models (0: one per CPU, or per GPU)")
    ] = 0,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs (= torch threads) per actor")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="GPUs per actor (0: CPU)")] = 0.0,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster (default: RAY_ADDRESS, else local)")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="only items of this split (repeat); default all")
    ] = None,
    version: Annotated[str, typer.Option(help="heatmap version (new settings: new name)")] = "v1",
    retry_failed: Annotated[bool, typer.Option(help="retry items that failed before")] = False,
) -> None:
    """Precompute DAug heatmaps for the ingested images of a store (resumable)."""
    from flows.precompute import (
        TranslationOverrides,
        heatmap_config,
        precompute_flow,
    )
    from storage.image_store import ImageStore

    if mode is not None and mode not in ("softmax", "sigmoid"):
        raise typer.BadParameter("--mode must be softmax or sigmoid")
    # Fail before starting a Prefect server on a missing store or checkpoint, bad numbers
    # (ConfigError) or unknown targets.
    ImageStore.open(store, read_only=True)
    _check_checkpoints(checkpoints)
    config = heatmap_config(
        preset,
        TranslationOverrides(
            mode, scale, level, steps, inversion_refinements, difference, smoothing_sigma
        ),
    )
    _check_targets(target, config.class_names, "--target")
    with _flow_progress():
        result = precompute_flow(
            store=str(store),
            checkpoints=str(checkpoints),
            targets=target,
            mode=mode,
            scale=scale,
            level=level,
            steps=steps,
            inversion_refinements=inversion_refinements,
            difference=difference,
            smoothing_sigma=smoothing_sigma,
            preset_name=preset,
            batch_size=batch_size,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            ray_address=ray_address,
            splits=split,
            version=version,
            retry_failed=retry_failed,
        )
    console.print_json(json.dumps(result, default=str))


@app.command()
def train(
    store: Annotated[Path, typer.Option(help="image store with heatmaps")],
    out: Annotated[Path, typer.Option(help="output folder (rerun to resume)")],
    mode: Annotated[str, typer.Option(help="none | channel | add | append")] = "channel",
    preset: Annotated[str, typer.Option(help="tiny (64 px, CPU) or paper (ViT-B/32)")] = "tiny",
    heatmap_version: Annotated[str, typer.Option(help="heatmap version to read")] = "v1",
    weight: Annotated[
        float | None, typer.Option(help="hybrid loss w (1 = CLIP loss only); default 0.7")
    ] = None,
    class_loss: Annotated[str | None, typer.Option(help="bce | paired")] = None,
    epochs: Annotated[int | None, typer.Option(help="override the preset's epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="override the batch size")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="override the lr")] = None,
    seed: Annotated[int | None, typer.Option(help="training seed")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="local open_clip checkpoint (.pt / .safetensors)")
    ] = None,
    torch_threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
    missing_heatmaps: Annotated[
        str, typer.Option(help="exclude (and count) items without heatmaps, or fail")
    ] = "exclude",
) -> None:
    """Train the heatmap-augmented CLIP model with the hybrid loss (resumable)."""
    import torch

    from daug_core.clip_config import ClassLoss, HeatmapMode
    from flows.train import TrainOverrides, contrastive_config, train_flow
    from storage.contrastive_dataset import MissingHeatmaps
    from storage.image_store import ImageStore

    if mode not in get_args(HeatmapMode):
        raise typer.BadParameter(f"--mode must be one of {get_args(HeatmapMode)}")
    if class_loss is not None and class_loss not in get_args(ClassLoss):
        raise typer.BadParameter(f"--class-loss must be one of {get_args(ClassLoss)}")
    if missing_heatmaps not in get_args(MissingHeatmaps):
        raise typer.BadParameter(f"--missing-heatmaps must be one of {get_args(MissingHeatmaps)}")
    ImageStore.open(store, read_only=True)
    overrides = TrainOverrides(
        cast(HeatmapMode, mode),
        weight,
        cast(ClassLoss | None, class_loss),
        epochs,
        batch_size,
        learning_rate,
        seed,
        pretrained,
    )
    contrastive_config(preset, overrides)  # bad numbers: one clear line, before Prefect starts
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    with _flow_progress():
        result = train_flow(
            store=str(store),
            out=str(out),
            preset_name=preset,
            heatmap_version=heatmap_version,
            missing_heatmaps=cast(MissingHeatmaps, missing_heatmaps),
            **dataclasses.asdict(overrides),
        )
    console.print_json(json.dumps(result, default=str))


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="a train output's best/ (or last/) folder")],
    store: Annotated[Path, typer.Option(help="image store (test = queries)")],
    out: Annotated[Path | None, typer.Option(help="default: the checkpoint's parent")] = None,
    heatmap_version: Annotated[
        str | None, typer.Option(help="default: the version the model trained on")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="synthetic ground truth folder, for the example grid")
    ] = None,
) -> None:
    """Classification AUC, class-based retrieval mAP@k and pair Recall@k (EVALUATION.md)."""
    from flows.evaluate import evaluate_flow, headline_markdown

    if not (checkpoint / "clip.json").is_file():
        raise typer.BadParameter(f"{checkpoint} holds no clip.json", param_hint="--checkpoint")
    with _flow_progress():
        metrics = evaluate_flow(
            checkpoint=str(checkpoint),
            store=str(store),
            out=str(out) if out else None,
            heatmap_version=heatmap_version,
            truth=str(truth) if truth else None,
        )
    console.print(headline_markdown(metrics["headline"]))


@app.command("heatmap-quality")
def heatmap_quality(
    store: Annotated[Path, typer.Option(help="image store ingested from a synthetic release")],
    truth: Annotated[
        Path, typer.Option(help="the release's ground truth folder (OUT/ground_truth)")
    ],
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="train-generator output (needed for --compare and --sweep)"),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="an existing heatmap version to score")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="items of this split (repeat); default test")
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare/--no-compare",
            help="softmax vs sigmoid heatmaps (versions quality-<mode>-<settings hash>)",
        ),
    ] = True,
    compare_target: Annotated[
        list[str] | None,
        typer.Option(help='targets of the comparison (repeat); default "+No Finding", then -c'),
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep/--no-sweep", help="time and score scale x level x steps")
    ] = True,
    sweep_items: Annotated[int, typer.Option(help="lesion images the sweep runs on")] = 12,
    sweep_scale: Annotated[
        list[float] | None, typer.Option(help="sweep scales (repeat); default scale/10, scale")
    ] = None,
    sweep_level: Annotated[
        list[int] | None, typer.Option(help="sweep levels (repeat); default level/2, level")
    ] = None,
    sweep_step: Annotated[
        list[int] | None, typer.Option(help="sweep DDIM steps (repeat); default steps/2, steps")
    ] = None,
    tolerance: Annotated[int, typer.Option(help="pointing-game tolerance in pixels")] = 2,
    preset: Annotated[str, typer.Option(help="tiny (64 px) or paper (512 px)")] = "tiny",
    steps: Annotated[int | None, typer.Option(help="DDIM steps over [0, L]")] = None,
    scale: Annotated[float | None, typer.Option(help="classifier guidance scale")] = None,
    level: Annotated[int | None, typer.Option(help="noise level L (timestep)")] = None,
    inversion_refinements: Annotated[
        int | None, typer.Option(help="fixed-point refinements per inversion step")
    ] = None,
    actors: Annotated[int, typer.Option(help="Ray actors of the precompute runs (0: auto)")] = 0,
    examples_per_target: Annotated[int, typer.Option(help="cases per target in the grids")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default STORE/_runs/heatmap-quality-*)")
    ] = None,
) -> None:
    """Score heatmaps against the synthetic lesion masks: pointing game, pixel AUROC, heat
    on other lesions; softmax vs sigmoid guidance; a timed sweep of the translation numbers."""
    from flows.precompute import TranslationOverrides, heatmap_config
    from storage.heatmap_store import HeatmapStore
    from storage.image_store import ImageStore
    from storage.synthetic.ground_truth import GroundTruthError, GroundTruthMasks

    # Fail before starting a Prefect server on a missing store, truth, version or checkpoint.
    images = ImageStore.open(store, read_only=True)
    try:
        GroundTruthMasks.open(truth)
    except GroundTruthError as exc:
        raise typer.BadParameter(str(exc), param_hint="--truth") from None
    if version is not None and version not in HeatmapStore.versions(images):
        raise typer.BadParameter(
            f"{store} has no heatmap version {version!r} "
            f"(it has: {', '.join(HeatmapStore.versions(images)) or 'none'})",
            param_hint="--version",
        )
    if checkpoints is not None:
        _check_checkpoints(checkpoints)
    if version is None and (checkpoints is None or not (compare or sweep)):
        raise typer.BadParameter(
            "nothing to score: give --version, or --checkpoints with --compare or --sweep",
            param_hint="--version / --checkpoints",
        )
    config = heatmap_config(
        preset, TranslationOverrides(None, scale, level, steps, inversion_refinements)
    )
    _check_targets(compare_target, config.class_names, "--compare-target")
    from flows.heatmap_quality import heatmap_quality_flow

    with _flow_progress():
        result = heatmap_quality_flow(
            store=str(store),
            truth=str(truth),
            checkpoints=str(checkpoints) if checkpoints else None,
            version=version,
            splits=split,
            compare_modes=compare,
            compare_targets=compare_target,
            sweep=sweep,
            sweep_items=sweep_items,
            sweep_scales=sweep_scale,
            sweep_levels=sweep_level,
            sweep_steps=sweep_step,
            tolerance=tolerance,
            preset_name=preset,
            steps=steps,
            scale=scale,
            level=level,
            inversion_refinements=inversion_refinements,
            actors=actors,
            examples_per_target=examples_per_target,
            out=str(out) if out else None,
        )
    console.print(result["markdown"])
    if result["sweep"]:
        columns = ("label", "seconds_per_image", "pointing_game", "pixel_auroc")
        console.print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in result["sweep"]:
            cells = [
                "n/a" if row[c] is None else (f"{row[c]:.3f}" if c != "label" else row[c])
                for c in columns
            ]
            console.print("| " + " | ".join(cells) + " |")
    console.print(f"\nrun folder: {result['run_dir']}")


@app.command()
def ablate(
    store: Annotated[Path, typer.Option(help="image store with heatmaps")],
    out: Annotated[Path, typer.Option(help="output folder (rerun skips finished runs)")],
    seed: Annotated[list[int] | None, typer.Option(help="seeds (repeat); default 0 1 2")] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="baseline | daug | hybrid | daug+hybrid (repeat); default all"),
    ] = None,
    preset: Annotated[str, typer.Option(help="tiny or paper")] = "tiny",
    heatmap_version: Annotated[str, typer.Option(help="heatmap version to read")] = "v1",
    weight: Annotated[float, typer.Option(help="w of the hybrid variants")] = 0.7,
    epochs: Annotated[int | None, typer.Option(help="override the preset's epochs")] = None,
    torch_threads: Annotated[int, typer.Option(help="torch threads (0: default)")] = 1,
) -> None:
    """The paper's ablation grid (baseline, +DAug, +hybrid loss, both) over seeds."""
    from flows.ablate import ablate_flow
    from storage.image_store import ImageStore

    ImageStore.open(store, read_only=True)
    with _flow_progress():
        result = ablate_flow(
            store=str(store),
            out=str(out),
            seeds=seed,
            variants=variant,
            preset_name=preset,
            heatmap_version=heatmap_version,
            weight=weight,
            epochs=epochs,
            torch_threads=torch_threads,
        )
    console.print(result["markdown"])


@app.command("delete-heatmaps")
def delete_heatmaps(
    store: Annotated[Path, typer.Argument(help="image store holding STORE/heatmaps/VERSION")],
    version: Annotated[str, typer.Argument(help="heatmap version to delete, e.g. v1")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Delete one heatmap version (its arrays and tables); nothing else deletes heatmaps."""
    from storage.errors import StoreFormatError
    from storage.heatmap_store import HeatmapStore
    from storage.image_store import ImageStore
    from storage.locks import StoreLock

    images = ImageStore.open(store)
    if version not in HeatmapStore.versions(images):
        raise StoreFormatError(
            f"{store} has no heatmap version {version!r} "
            f"(it has: {', '.join(HeatmapStore.versions(images)) or 'none'})"
        )
    done = int(HeatmapStore(images, version).done_mask().sum())
    if not yes:
        typer.confirm(f"delete heatmaps {version} of {store} ({done} items done)?", abort=True)
    with StoreLock.for_store(images, owner=f"delete-heatmaps:{version}"):
        HeatmapStore.delete_version(images, version)
    console.print(f"deleted heatmaps {version} ({done} items) from {store}")


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="image store to check (with its heatmaps)")],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair/--no-repair",
            help="clear the done flag of corrupted items so ingest / precompute redo them",
        ),
    ] = True,
    rows: Annotated[int, typer.Option(help="problems shown in the table (all are counted)")] = 50,
) -> None:
    """Re-read every finished image and heatmap item: checksums and finite values.

    Corrupted items are listed and, unless --no-repair, marked not done:
    the next `daug ingest` re-ingests the images, the next `daug precompute`
    recomputes the heatmaps.

    Exit code 0: nothing found; 1: corruption found; 2: bad input (not a
    store, or the store is locked by another run).
    """
    from rich.table import Table

    from storage.image_store import ImageStore
    from storage.verify import verify_store

    images = ImageStore.open(store)
    with _progress() as progress:
        task = progress.add_task("items re-read", total=None)
        report = verify_store(
            images,
            repair=repair,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if not report.clean:
        table = Table("index", "dicom_id", "array", "reason", title=f"corrupted items in {store}")
        for row in report.problems.head(rows).itertuples(index=False):
            table.add_row(*(str(value) for value in row))
        console.print(table)
        if report.corrupted > rows:
            console.print(f"... and {report.corrupted - rows} more")
    for name in report.unchecksummed:
        console.print(f"note: {name} was written without checksums (older store)")
    action = (
        f"cleared {report.cleared} done flags: rerun ingest / precompute to redo them"
        if repair
        else "nothing changed (--no-repair)"
    )
    console.print(
        f"verified {store}: {report.checked} finished items re-read, "
        f"{report.corrupted} corrupted" + (f"; {action}" if not report.clean else "")
    )
    if not report.clean:
        raise typer.Exit(1)


@app.command()
def reprocess(
    release: Annotated[Path, typer.Argument(help="the new release root (MIMIC-CXR layout)")],
    store: Annotated[Path, typer.Option(help="the image store to update")],
    checkpoints: Annotated[
        Path | None,
        typer.Option(help="train-generator output for the heatmaps (default: no heatmaps)"),
    ] = None,
    heatmap_version: Annotated[
        str | None, typer.Option(help="heatmap version to continue (default: the current)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="images per actor call")] = 8,
    actors: Annotated[int, typer.Option(help="Ray actors (0: one per CPU or GPU)")] = 0,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs (= torch threads) per actor")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="GPUs per actor (0: CPU)")] = 0.0,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster (default: local)")] = None,
    retrain: Annotated[bool, typer.Option(help="train the contrastive model again")] = False,
    train_out: Annotated[
        Path | None, typer.Option(help="its output folder (default: in the run folder)")
    ] = None,
    train_epochs: Annotated[int | None, typer.Option(help="override the epochs")] = None,
    evaluate: Annotated[
        bool, typer.Option(help="evaluate and report deltas against the last evaluation")
    ] = False,
) -> None:
    """Update a store for a new release: only new and changed items are (re)done."""
    from storage.image_store import ImageStore
    from storage.release import ReleaseReader

    # Fail before the heavy imports and a Prefect server on a missing store or release.
    images = ImageStore.open(store, read_only=True)
    from flows.reprocess import ingest_settings, reprocess_flow

    settings = ingest_settings(images)
    reader = ReleaseReader(release, settings.reader)
    for kind in ("metadata", "split", settings.reader.labeler):
        reader.csv_path(kind)
    if checkpoints is not None:
        _check_checkpoints(checkpoints)
    with _flow_progress():
        result = reprocess_flow(
            release=str(release),
            store=str(store),
            checkpoints=str(checkpoints) if checkpoints else None,
            heatmap_version=heatmap_version,
            batch_size=batch_size,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            ray_address=ray_address,
            retrain=retrain,
            train_out=str(train_out) if train_out else None,
            train_epochs=train_epochs,
            evaluate=evaluate,
        )
    console.print((Path(result["run_dir"]) / "report.md").read_text())


@app.command()
def status(
    store: Annotated[Path, typer.Argument(help="image store")],
) -> None:
    """Releases seen, items by state and split, heatmap versions, the last evaluation."""
    from storage.image_store import ImageStore
    from storage.status import format_status, store_status

    typer.echo(format_status(store_status(ImageStore.open(store, read_only=True))))


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="folder for everything the demo writes")] = Path(
        "demo-output"
    ),
    studies: Annotated[int, typer.Option(help="synthetic studies")] = 300,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    generator_steps: Annotated[int, typer.Option(help="generator training steps")] = 3000,
    classifier_steps: Annotated[int, typer.Option(help="classifier training steps")] = 3000,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="start from the shipped checkpoints when the store is the one they were "
            "trained on (default settings); --no-pretrained trains from scratch (~20 min)",
        ),
    ] = True,
    heatmap_steps: Annotated[
        int | None, typer.Option(help="DDIM steps per direction (default: the preset's)")
    ] = None,
    ablation_seeds: Annotated[int, typer.Option(help="seeds of the ablation grid")] = 2,
) -> None:
    """Run the whole pipeline end to end on a synthetic release (tiny preset)."""
    from flows.ablate import ablate_flow
    from flows.demo_checkpoints import seed_checkpoints
    from flows.evaluate import evaluate_flow
    from flows.heatmap_quality import heatmap_quality_flow
    from flows.ingest import ingest_flow
    from flows.precompute import precompute_flow
    from flows.train_generator import train_generator_flow
    from storage.image_store import ImageStore
    from storage.ingest import summarise_store
    from storage.synthetic import SynthConfig

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    release = out / "synthetic" / "release"
    if not (release / "files").is_dir():
        console.rule("1. synthesise a MIMIC-CXR release")
        _write_synthetic(out / "synthetic", SynthConfig(studies=studies, size=128), seed)
    else:
        console.print(f"synthetic release already at {release}")
    console.rule("2. ingest it into a 64 px image store")
    store = out / "store"
    with _flow_progress():
        ingest_flow(release=str(release), store=str(store), size=64, shard_items=32)
    summary = summarise_store(ImageStore.open(store, read_only=True))
    console.print(summary.to_string(index=False))
    console.rule("3. train the DDPM generator and the noise-aware classifier (tiny preset)")
    checkpoints = out / "checkpoints"
    if pretrained:
        console.print(seed_checkpoints(ImageStore.open(store, read_only=True), checkpoints).reason)
    with _flow_progress():
        trained = train_generator_flow(
            store=str(store),
            out=str(checkpoints),
            preset_name="tiny",
            seed=seed,
            generator_steps=generator_steps,
            classifier_steps=classifier_steps,
        )
    for run in trained["runs"]:
        console.print(
            f"{run['name']:>10}: steps {run['steps_before']} -> {run['steps_after']}, "
            f"last loss {run['final_loss']:.4f}, sha256 {run['sha256'][:16]}"
        )
    auc = ", ".join(f"t={t}: {a:.3f}" for t, a in trained["classifier_mean_auc_by_t"].items())
    console.print(f"classifier mean AUC on validate by noise level: {auc}")
    console.rule("4. precompute +No Finding heatmaps for every image on Ray actors")
    with _flow_progress():
        heat = precompute_flow(
            store=str(store),
            checkpoints=str(checkpoints),
            targets=["+No Finding"],
            preset_name="tiny",
            steps=heatmap_steps,
            actors=2,
            cpus_per_actor=1.0,
        )
    console.print(
        f"heatmaps: {heat['done']} computed, {heat['already_done']} already done, "
        f"{heat['failures']} failed, {heat['image_class_per_second']:.2f} image·class/s"
    )
    console.rule("5. heatmap quality against the ground-truth lesion masks (held-out images)")
    truth = out / "synthetic" / "ground_truth"
    with _flow_progress():
        quality = heatmap_quality_flow(
            store=str(store),
            truth=str(truth),
            checkpoints=str(checkpoints),
            version="v1",
            splits=["test", "validate"],
            steps=heatmap_steps,
            actors=2,
            # Around the tiny preset (s = 10, L = 300, 10 steps) and out to the paper's numbers.
            sweep_scales=[1.0, 10.0, 100.0],
            sweep_levels=[150, 300, 500],
            sweep_steps=[5, 10],
        )
    console.print(_quality_headline(quality))
    console.print(_modes_table(quality))
    console.rule("6. train and evaluate the ablation grid (tiny CLIP, hybrid loss)")
    ablation = out / "ablation"
    with _flow_progress():
        grid = ablate_flow(store=str(store), out=str(ablation), seeds=list(range(ablation_seeds)))
    best = ablation / "daug+hybrid" / "seed-0"
    with _flow_progress():
        evaluate_flow(
            checkpoint=str(best / "best"),
            store=str(store),
            truth=str(truth),
        )
    console.rule("results")
    console.print(f"release:      {release}")
    console.print(f"ground truth: {out / 'synthetic' / 'ground_truth'}")
    console.print(f"image store:  {store}  (items.csv, quarantine.csv, images/)")
    console.print(f"checkpoints:  {checkpoints}  (generator/, classifier/, loss_curves.png)")
    console.print(f"heatmaps:     {store}/heatmaps/v1  (heatmaps, heatmaps_done, failures.csv)")
    console.print(f"examples:     {heat['examples']}")
    console.print(f"heatmap quality: {quality['run_dir']}  (summary.json, sweep.png, cases-*.png)")
    console.print(f"ablation:     {ablation}  (RESULTS.md, ablation.png, <variant>/seed-<s>/)")
    console.print(f"evaluation:   {best}  (metrics.json, roc_curves.png, examples.png)")
    console.print()
    console.print(_quality_headline(quality))
    console.print()
    console.print(grid["markdown"])
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")


def _quality_headline(quality: dict[str, Any]) -> str:
    """``+No Finding`` per heatmap source (the scored version, then each guidance mode)."""
    rows = []
    scored = quality.get("scored") or {}
    if scored:
        rows.append((scored["version"], scored["targets"].get("+No Finding")))
    for mode, source in (quality.get("modes") or {}).items():
        rows.append((mode, source["targets"].get("+No Finding")))
    rows = [(name, row) for name, row in rows if row]
    if not rows:
        return "heatmap quality: no +No Finding heatmaps scored"
    first = rows[0][1]
    lines = [
        f"heatmap quality, +No Finding, held-out images ({first['n_lesion']} with lesions, "
        f"{first['n_healthy']} healthy):",
        f"{'source':<10}{'pointing game':>15}{'pixel AUROC':>13}{'heat inside':>13}"
        f"{'healthy heat':>14}",
    ]
    for name, row in rows:
        lines.append(
            f"{name[:10]:<10}{_fmt(row['pointing_game']):>15}{_fmt(row['pixel_auroc']):>13}"
            f"{_fmt(row['mass_inside']):>13}{_fmt(row['healthy_energy']):>14}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _modes_table(quality: dict[str, Any]) -> str:
    """Softmax vs sigmoid per target, in columns that fit a terminal."""
    modes = quality.get("modes") or {}
    if set(modes) != {"softmax", "sigmoid"}:
        return ""
    soft, sig = modes["softmax"]["targets"], modes["sigmoid"]["targets"]
    lines = [
        "softmax / sigmoid guidance (lesion images; off-target: heat on other lesions)",
        f"{'target':<26}{'n':>4}{'pointing game':>15}{'pixel AUROC':>13}{'off-target':>13}",
    ]
    for target, a in soft.items():
        b = sig.get(target, {})
        cells = [
            f"{_fmt(a[m])}/{_fmt(b.get(m))}"
            for m in ("pointing_game", "pixel_auroc", "off_target_share")
        ]
        widths = (15, 13, 13)
        lines.append(
            f"{target:<26}{a['n_lesion']:>4}"
            + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def run() -> None:
    """Console entry point: known input errors print one clear line instead of a traceback."""
    from daug_core.config import ConfigError
    from storage.errors import ReleaseFormatError, StoreFormatError
    from storage.synthetic import ReleaseExistsError

    try:
        app()
    except (ReleaseFormatError, StoreFormatError, ReleaseExistsError, ConfigError) as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run()
