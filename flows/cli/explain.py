"""Answers for new studies: ``daug explain``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from daug_core.compute import ComputeSettings
from flows.cli.app import command, print_json
from flows.cli.checks import require_store
from flows.cli.console import console
from flows.explain_settings import ExplainSettings

PANEL = "New studies"
ModelOption = Annotated[
    str, typer.Option("--model", help="a trained contrastive checkpoint (daug train's OUT/best)")
]
IndexOption = Annotated[
    str,
    typer.Option("--index", help="the store the model was trained on, indexed for it (daug index)"),
]


def show_explained(summary: dict[str, Any]) -> None:
    """The JSON summary on stdout, one line per input on the console; exit code 1 when any
    input was not explained (failures.csv says why)."""
    print_json(summary)
    for result in summary["results"]:
        top = ", ".join(f"{name} {p:.2f}" for name, p in result["top"])
        console.print(f"{result['input']}: {top}")
    for failure in summary["failures"]:
        console.print(f"[red]not explained[/red] {failure['input']}: {failure['reason']}")
    console.print(f"open {summary['page']}")
    if summary["failed"]:
        raise typer.Exit(1)


@command(PANEL, flow="flows.explain:explain_flow", show=show_explained)
def explain(
    inputs: Annotated[
        list[str], typer.Argument(help="DICOM, JPG or PNG files, or folders of them")
    ],
    model: ModelOption,
    index: IndexOption,
    out: Annotated[str, typer.Option(help="output folder (inputs done before are skipped)")],
    explain: ExplainSettings,
    compute: ComputeSettings,
    heatmap_models: Annotated[
        str | None,
        typer.Option(
            help="the models of the model's heatmap version: a student checkpoint "
            "(daug train-student's OUT/student) or the teacher's train-generator folder"
        ),
    ] = None,
) -> None:
    """Explain new chest X-rays: class probabilities, heatmaps over the image (PNG and DICOM
    Secondary Capture) and the most similar past studies with their reports, per input, and
    one index.html; exit code 1 when an input could not be explained (failures.csv)."""
    require_store(index)
    compute.resolve()
