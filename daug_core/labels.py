"""The MIMIC-CXR label vocabulary: 14 CheXpert labels and the 7 DAug super-classes.

Label values in the release CSVs: 1.0 positive, 0.0 negative, -1.0 uncertain, blank = not
mentioned. How uncertain values become training targets is a user choice
(:class:`UncertaintyPolicy`); blank always means negative.
"""

from __future__ import annotations

import re
from enum import StrEnum

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

# DAug super-classes (official code): a super-class is positive when any member is positive.
# Lung Opacity and Fracture are not used there.
SUPER_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("No Finding", ("No Finding",)),
    ("Cardiomediastinal", ("Enlarged Cardiomediastinum", "Cardiomegaly")),
    ("Lung Lesion", ("Lung Lesion",)),
    ("Parenchymal", ("Consolidation", "Edema", "Pneumonia")),
    ("Atelectasis/Pneumothorax", ("Atelectasis", "Pneumothorax")),
    ("Pleural", ("Pleural Effusion", "Pleural Other")),
    ("Support Devices", ("Support Devices",)),
)
SUPER_CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in SUPER_CLASSES)


def slug(name: str) -> str:
    """Column-safe name: ``"Enlarged Cardiomediastinum"`` -> ``"enlarged_cardiomediastinum"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


LABEL_COLUMNS: tuple[str, ...] = tuple(f"y_{slug(n)}" for n in CHEXPERT_LABELS)
SUPER_CLASS_COLUMNS: tuple[str, ...] = tuple(f"super_{slug(n)}" for n in SUPER_CLASS_NAMES)


class UncertaintyPolicy(StrEnum):
    """What an uncertain (-1.0) label becomes: 0 (``u-zeros``), 1 (``u-ones``) or masked."""

    U_ZEROS = "u-zeros"
    U_ONES = "u-ones"
    IGNORE = "ignore"


def binarize(raw: np.ndarray, policy: UncertaintyPolicy) -> np.ndarray:
    """Map raw label values (1, 0, -1, NaN=blank) to targets in {1, 0} or NaN (masked).

    Blank means "not mentioned" and is negative under every policy.
    """
    raw = np.asarray(raw, dtype=np.float64)
    out = np.where(raw == 1.0, 1.0, 0.0)
    uncertain = raw == -1.0
    if policy is UncertaintyPolicy.U_ONES:
        out[uncertain] = 1.0
    elif policy is UncertaintyPolicy.IGNORE:
        out[uncertain] = np.nan
    return out


def super_class_targets(binary: np.ndarray) -> np.ndarray:
    """(N, 14) binarized labels -> (N, 7) super-class targets.

    A super-class is 1 when any member is 1; else NaN (masked) when any member is masked;
    else 0. Columns follow :data:`CHEXPERT_LABELS` and :data:`SUPER_CLASSES` order.
    """
    binary = np.atleast_2d(np.asarray(binary, dtype=np.float64))
    if binary.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"expected {len(CHEXPERT_LABELS)} label columns, got {binary.shape[1]}")
    index = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
    out = np.zeros((binary.shape[0], len(SUPER_CLASSES)), dtype=np.float64)
    for j, (_, members) in enumerate(SUPER_CLASSES):
        cols = binary[:, [index[m] for m in members]]
        positive = (cols == 1.0).any(axis=1)
        masked = np.isnan(cols).any(axis=1)
        out[:, j] = np.where(positive, 1.0, np.where(masked, np.nan, 0.0))
    return out
