"""Data commands: a synthetic release, its next release, and ingest into an image store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import command
from flows.cli.checks import require_release
from flows.cli.console import console, progress_bars
from flows.cli.options import Group, StoreOption
from storage.release.ingest_config import IngestConfig
from storage.synthetic.config import ReleaseChangeConfig, SynthConfig

OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="replace an existing OUT/release")
]
SynthOut = Annotated[Path, typer.Argument(help="output folder: OUT/release and OUT/ground_truth")]


PANEL = "Data"


@command(PANEL)
def synth(
    out: SynthOut,
    release: Annotated[SynthConfig, Group(only=("studies", "size", "image_format", "gzip_csv"))],
    seed: Annotated[int, typer.Option(help="random seed (same seed, same bytes)")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Write a synthetic MIMIC-CXR release with ground-truth lesion masks beside it."""
    from storage.synthetic import write_synthetic_release

    with progress_bars() as progress:
        task = progress.add_task("studies written", total=release.studies)
        summary = write_synthetic_release(
            out,
            release,
            seed=seed,
            progress=lambda done, _: progress.update(task, completed=done),
            overwrite=overwrite,
        )
    console.print(f"release: {out / 'release'}\nground truth: {out / 'ground_truth'}")
    console.print(summary)


@command(PANEL, "synth-next")
def synth_next(
    base: Annotated[
        Path, typer.Argument(help="a `daug synth` output: BASE/release, BASE/ground_truth")
    ],
    out: SynthOut,
    changes: ReleaseChangeConfig,
    seed: Annotated[int | None, typer.Option(help="random seed (default: BASE's)")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Derive a next synthetic release from BASE with known changes (ground_truth/changes.csv)."""
    from storage.synthetic.next_release import write_next_release

    summary = write_next_release(base, out, changes, seed, overwrite=overwrite)
    console.print(f"release: {summary.release_dir}\nchanges: {summary.changes_csv}")
    console.print(f"changed images per kind: {summary.counts} ({summary.images} images)")


@command(PANEL, "ingest", flow="flows.ingest:ingest_flow")
def ingest_release(
    release: Annotated[
        str, typer.Argument(help="release root, a path or URL (files/ + mimic-cxr-2.0.0-*.csv)")
    ],
    store: StoreOption,
    ingest: IngestConfig,
    all_views: Annotated[
        bool, typer.Option(help="keep every view, lateral included (overrides --view)")
    ] = False,
    workers: Annotated[
        int, typer.Option(help="processes decoding shards (1: in this process; 0: one per CPU)")
    ] = 1,
) -> dict[str, IngestConfig]:
    """Ingest a MIMIC-CXR (DICOM) or MIMIC-CXR-JPG release into a Zarr image store."""
    if all_views:
        ingest = dataclasses.replace(ingest, reader=dataclasses.replace(ingest.reader, views=()))
    require_release(release, ingest.reader)  # before a Prefect server starts
    return {"ingest": ingest}
