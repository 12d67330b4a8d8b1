"""Contrastive commands: train the heatmap-augmented CLIP model, evaluate it, the ablation grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from daug_core.checkpoints.names import CLIP_HEADERS
from daug_core.compute import ComputeSettings
from daug_core.contrastive.presets import ClipTrainSettings
from flows.ablation_grids import AblationGrid, grid_variants
from flows.cli.app import command
from flows.cli.checks import require_store, require_training_data
from flows.cli.console import console
from flows.cli.options import (
    Group,
    HeatmapVersionOption,
    StoreOption,
    TorchThreadsOption,
)
from flows.runtime.ray_train import ScalingSettings
from storage.store.checkpoint_cache import clip_header
from storage.store.heatmap_versions import DEFAULT_VERSION

OutOption = Annotated[str, typer.Option(help="output folder (rerun to resume)")]


def show_headline(metrics: dict[str, Any]) -> None:
    from flows.reports.evaluation import headline_markdown  # loaded with the flow already

    console.print(headline_markdown(metrics["headline"]))


def show_markdown(result: dict[str, Any]) -> None:
    console.print(result["markdown"])


PANEL = "Contrastive model"


@command(PANEL, flow="flows.train:train_flow")
def train(
    store: StoreOption,
    out: OutOption,
    training: ClipTrainSettings,
    compute: ComputeSettings,
    scaling: ScalingSettings,
    heatmap_version: HeatmapVersionOption = DEFAULT_VERSION,
    missing_heatmaps: Annotated[
        Literal["exclude", "fail"],
        typer.Option(help="exclude (and count) items without heatmaps, or fail"),
    ] = "exclude",
    torch_threads: TorchThreadsOption = 0,
) -> None:
    """Train the heatmap-augmented CLIP model with the hybrid loss (resumable; --workers N
    trains data-parallel on Ray Train, --batch-size being the global batch)."""
    config = training.config()
    scaling.check(compute, config.training.batch_size)
    if not scaling.distributed:  # "cuda" without CUDA fails here, before Prefect starts
        compute.resolve()  # (data-parallel workers get their GPUs from Ray)
    require_training_data(store, config, heatmap_version, missing_heatmaps)


@command(PANEL, flow="flows.evaluate:evaluate_flow", show=show_headline)
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="a train output's best/ (or last/) folder")],
    store: StoreOption,
    compute: ComputeSettings,
    out: Annotated[str | None, typer.Option(help="default: the checkpoint's parent")] = None,
    heatmap_version: Annotated[
        str | None, typer.Option(help="default: the version the model trained on")
    ] = None,
    truth: Annotated[
        str | None, typer.Option(help="synthetic ground truth folder, for the example grid")
    ] = None,
) -> None:
    """Classification AUC, class-based retrieval mAP@k and pair Recall@k (docs/metrics.md)."""
    if clip_header(checkpoint) is None:
        raise typer.BadParameter(
            f"{checkpoint} holds no contrastive checkpoint (no {' or '.join(CLIP_HEADERS)})",
            param_hint="--checkpoint",
        )
    require_store(store)
    compute.resolve()  # "cuda" without CUDA fails here, before Prefect starts


@command(PANEL, flow="flows.ablate:ablate_flow", show=show_markdown)
def ablate(
    store: StoreOption,
    out: Annotated[str, typer.Option(help="output folder (rerun skips finished runs)")],
    # The variants set the heatmap mode and the seed of each run.
    training: Annotated[
        ClipTrainSettings,
        Group(
            only=(
                "preset",
                "weight",
                "class_loss",
                "epochs",
                "batch_size",
                "learning_rate",
                "pretrained",
                "quick_gelu",
            )
        ),
    ],
    compute: ComputeSettings,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="seeds (repeat); default 0 1 2")
    ] = None,
    variants: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="a variant of the grid (repeat; default all), e.g. baseline | daug | hybrid | "
            "daug+hybrid for ours, cls_baseline ... cls_all, retrieval_baseline ... "
            "retrieval_all for the official grids",
        ),
    ] = None,
    grid: Annotated[
        AblationGrid,
        typer.Option(
            help="ours (w = 1 without the hybrid loss, --weight with it), or the official "
            "code's classification (w 0 / 0.7) or retrieval (w 1 / 0.8) grid"
        ),
    ] = "ours",
    heatmap_modes: Annotated[
        list[str] | None,
        typer.Option(
            "--heatmap-mode",
            help="heatmap mode of the DAug rows (repeat): channel (default; keeps the row's "
            "name), add, append (rows <name>-add, <name>-append)",
        ),
    ] = None,
    heatmap_version: HeatmapVersionOption = DEFAULT_VERSION,
    torch_threads: TorchThreadsOption = 1,
) -> None:
    """The paper's ablation grid (baseline, +DAug, +hybrid loss, both) over seeds."""
    try:
        grid_variants(grid, variants, training, heatmap_modes or ("channel",))
    except ValueError as exc:
        raise typer.BadParameter(
            str(exc), param_hint="--grid / --variant / --weight / --heatmap-mode"
        ) from None
    require_store(store)
    compute.resolve()  # "cuda" without CUDA fails here, before Prefect starts


@command(PANEL, "convert-clip")
def convert_clip(
    source: Annotated[
        Path,
        typer.Argument(
            help="a Hugging Face CLIPModel folder (config.json, model.safetensors), e.g. "
            "openai/clip-vit-base-patch32 downloaded elsewhere"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="the open_clip checkpoint to write (.safetensors)")],
) -> None:
    """Convert OpenAI CLIP in Hugging Face format (what the official DAug code loads) into an
    open_clip checkpoint for --pretrained (OpenAI's ViT-B/32 becomes ViT-B-32-quickgelu)."""
    from daug_core.contrastive.convert import convert_hf_clip

    if out.suffix != ".safetensors":
        raise typer.BadParameter(f"{out} must end in .safetensors", param_hint="OUT")
    architecture = convert_hf_clip(source, out)
    vision, text = architecture["vision_cfg"], architecture["text_cfg"]
    console.print(
        f"wrote {out}: ViT {vision['width']} wide, {vision['layers']} layers, patch "
        f"{vision['patch_size']}, {vision['image_size']} px; text {text['width']} wide, "
        f"{text['layers']} layers, {text['context_length']} tokens; "
        f"{'QuickGELU' if architecture['quick_gelu'] else 'GELU'}"
    )
