"""The ablation grids of :mod:`flows.ablate`: which variants, with which heatmap mode and
hybrid-loss weight w. Torch-free, so the CLI checks ``--grid`` / ``--variant`` / ``--weight``
before Prefect starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from daug_core.contrastive.config import HeatmapMode
from daug_core.contrastive.presets import ClipTrainSettings

AblationGrid = Literal["ours", "classification", "retrieval"]
HEATMAP_MODES: tuple[HeatmapMode, ...] = ("channel", "add", "append")


@dataclass(frozen=True)
class Variant:
    """One row of a grid: its heatmap mode and hybrid-loss weight w (``None``: the training
    settings' w, default the preset's)."""

    name: str
    mode: HeatmapMode
    weight: float | None


GRIDS: dict[AblationGrid, tuple[Variant, ...]] = {
    "ours": (
        Variant("baseline", "none", 1.0),
        Variant("daug", "channel", 1.0),
        Variant("hybrid", "none", None),
        Variant("daug+hybrid", "channel", None),
    ),
    "classification": (
        Variant("cls_baseline", "none", 0.0),
        Variant("cls_daug", "channel", 0.0),
        Variant("cls_hcontra", "none", 0.7),
        Variant("cls_all", "channel", 0.7),
    ),
    "retrieval": (
        Variant("retrieval_baseline", "none", 1.0),
        Variant("retrieval_daug", "channel", 1.0),
        Variant("retrieval_hcontra", "none", 0.8),
        Variant("retrieval_all", "channel", 0.8),
    ),
}
VARIANTS = GRIDS["ours"]


def grid_variants(
    grid: AblationGrid,
    names: list[str] | None,
    training: ClipTrainSettings,
    modes: Sequence[str] = ("channel",),
) -> tuple[Variant, ...]:
    """The variants of ``grid`` named in ``names`` (all when None), in the grid's order, each
    heatmap row once per mode of ``modes`` (``channel`` keeps the row's name, ``add`` and
    ``append`` are ``<name>-add`` / ``<name>-append``). Refuses unknown names or modes and a
    ``training.weight`` an official grid would ignore."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {list(GRIDS)}, got {grid!r}")
    known = [v.name for v in GRIDS[grid]]
    unknown = sorted(set(names or ()) - set(known))
    if unknown or (names is not None and not names):
        raise ValueError(f"variants must be among {known} for the {grid} grid, got {names}")
    if not modes or len(set(modes)) != len(modes) or not set(modes) <= set(HEATMAP_MODES):
        raise ValueError(f"modes must be distinct values among {list(HEATMAP_MODES)}, got {modes}")
    if grid != "ours" and training.weight is not None:
        raise ValueError(
            f"the official {grid} grid fixes w per row; a weight ({training.weight}) "
            "applies to the ours grid only"
        )
    chosen = [v for v in GRIDS[grid] if names is None or v.name in names]
    heatmap_modes = cast(tuple[HeatmapMode, ...], tuple(modes))
    return tuple(
        dataclasses.replace(v, name=v.name if mode == "channel" else f"{v.name}-{mode}", mode=mode)
        if v.mode != "none"
        else v
        for v in chosen
        for mode in (heatmap_modes if v.mode != "none" else ("none",))
    )


def variant_settings(training: ClipTrainSettings, variant: Variant, seed: int) -> ClipTrainSettings:
    """``training`` as the variant trains it: its heatmap mode, its w (the settings' w when
    the variant has none), and ``seed``."""
    return dataclasses.replace(
        training,
        heatmap_mode=variant.mode,
        weight=training.weight if variant.weight is None else variant.weight,
        seed=seed,
    )
