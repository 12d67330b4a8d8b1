"""Checkpoints shipped for ``daug demo``: the tiny generator and classifier trained once, with the
``train-generator`` flow, on the demo's own synthetic release (``demo_assets/checkpoints/
asset.json`` records the release, the commands, the steps and the weights' sha256).

Heatmaps find the synthetic lesions only with models trained ~3,000 steps, which is ~20 min on
2 CPU cores, more than the demo's budget. So the demo copies these into its checkpoint folder
when, and only when, its store holds the training data they were trained on (the same items
and labels, and pixels equal up to the float rounding of the CPU that rendered them:
:class:`storage.datasets.batches.DataFingerprint`); the ``train-generator`` flow then
resumes from them (nothing left to train at the default step counts). Any other store trains
from scratch, as does ``daug demo --no-pretrained``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.checkpoints.names import CLASSIFIER_DIR, GENERATOR_DIR
from daug_core.labels import SUPER_CLASS_COLUMNS
from storage.datasets.batches import DataFingerprint, select, selection_fingerprint
from storage.store.image import ImageStore

DEMO_CHECKPOINTS = Path(__file__).resolve().with_name("demo_assets") / "checkpoints"
ASSET_FILE = "asset.json"
THUMBNAILS_FILE = "training_thumbnails.npy"


class AssetError(ValueError):
    """The shipped checkpoints are missing, unreadable or not the weights asset.json names."""


@dataclass(frozen=True)
class SeedOutcome:
    """Whether the shipped checkpoints were copied, and why (shown to the user)."""

    copied: bool
    reason: str


def read_asset(asset_dir: Path = DEMO_CHECKPOINTS) -> dict[str, Any]:
    """asset.json of ``asset_dir``, after checking that the weights beside it are the ones it
    names (sha256 of each model's safetensors)."""
    path = asset_dir / ASSET_FILE
    try:
        asset: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AssetError(f"{path}: cannot read the demo checkpoints' record ({exc})") from exc
    for name in (GENERATOR_DIR, CLASSIFIER_DIR):
        recorded = asset.get(f"{name}_sha256")
        found = checkpoint_sha256(asset_dir / name) if (asset_dir / name).is_dir() else None
        if found is None or found != recorded:
            raise AssetError(
                f"{asset_dir / name}: weights sha256 {found} differ from {recorded} in {path}"
            )
    return asset


def training_fingerprint(asset_dir: Path, asset: dict[str, Any]) -> DataFingerprint:
    """The fingerprint of the shipped checkpoints' training data, as recorded beside them."""
    path = asset_dir / THUMBNAILS_FILE
    try:
        thumbnails = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AssetError(f"{path}: cannot read the training data's thumbnails ({exc})") from exc
    return DataFingerprint(asset["trained_on"]["training_items_sha256"], thumbnails)


def write_training_fingerprint(
    asset_dir: Path, asset: dict[str, Any], fingerprint: DataFingerprint
) -> dict[str, Any]:
    """Record ``fingerprint`` beside the checkpoints: the thumbnails file, and ``asset`` with
    its items hash (returned; the caller writes asset.json)."""
    np.save(asset_dir / THUMBNAILS_FILE, fingerprint.thumbnails, allow_pickle=False)
    trained_on = asset["trained_on"] | {"training_items_sha256": fingerprint.items_sha256}
    return asset | {"trained_on": trained_on}


def seed_checkpoints(
    store: ImageStore, out: Path, asset_dir: Path = DEMO_CHECKPOINTS
) -> SeedOutcome:
    """Copy the shipped checkpoints into ``out`` when ``out`` holds none and ``store``'s
    training split is the data they were trained on. Each model folder appears in ``out``
    whole or not at all (copied beside it, then renamed)."""
    if (out / GENERATOR_DIR).exists() or (out / CLASSIFIER_DIR).exists():
        return SeedOutcome(False, f"{out} already holds checkpoints: training resumes from them")
    asset = read_asset(asset_dir)
    wanted = training_fingerprint(asset_dir, asset)
    found = selection_fingerprint(store, select(store, ["train"], SUPER_CLASS_COLUMNS))
    difference = wanted.differences(found)
    if difference is not None:
        return SeedOutcome(
            False,
            f"the store's training data are not the data the shipped checkpoints were trained "
            f"on ({asset['trained_on']['release']}): {difference}; training from scratch",
        )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".seed-") as tmp:
        staged = Path(tmp) / "checkpoints"
        shutil.copytree(asset_dir, staged)
        for entry in sorted(staged.iterdir()):
            entry.replace(out / entry.name)
    steps = asset["steps"]
    return SeedOutcome(
        True,
        f"started from the shipped checkpoints (generator {steps['generator']} steps, "
        f"classifier {steps['classifier']} steps, trained on this release; "
        f"{asset_dir / ASSET_FILE})",
    )
