"""``daug demo``: the demo flow, then its results in the terminal."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from daug_core.compute import ComputeSettings
from flows.cli.app import command
from flows.cli.console import console
from flows.demo_settings import DemoSettings
from flows.runtime.pool import PoolSettings
from flows.study_settings import StudySettings

PANEL = "Demo"


def show_results(result: dict[str, Any]) -> None:
    """The demo's closing summary: where everything is, heatmap quality, the ablation, and
    last the path of its HTML report."""
    console.rule("results")
    # soft_wrap: a long path or table row stays one line (the terminal wraps it on screen).
    for name, path in result["paths"].items():
        console.print(f"{name + ':':<17}{path}", soft_wrap=True, highlight=False)
    console.print()
    console.print(result["quality_headline"])
    console.print()
    console.print(result["modes_table"])
    console.print()
    console.print(result["ablation_markdown"], soft_wrap=True)
    console.print(f"demo finished in {result['seconds']:.0f} s; the report, one page to open:")
    # The last line is the report's path alone (never wrapped): `daug demo 2>&1 | tail -1`.
    console.print(result["report"], soft_wrap=True, highlight=False)


@command(PANEL, "demo", flow="flows.demo:demo_flow", show=show_results)
def run_demo(
    demo: DemoSettings,
    out: Annotated[str, typer.Argument(help="folder for everything the demo writes")] = (
        "demo-output"
    ),
) -> None:
    """Run the whole pipeline end to end on a synthetic release (tiny preset)."""


def show_study(result: dict[str, Any]) -> None:
    """The study's answers, as RESULTS.md has them."""
    console.rule("study")
    console.print(result["markdown"])
    console.print(f"results: {result['results']}  (study.csv, study.png, study.json)")
    console.print(f"study finished in {result['seconds']:.0f} s")


@command(PANEL, "study", flow="flows.study:study_flow", show=show_study)
def run_study(
    study: StudySettings,
    pool: PoolSettings,
    compute: ComputeSettings,
    out: Annotated[
        str, typer.Argument(help="folder for everything the study writes (rerun: resumes)")
    ] = "study-output",
) -> None:
    """Run the DAug study: heatmaps against the unguided baseline and softmax vs sigmoid, and
    the ablation grids over seeds with bootstrap intervals (hours; resumable)."""
    compute.resolve()  # "cuda" without CUDA, fp16 on a CPU: fail here, before Prefect starts
