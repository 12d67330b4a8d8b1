"""Heatmap quality against known lesions: per-item scores, per-target summaries, run comparisons.

A heatmap of target ``±c`` (``"+No Finding"``, ``"-Pleural"``) should put its heat where class
c's lesions are: for ``+No Finding`` (make the image healthy) that is every lesion; for a DAug
super-class the lesions of its CheXpert members (``Pleural`` = Pleural Effusion | Pleural
Other). Per (image, target) the item is one of three kinds:

- ``lesion``: the target's mask is not empty: pointing game hit (peak within ``tolerance`` px
  of the mask), pixel AUROC, mass inside, and the heat's shares on the target's lesion, on
  the OTHER findings' lesions (off-target) and on healthy tissue;
- ``healthy``: the image has no lesion at all: energy (mean heat), false-positive heat;
- ``other``: the image has lesions, none of this target's: the off-target share (heat on
  those other lesions / all heat) and energy.

Items that cannot be scored (no masks for the image, heatmap not finite) give ``failed`` rows
with the reason, one per target. The metric functions are :mod:`daug_core.evaluation.localization`;
this
module joins them with the label vocabulary of :mod:`daug_core.labels`, so it lives in flows/
(storage and daug_core do not import each other).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from daug_core.diffusion.targets import Target
from daug_core.evaluation.bootstrap import paired_difference
from daug_core.evaluation.localization import (
    LocalizationInputError,
    energy,
    heat_shares,
    mass_inside,
    pixel_auroc,
    pointing_hit,
)
from daug_core.labels import CHEXPERT_LABELS, SUPER_CLASS_NAMES, SUPER_CLASSES
from storage.geometry import FitMode
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic.ground_truth import GroundTruthError, GroundTruthMasks

NO_FINDING = "No Finding"
_LABEL_INDEX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
_MEMBERS = dict(SUPER_CLASSES)


class ScoringInputError(ValueError):
    """Masks, heatmaps or targets have the wrong shape or name no known class."""


class ItemKind(StrEnum):
    LESION = "lesion"
    HEALTHY = "healthy"
    OTHER = "other"
    FAILED = "failed"


def class_channels(class_name: str) -> tuple[int, ...]:
    """The mask channels (CHEXPERT_LABELS order) of a class: all 14 for ``No Finding``, the
    members of a DAug super-class, or the one channel of a CheXpert label."""
    if class_name == NO_FINDING:
        return tuple(range(len(CHEXPERT_LABELS)))
    if class_name in _MEMBERS:
        return tuple(_LABEL_INDEX[m] for m in _MEMBERS[class_name])
    if class_name in _LABEL_INDEX:
        return (_LABEL_INDEX[class_name],)
    raise ScoringInputError(
        f"class {class_name!r} is neither a DAug super-class nor a CheXpert label"
    )


def _check_masks(masks14: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks14).astype(bool)
    if masks.ndim != 3 or masks.shape[0] != len(CHEXPERT_LABELS):
        raise ScoringInputError(f"masks must be (14, S, S), got {masks.shape}")
    return masks


def target_mask(masks14: np.ndarray, target_class_name: str) -> np.ndarray:
    """(S, S) bool: the union of the class's channels (see :func:`class_channels`)."""
    masks = _check_masks(masks14)
    return np.asarray(masks[list(class_channels(target_class_name))].any(axis=0), dtype=bool)


def other_lesions_mask(masks14: np.ndarray, target_class_name: str) -> np.ndarray:
    """(S, S) bool: the union of every channel that is NOT the class's (other findings)."""
    masks = _check_masks(masks14)
    own = set(class_channels(target_class_name))
    others = [c for c in range(len(CHEXPERT_LABELS)) if c not in own]
    if not others:
        return np.zeros(masks.shape[1:], dtype=bool)
    return np.asarray(masks[others].any(axis=0), dtype=bool)


@dataclass(frozen=True)
class ItemScore:
    """One (image, target) row; metrics that do not apply to its kind are NaN."""

    dicom_id: str
    target: str
    kind: str
    hit: float = float("nan")  # pointing game: 1.0 hit, 0.0 miss (a flat heatmap misses)
    pixel_auroc: float = float("nan")
    mass_inside: float = float("nan")
    on_target_share: float = float("nan")
    off_target_share: float = float("nan")
    healthy_share: float = float("nan")
    specificity: float = float("nan")  # heat on the target's lesion / on any lesion; only
    # for images with another finding's lesion too
    chance_specificity: float = float("nan")  # the same share for uniform heat: the target's
    # lesion area over all lesion area, what a heatmap blind to the class scores
    energy: float = float("nan")
    lesion_pixels: int = 0  # pixels of the target's mask
    reason: str = ""  # why a failed row failed


SCORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ItemScore))


def _hit(heat: np.ndarray, mask: np.ndarray, tolerance: int) -> float:
    if heat.max() == heat.min():  # no peak to point with: it points at nothing
        return 0.0
    return float(pointing_hit(heat, mask, tolerance))


def score_item(
    dicom_id: str,
    heatmaps: np.ndarray,
    targets: Sequence[str],
    masks14: np.ndarray,
    tolerance: int = 2,
    class_names: Sequence[str] = SUPER_CLASS_NAMES,
) -> list[ItemScore]:
    """Score one image's heatmaps (K, S, S), channel k for ``targets[k]``, against its
    (14, S, S) lesion masks (fitted to the heatmaps' pixels)."""
    heat_all = np.asarray(heatmaps, dtype=np.float64)
    masks = _check_masks(masks14)
    if heat_all.ndim != 3 or heat_all.shape[0] != len(targets):
        raise ScoringInputError(
            f"{dicom_id}: heatmaps {heat_all.shape} do not hold one map per target {list(targets)}"
        )
    if heat_all.shape[1:] != masks.shape[1:]:
        raise ScoringInputError(
            f"{dicom_id}: heatmaps are {heat_all.shape[1:]} px, masks {masks.shape[1:]}"
        )
    any_lesion = np.asarray(masks.any(axis=0), dtype=bool)
    rows: list[ItemScore] = []
    for text, heat in zip(targets, heat_all, strict=True):
        target = Target.parse(text, class_names)
        name = str(target)
        if not np.isfinite(heat).all() or (heat < 0).any():
            rows.append(failed_score(dicom_id, name, "heatmap_not_finite: NaN/inf or < 0"))
            continue
        mask = target_mask(masks, target.class_name)
        others = other_lesions_mask(masks, target.class_name)
        if mask.any():
            shares = heat_shares(heat, mask, others)
            two_findings = bool((others & ~mask).any())
            rows.append(
                ItemScore(
                    dicom_id,
                    name,
                    ItemKind.LESION.value,
                    hit=_hit(heat, mask, tolerance),
                    pixel_auroc=pixel_auroc(heat, mask),
                    mass_inside=mass_inside(heat, mask),
                    on_target_share=shares.on_target,
                    off_target_share=shares.off_target,
                    healthy_share=shares.healthy,
                    specificity=shares.specificity if two_findings else float("nan"),
                    chance_specificity=(
                        heat_shares(np.ones_like(heat), mask, others).specificity
                        if two_findings
                        else float("nan")
                    ),
                    energy=energy(heat),
                    lesion_pixels=int(mask.sum()),
                )
            )
        elif not any_lesion.any():
            rows.append(ItemScore(dicom_id, name, ItemKind.HEALTHY.value, energy=energy(heat)))
        else:
            shares = heat_shares(heat, mask, any_lesion)
            rows.append(
                ItemScore(
                    dicom_id,
                    name,
                    ItemKind.OTHER.value,
                    off_target_share=shares.off_target,
                    healthy_share=shares.healthy,
                    energy=energy(heat),
                )
            )
    return rows


def failed_score(dicom_id: str, target: str, reason: str) -> ItemScore:
    return ItemScore(dicom_id, target, ItemKind.FAILED.value, reason=reason)


def scores_table(scores: Sequence[ItemScore]) -> pd.DataFrame:
    """Item scores as a DataFrame with :data:`SCORE_COLUMNS` (also when empty)."""
    table = pd.DataFrame([dataclasses.asdict(s) for s in scores], columns=list(SCORE_COLUMNS))
    return table.astype({"lesion_pixels": "int64"})


SUMMARY_COLUMNS: tuple[str, ...] = (
    "target",
    "n_lesion",
    "pointing_game",
    "pixel_auroc",
    "n_auroc",
    "mass_inside",
    "on_target_share",
    "off_target_share",
    "healthy_share",
    "specificity",
    "chance_specificity",
    "n_specificity",
    "n_other",
    "other_off_target_share",
    "n_healthy",
    "healthy_energy",
    "n_failed",
)


def _mean(values: pd.Series) -> float:
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else float("nan")


def summarise_scores(scores: pd.DataFrame, targets: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per target (in ``targets`` order, default first appearance): lesion images,
    pointing game (mean hit), pixel AUROC (mean over images where it is defined), mass inside,
    the heat shares of lesion images, their class specificity (mean over the lesion images
    that also have another finding's lesion) and its chance level (the same share for uniform
    heat), the off-target share of images with only other
    lesions, healthy images and their energy, failed items."""
    order = list(targets) if targets is not None else list(dict.fromkeys(scores["target"]))
    rows = []
    for target in order:
        mine = scores[scores["target"] == target]
        lesion = mine[mine["kind"] == ItemKind.LESION.value]
        other = mine[mine["kind"] == ItemKind.OTHER.value]
        healthy = mine[mine["kind"] == ItemKind.HEALTHY.value]
        rows.append(
            {
                "target": target,
                "n_lesion": len(lesion),
                "pointing_game": _mean(lesion["hit"]),
                "pixel_auroc": _mean(lesion["pixel_auroc"]),
                "n_auroc": int(lesion["pixel_auroc"].notna().sum()),
                "mass_inside": _mean(lesion["mass_inside"]),
                "on_target_share": _mean(lesion["on_target_share"]),
                "off_target_share": _mean(lesion["off_target_share"]),
                "healthy_share": _mean(lesion["healthy_share"]),
                "specificity": _mean(lesion["specificity"]),
                "chance_specificity": _mean(lesion["chance_specificity"]),
                "n_specificity": int(lesion["specificity"].notna().sum()),
                "n_other": len(other),
                "other_off_target_share": _mean(other["off_target_share"]),
                "n_healthy": len(healthy),
                "healthy_energy": _mean(healthy["energy"]),
                "n_failed": int((mine["kind"] == ItemKind.FAILED.value).sum()),
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


# The numbers a summary row is read by (headline tables, summary.json); the sweep reports the
# lesion-image ones (it runs on lesion images only).
HEADLINE_METRICS: tuple[str, ...] = (
    "n_lesion",
    "pointing_game",
    "pixel_auroc",
    "mass_inside",
    "off_target_share",
    "healthy_share",
    "n_healthy",
    "healthy_energy",
)
LESION_METRICS: tuple[str, ...] = HEADLINE_METRICS[:6]
COMPARED_METRICS: tuple[str, ...] = (
    "pointing_game",
    "pixel_auroc",
    "mass_inside",
    "off_target_share",
    "specificity",
    "healthy_share",
    "other_off_target_share",
    "healthy_energy",
)


def compare_summaries(
    first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str] = ("softmax", "sigmoid")
) -> pd.DataFrame:
    """Two runs' summaries side by side per target: ``n_lesion_<name>``, then per metric
    ``<metric>_<first>``, ``<metric>_<second>`` and ``<metric>_diff`` = first - second
    (targets in ``first``'s order, then any only ``second`` has)."""
    a, b = names
    if a == b:
        raise ScoringInputError(f"the two runs need different names, got {names}")
    left = first.set_index("target")
    right = second.set_index("target")
    order = list(dict.fromkeys([*left.index, *right.index]))
    left, right = left.reindex(order), right.reindex(order)
    table = pd.DataFrame({"target": order})
    table[f"n_lesion_{a}"] = left["n_lesion"].to_numpy()
    table[f"n_lesion_{b}"] = right["n_lesion"].to_numpy()
    for metric in COMPARED_METRICS:
        x = left[metric].to_numpy(dtype=np.float64)
        y = right[metric].to_numpy(dtype=np.float64)
        table[f"{metric}_{a}"] = x
        table[f"{metric}_{b}"] = y
        table[f"{metric}_diff"] = x - y
    return table


def scorable_indices(
    image_store: ImageStore, heatmap_store: HeatmapStore, splits: Sequence[str] | None
) -> np.ndarray:
    """Indices of usable items of ``splits`` (None: all) that have heatmaps, sorted."""
    index = image_store.usable(splits)["index"].to_numpy(dtype=np.int64)
    return index[heatmap_store.done_for(index)]


def score_heatmap_version(
    image_store: ImageStore,
    heatmap_store: HeatmapStore,
    truth: GroundTruthMasks,
    indices: Sequence[int] | np.ndarray,
    tolerance: int = 2,
    fit: FitMode | str = FitMode.PAD,
    class_names: Sequence[str] = SUPER_CLASS_NAMES,
    batch: int = 32,
) -> pd.DataFrame:
    """Score the stored heatmaps of ``indices`` (every target of the version) against the
    ground-truth masks fitted to the heatmaps' size with ``fit`` (the store's ingest fit).
    Columns: ``index``, ``split``, then :data:`SCORE_COLUMNS`."""
    items = image_store.items().set_index("index")
    idx = np.asarray(indices, dtype=np.int64)
    targets = heatmap_store.targets
    rows: list[dict[str, object]] = []
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        maps = heatmap_store.read_heatmaps(part)
        for index, heat in zip(part, maps, strict=True):
            dicom_id = str(items.at[int(index), "dicom_id"])
            try:
                masks = truth.masks(dicom_id, heatmap_store.size, fit)
                scores = score_item(dicom_id, heat, targets, masks, tolerance, class_names)
            except (GroundTruthError, LocalizationInputError, ScoringInputError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                scores = [failed_score(dicom_id, t, reason) for t in targets]
            split = str(items.at[int(index), "split"])
            rows.extend(
                {"index": int(index), "split": split} | dataclasses.asdict(s) for s in scores
            )
    return pd.DataFrame(rows, columns=["index", "split", *SCORE_COLUMNS])


def failures_of(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per failed item (index when present, dicom_id, reason)."""
    failed = scores[scores["kind"] == ItemKind.FAILED.value]
    columns = [c for c in ("index", "dicom_id", "reason") if c in failed.columns]
    return failed[columns].drop_duplicates().reset_index(drop=True)


# Per-item columns compared pairwise (same images, two heatmap sources), by their summary name;
# the two shares are the false-positive heat: on other findings' lesions, on healthy tissue.
PAIRED_METRICS: dict[str, str] = {
    "pointing_game": "hit",
    "pixel_auroc": "pixel_auroc",
    "specificity": "specificity",
    "off_target_share": "off_target_share",
    "healthy_share": "healthy_share",
}
PAIRED_COLUMNS: tuple[str, ...] = (
    "target",
    "first",
    "second",
    "metric",
    "n",
    "first_mean",
    "second_mean",
    "chance_mean",
    "difference",
    "low",
    "high",
    "p_value",
)


def paired_comparison(
    first: pd.DataFrame,
    second: pd.DataFrame,
    names: tuple[str, str],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Two heatmap sources scored on the same lesion images (``scores_table`` frames): per
    target and metric of :data:`PAIRED_METRICS`, the mean of each over the images where both
    define it, ``first - second`` with its 95 % BCa bootstrap interval over those images and
    the paired bootstrap p-value (:func:`daug_core.evaluation.bootstrap.paired_difference`); for
    specificity also ``chance_mean``, the chance level on those images."""
    if names[0] == names[1]:
        raise ScoringInputError(f"the two sources need different names, got {names}")
    lesion = ItemKind.LESION.value
    merged = first[first["kind"] == lesion].merge(
        second[second["kind"] == lesion], on=["dicom_id", "target"], suffixes=("_a", "_b")
    )
    rows: list[dict[str, object]] = []
    for target in dict.fromkeys([*first["target"], *second["target"]]):  # n = 0 rows too
        mine = merged[merged["target"] == target]
        for metric, column in PAIRED_METRICS.items():
            a = mine[f"{column}_a"].to_numpy(dtype=np.float64)
            b = mine[f"{column}_b"].to_numpy(dtype=np.float64)
            keep = np.isfinite(a) & np.isfinite(b)
            a, b = a[keep], b[keep]
            # Specificity's chance level on the same images (a property of their masks).
            chance = mine["chance_specificity_a"].to_numpy(dtype=np.float64)[keep]
            row: dict[str, object] = {
                "target": target,
                "first": names[0],
                "second": names[1],
                "metric": metric,
                "n": int(keep.sum()),
                "first_mean": float(a.mean()) if len(a) else float("nan"),
                "second_mean": float(b.mean()) if len(b) else float("nan"),
                "chance_mean": (
                    float(chance.mean()) if metric == "specificity" and len(a) else float("nan")
                ),
            }
            if len(a) >= 2:
                result = paired_difference(np.mean, (a,), (b,), resamples=resamples, seed=seed)
                interval = result.difference
                row |= {
                    "difference": interval.estimate,
                    "low": interval.low,
                    "high": interval.high,
                    "p_value": result.p_value,
                }
            rows.append(row)
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
