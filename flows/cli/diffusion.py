"""Diffusion commands: train the generator and classifier, precompute heatmaps, score them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from daug_core.compute import ComputeSettings
from daug_core.diffusion.guided_diffusion_config import (
    GuidedDiffusionClassifierConfig,
    GuidedDiffusionConfig,
)
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.presets import DiffusionTrainSettings
from daug_core.student.config import StudentSettings
from flows.cli.app import command
from flows.cli.checks import (
    require_checkpoints,
    require_heatmap_version,
    require_store,
    require_truth,
)
from flows.cli.console import console
from flows.cli.options import (
    Group,
    SplitsOption,
    StoreOption,
)
from flows.quality.settings import SweepSettings
from flows.runtime.pool import PoolSettings
from flows.runtime.ray_train import ScalingSettings
from storage.store.heatmap_versions import DEFAULT_VERSION, check_version_name

EvalSplitOption = Annotated[
    str, typer.Option(help="split on which the classifier's AUC per noise level is measured")
]


PANEL = "Diffusion models and heatmaps"


def show_quality(result: dict[str, Any]) -> None:
    """The headline tables, the sweep's rows and where the run's files are."""
    console.print(result["markdown"])
    if result["sweep"]:
        columns = (
            "label",
            "target",
            "seconds_per_image",
            "pointing_game",
            "pixel_auroc",
            "specificity",
        )
        console.print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in result["sweep"]:
            cells = [
                "n/a"
                if row[c] is None
                else (row[c] if isinstance(row[c], str) else f"{row[c]:.3f}")
                for c in columns
            ]
            console.print("| " + " | ".join(cells) + " |")
    console.print(f"\nrun folder: {result['run_dir']}")


@command(PANEL, "train-generator", flow="flows.train_generator:train_generator_flow")
def train_generator(
    store: StoreOption,
    out: Annotated[str, typer.Option(help="checkpoint folder (resumed when it exists)")],
    training: DiffusionTrainSettings,
    compute: ComputeSettings,
    scaling: ScalingSettings,
    eval_split: EvalSplitOption = "validate",
) -> None:
    """Train the DDPM generator and the noise-aware classifier (resumable; --workers N trains
    data-parallel on Ray Train)."""
    from flows.train_generator import training_selection

    require_store(store)
    config = training.config()
    for model in (config.generator_training, config.classifier_training):
        scaling.check(compute, model.batch_size)
    if not scaling.distributed:  # "cuda" without CUDA fails here, before Prefect starts
        compute.resolve()  # (data-parallel workers get their GPUs from Ray)
    training_selection(store, training)  # images big enough, usable train items


@command(PANEL, flow="flows.precompute:precompute_flow")
def precompute(
    store: StoreOption,
    heatmaps: HeatmapSettings,
    pool: PoolSettings,
    splits: SplitsOption = None,
    heatmap_version: Annotated[
        str, typer.Option(help="heatmap version to write (new settings: a new name)")
    ] = DEFAULT_VERSION,
    retry_failed: Annotated[bool, typer.Option(help="retry items that failed before")] = False,
    examples: Annotated[int, typer.Option(help="items in the example overlay grid")] = 6,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="train-generator output: generator/ and classifier/ (the teacher)"),
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="a heatmap student (train-student's OUT/student): one forward pass per image "
            "instead of the teacher"
        ),
    ] = None,
    fraction: Annotated[
        float, typer.Option(help="only this label-stratified share of the selected items")
    ] = 1.0,
) -> None:
    """Precompute DAug heatmaps for the ingested images of a store (resumable): the teacher's
    (--checkpoints) or a student's (--student)."""
    try:  # before anything is created
        check_version_name(heatmap_version)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--heatmap-version") from None
    from flows.precompute import check_fraction, check_precision, check_sizes

    try:
        check_fraction(fraction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fraction") from None
    require_store(store)
    if (checkpoints is None) == (student is None):
        raise typer.BadParameter("give one of them", param_hint="--checkpoints / --student")
    if checkpoints is None:
        from flows.precompute import student_provenance

        student_provenance(str(student))
        return
    check_precision(heatmaps, pool)
    require_checkpoints(checkpoints)
    check_sizes(heatmaps, checkpoints, store)


@command(PANEL, "train-student", flow="flows.train_student:train_student_flow")
def train_student(
    store: StoreOption,
    out: Annotated[str, typer.Option(help="output folder; OUT/student is the checkpoint")],
    student: StudentSettings,
    compute: ComputeSettings,
    teacher_version: Annotated[
        str, typer.Option(help="the heatmap version the student learns")
    ] = DEFAULT_VERSION,
    splits: SplitsOption = None,
    fraction: Annotated[
        float, typer.Option(help="train on this label-stratified share of the teacher's items")
    ] = 1.0,
) -> None:
    """Train a heatmap student on a teacher heatmap version (resumable): afterwards
    `daug precompute --student OUT/student` makes heatmaps in one forward pass per image."""
    require_store(store)
    compute.resolve()


@command(PANEL, flow="flows.distill:distill_flow")
def distill(
    store: StoreOption,
    checkpoints: Annotated[
        str, typer.Option(help="train-generator output: generator/ and classifier/ (the teacher)")
    ],
    out: Annotated[str, typer.Option(help="output folder; OUT/student is the student")],
    heatmaps: HeatmapSettings,
    student: Annotated[StudentSettings, Group(prefix="student")],
    pool: PoolSettings,
    compute: Annotated[ComputeSettings, Group(prefix="train")],
    fraction: Annotated[
        float, typer.Option(help="label-stratified share of the train split the teacher computes")
    ] = 0.1,
    teacher_version: Annotated[
        str, typer.Option(help="heatmap version of the teacher's heatmaps")
    ] = "teacher",
    heatmap_version: Annotated[
        str, typer.Option(help="heatmap version of the student's heatmaps (every item)")
    ] = "student",
) -> None:
    """Teacher heatmaps for a fraction of the train split, a student trained on them, the
    student's heatmaps for every item: three resumable stages (a rerun skips what is done)."""
    from flows.precompute import check_fraction, check_precision, check_sizes

    for value, hint in (
        (teacher_version, "--teacher-version"),
        (heatmap_version, "--heatmap-version"),
    ):
        try:
            check_version_name(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    try:
        check_fraction(fraction)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fraction") from None
    require_store(store)
    check_precision(heatmaps, pool)
    require_checkpoints(checkpoints)
    check_sizes(heatmaps, checkpoints, store)
    compute.resolve()


@command(
    PANEL, "heatmap-quality", flow="flows.quality.flow:heatmap_quality_flow", show=show_quality
)
def heatmap_quality(
    store: StoreOption,
    truth: Annotated[
        str, typer.Option(help="the release's ground truth folder (OUT/ground_truth)")
    ],
    heatmaps: HeatmapSettings,
    sweep: Annotated[SweepSettings, Group(prefix="sweep")],
    pool: PoolSettings,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="train-generator output (needed for --compare and --sweep)"),
    ] = None,
    heatmap_version: Annotated[
        str | None, typer.Option(help="an existing heatmap version to score")
    ] = None,
    splits: SplitsOption = None,
    compare: Annotated[
        bool,
        typer.Option(help="softmax vs sigmoid heatmaps (versions quality-<mode>-<hash>)"),
    ] = True,
    tolerance: Annotated[int, typer.Option(help="pointing-game tolerance in pixels")] = 2,
    examples_per_target: Annotated[int, typer.Option(help="cases per target in the grids")] = 3,
    out: Annotated[
        str | None, typer.Option(help="output folder (default STORE/_runs/heatmap-quality-*)")
    ] = None,
) -> None:
    """Score heatmaps against the synthetic lesion masks (pointing game, pixel AUROC, heat on
    other lesions); softmax vs sigmoid guidance; a timed sweep of the translation numbers.
    """
    images = require_store(store)
    require_truth(truth)
    if heatmap_version is not None:
        require_heatmap_version(images, heatmap_version, "--heatmap-version")
    if checkpoints is not None:
        require_checkpoints(checkpoints)
    if heatmap_version is None and (checkpoints is None or not (compare or sweep.enabled)):
        raise typer.BadParameter(
            "nothing to score: give --heatmap-version, or --checkpoints with --compare or --sweep",
            param_hint="--heatmap-version / --checkpoints",
        )
    if sweep.enabled and checkpoints is not None:  # "cuda" without CUDA fails here
        ComputeSettings(device=sweep.device).resolve()


def _write_converted(
    target: Path, overwrite: bool, convert: Callable[[], object], hint: str
) -> None:
    """Run ``convert`` (which writes ``target`` atomically) unless ``target`` exists and may not
    be replaced; a model that does not convert is one error line naming ``hint``."""
    from daug_core.diffusion.guided_diffusion_config import GuidedDiffusionError

    if target.exists() and not overwrite:
        raise typer.BadParameter(f"{target} exists (--overwrite replaces it)", param_hint="OUT")
    try:
        convert()
    except GuidedDiffusionError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


@command(PANEL, "convert-generator")
def convert_generator(
    weights: Annotated[
        Path,
        typer.Argument(
            help="a guided-diffusion UNet state dict (model*.pt or .safetensors), e.g. the "
            "official DAug generator"
        ),
    ],
    checkpoints: Annotated[
        Path, typer.Argument(help="checkpoint folder: the generator is written to generator/")
    ],
    model: GuidedDiffusionConfig,
    ema: Annotated[
        Path | None, typer.Option(help="its EMA weights (ema_*.pt); default: the raw weights")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing generator/ in CHECKPOINTS")
    ] = False,
) -> None:
    """Convert a guided-diffusion generator (the official DAug code's) into a generator
    checkpoint precompute decodes with (class label fixed, variance channels dropped)."""
    from daug_core.checkpoints.diffusion import convert_guided_diffusion
    from daug_core.checkpoints.names import GENERATOR_DIR

    target = checkpoints / GENERATOR_DIR
    _write_converted(
        target,
        overwrite,
        lambda: convert_guided_diffusion(model, weights, target, ema_weights=ema),
        "WEIGHTS / --ema / model options",
    )
    label = "unconditional" if model.label is None else f"class label {model.label}"
    sigma = ", variance channels dropped" if model.learn_sigma else ""
    console.print(
        f"wrote {target}: {model.image_size} px, width {model.model_channels} x "
        f"{model.channel_mult}, decoding with {label}{sigma}"
    )


@command(PANEL, "convert-classifier")
def convert_classifier(
    weights: Annotated[
        Path,
        typer.Argument(
            help="a guided-diffusion classifier state dict (model*.pt or .safetensors), e.g. "
            "the official DAug classifier"
        ),
    ],
    checkpoints: Annotated[
        Path, typer.Argument(help="checkpoint folder: the classifier is written to classifier/")
    ],
    model: GuidedDiffusionClassifierConfig,
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing classifier/ in CHECKPOINTS")
    ] = False,
) -> None:
    """Convert a guided-diffusion noise-aware classifier (the official DAug code's) into a
    classifier checkpoint precompute guides with."""
    from daug_core.checkpoints.diffusion import convert_guided_diffusion_classifier
    from daug_core.checkpoints.names import CLASSIFIER_DIR

    target = checkpoints / CLASSIFIER_DIR
    _write_converted(
        target,
        overwrite,
        lambda: convert_guided_diffusion_classifier(model, weights, target),
        "WEIGHTS / model options",
    )
    console.print(
        f"wrote {target}: {model.image_size} px, width {model.model_channels} x "
        f"{model.channel_mult}, {model.pool} pooling, classes {', '.join(model.class_names)}"
    )
