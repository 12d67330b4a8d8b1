"""Operations commands: verify a store, its status, reprocess a new release, delete heatmaps."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.cli.app import command
from flows.cli.checks import require_checkpoints, require_heatmap_version, require_release
from flows.cli.console import console, progress_bars
from flows.cli.options import Group, StoreOption
from flows.runtime.pool import PoolSettings
from storage.store.location import Location

StoreArgument = Annotated[str, typer.Argument(help="image store")]


def show_report(result: dict[str, Any]) -> None:
    console.print(Location.of(result["run_dir"]).child("report.md").read_text())


PANEL = "Operations"


@command(PANEL, "delete-heatmaps")
def delete_heatmaps(
    store: StoreArgument,
    version: Annotated[str, typer.Argument(help="heatmap version to delete, e.g. v1")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Delete one heatmap version (its arrays and tables); nothing else deletes heatmaps."""
    from storage.store.heatmaps import HeatmapStore
    from storage.store.image import ImageStore
    from storage.store.lease import StoreLease

    images = ImageStore.open(store)
    require_heatmap_version(images, version, "VERSION")
    done = int(HeatmapStore(images, version).done_mask().sum())
    if not yes:
        typer.confirm(f"delete heatmaps {version} of {store} ({done} items done)?", abort=True)
    with StoreLease.for_store(images, owner=f"delete-heatmaps:{version}"):
        HeatmapStore.delete_version(images, version)
    console.print(f"deleted heatmaps {version} ({done} items) from {store}")


@command(PANEL)
def verify(
    store: StoreArgument,
    repair: Annotated[
        bool,
        typer.Option(
            help="clear the done flag of corrupted items so ingest / precompute redo them"
        ),
    ] = True,
    rows: Annotated[int, typer.Option(help="problems shown in the table (all are counted)")] = 50,
) -> None:
    """Re-read every finished image and heatmap item (checksums, finite values) and check
    items.csv against the arrays (rows, indices, columns, statuses, hashes).

    Corrupted items are listed and, unless --no-repair, marked not done:
    the next `daug ingest` re-ingests the images, the next `daug precompute`
    recomputes the heatmaps.

    Exit code 0: nothing found; 1: corruption or a damaged item table found; 2: bad input (not a
    store, or the store is locked by another run).
    """
    from rich.table import Table

    from storage.store.image import ImageStore
    from storage.store.verify import verify_store

    images = ImageStore.open(store)
    with progress_bars() as progress:
        task = progress.add_task("items re-read", total=None)
        report = verify_store(
            images,
            repair=repair,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    for problem in report.table_problems:
        console.print(f"[bold red]items table:[/] {problem}", soft_wrap=True)
    if report.table_problems:
        console.print(
            "the item table does not match the arrays: restore items.csv from a copy, or "
            "ingest the release again into a new store (not repaired: it is the only record "
            "of the items' ids, labels and reports)"
        )
    if report.corrupted:
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
        f"{report.corrupted} corrupted" + (f"; {action}" if report.corrupted else "")
    )
    if not report.clean:
        raise typer.Exit(1)


@command(PANEL, flow="flows.reprocess:reprocess_flow", show=show_report)
def reprocess(
    release: Annotated[str, typer.Argument(help="the new release root (MIMIC-CXR layout)")],
    store: StoreOption,
    heatmaps: HeatmapSettings,
    pool: PoolSettings,
    training: Annotated[ClipTrainSettings, Group(prefix="train")],
    checkpoints: Annotated[
        str | None,
        typer.Option(help="train-generator output for the heatmaps (default: no heatmaps)"),
    ] = None,
    heatmap_version: Annotated[
        str | None, typer.Option(help="heatmap version to continue (default: the current)")
    ] = None,
    retrain: Annotated[bool, typer.Option(help="train the contrastive model again")] = False,
    train_out: Annotated[
        str | None, typer.Option(help="its output folder (default: in the run folder)")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option(help="evaluate and report deltas against the last evaluation")
    ] = False,
    hash_workers: Annotated[
        int | None, typer.Option(help="threads hashing the release's files (default: a few)")
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(
            help="a heatmap student (train-student's OUT/student) instead of --checkpoints"
        ),
    ] = None,
) -> None:
    """Update a store for a new release: only new and changed items are (re)done.

    The heatmap settings apply only to a store without heatmaps (an existing version is
    continued with its own); the --train-* settings only when the store has no evaluated model
    whose config to reuse."""
    from storage.store.image import ImageStore

    # Fail before a Prefect server starts on a missing store or release.
    ingested = ImageStore.open(store, read_only=True).ingest_config()
    require_release(release, ingested.reader)
    if checkpoints is not None:
        require_checkpoints(checkpoints)
    if student is not None:
        if checkpoints is not None:
            raise typer.BadParameter("give one of them", param_hint="--checkpoints / --student")
        from flows.precompute import student_provenance

        student_provenance(student)


@command(PANEL)
def status(store: StoreArgument) -> None:
    """Releases seen, items by state and split, heatmap versions, the last evaluation."""
    from storage.store.image import ImageStore
    from storage.store.status import format_status, store_status

    typer.echo(format_status(store_status(ImageStore.open(store, read_only=True))))
