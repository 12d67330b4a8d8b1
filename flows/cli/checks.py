"""Checks a command makes before it starts a flow (and with it a Prefect server): a missing
store, release, checkpoint folder, ground truth or heatmap version is one clear line, now.

The store machinery is imported here, on use, so that building the CLI stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from daug_core.contrastive.config import ContrastiveConfig
    from storage.datasets.contrastive import MissingHeatmaps
    from storage.release.ingest_config import ReaderConfig
    from storage.store.image import ImageStore


def require_store(store: str) -> ImageStore:
    """The image store at ``store``, opened read-only (a StoreFormatError says why not)."""
    from storage.store.image import ImageStore

    return ImageStore.open(store, read_only=True)


def require_checkpoints(checkpoints: str, hint: str = "--checkpoints") -> None:
    """A train-generator output (a folder or URL) has generator/ and classifier/."""
    from daug_core.checkpoints.layout import verify_checkpoint_files
    from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
    from storage.store.location import Location

    for name in (GENERATOR_DIR, CLASSIFIER_DIR):
        place = Location.of(checkpoints).child(name)
        if not place.is_dir():
            raise typer.BadParameter(f"{place} does not exist", param_hint=hint)
        if place.is_local:  # a changed or replaced file: one error before Prefect starts
            verify_checkpoint_files(place.local_path())


def require_release(release: str, reader: ReaderConfig) -> None:
    """The release root holds the CSVs ``reader`` reads, readable and with the values a
    release has (a ReleaseFormatError names the file, line and column), before Prefect starts."""
    from storage.release.reader import ReleaseReader

    found = ReleaseReader(release, reader)
    for kind in ("metadata", "split", reader.labeler):
        found.read_table(kind)


def require_truth(truth: str) -> None:
    """A synthetic release's ground-truth folder (labels and masks.zarr)."""
    from storage.synthetic.ground_truth import GroundTruthError, GroundTruthMasks

    try:
        GroundTruthMasks.open(truth)
    except GroundTruthError as exc:
        raise typer.BadParameter(str(exc), param_hint="--truth") from None


def require_heatmap_version(store: ImageStore, version: str, hint: str) -> None:
    from storage.store.heatmaps import HeatmapStore

    versions = HeatmapStore.versions(store)
    if version not in versions:
        raise typer.BadParameter(
            f"{store.location} has no heatmap version {version!r} "
            f"(it has: {', '.join(versions) or 'none'})",
            param_hint=hint,
        )


def require_training_data(
    store: str, config: ContrastiveConfig, version: str, missing: MissingHeatmaps
) -> None:
    """The splits the contrastive training reads (train, validate) hold usable items, with
    the heatmap version the mode reads: an empty split, a missing version or (with
    ``missing="fail"``) missing heatmaps is one error line before the output folder exists."""
    from flows.runtime.contrastive import heatmap_channels, open_datasets

    if heatmap_channels(config) is not None:
        require_heatmap_version(require_store(store), version, "--heatmap-version")
    open_datasets(store, config, version, ["train", "validate"], missing)
