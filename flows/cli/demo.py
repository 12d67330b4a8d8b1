"""``daug demo``: the demo flow, then its results in the terminal."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.app import command
from flows.cli.console import console
from flows.demo_settings import DemoSettings

PANEL = "Demo"


def show_results(result: dict[str, Any]) -> None:
    """The demo's closing summary: where everything is, heatmap quality, the ablation."""
    console.rule("results")
    for name, path in result["paths"].items():
        console.print(f"{name + ':':<17}{path}")
    console.print()
    console.print(result["quality_headline"])
    console.print()
    console.print(result["modes_table"])
    console.print()
    console.print(result["ablation_markdown"])
    console.print(f"demo finished in {result['seconds']:.0f} s")


@command(PANEL, "demo", flow="flows.demo:demo_flow", show=show_results)
def run_demo(
    demo: DemoSettings,
    out: Annotated[str, typer.Argument(help="folder for everything the demo writes")] = (
        "demo-output"
    ),
) -> None:
    """Run the whole pipeline end to end on a synthetic release (tiny preset)."""
