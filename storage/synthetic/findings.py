"""Which findings a study has: presence draws, co-occurrence, and the study's labels.

Findings are per STUDY (every image of the study shows them). "No Finding" is true iff no
other finding is present (support devices included), and "Lung Opacity" is true when its
own nonspecific opacity is drawn OR any parenchymal opacity is present (CheXpert's label
hierarchy: Lung Opacity is the parent of these).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.config import RENDERABLE_FINDINGS, SynthConfig
from storage.synthetic.lesions import (
    Atelectasis,
    Cardiomegaly,
    Consolidation,
    Edema,
    EnlargedCardiomediastinum,
    Fracture,
    Lesion,
    LungLesion,
    LungOpacity,
    PleuralEffusion,
    PleuralOther,
    Pneumonia,
    Pneumothorax,
    SupportDevices,
)

# Parenchymal opacities that imply a positive "Lung Opacity" label and mask.
LUNG_OPACITY_CHILDREN: frozenset[str] = frozenset(
    {"Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Pneumonia"}
)

LESION_DRAWERS: Mapping[str, Callable[[np.random.Generator], Lesion]] = MappingProxyType(
    {
        "Atelectasis": Atelectasis.draw,
        "Cardiomegaly": Cardiomegaly.draw,
        "Consolidation": Consolidation.draw,
        "Edema": Edema.draw,
        "Enlarged Cardiomediastinum": EnlargedCardiomediastinum.draw,
        "Fracture": Fracture.draw,
        "Lung Lesion": LungLesion.draw,
        "Lung Opacity": LungOpacity.draw,
        "Pleural Effusion": PleuralEffusion.draw,
        "Pleural Other": PleuralOther.draw,
        "Pneumonia": Pneumonia.draw,
        "Pneumothorax": Pneumothorax.draw,
        "Support Devices": SupportDevices.draw,
    }
)
assert tuple(LESION_DRAWERS) == RENDERABLE_FINDINGS


class UnknownFindingError(ValueError):
    """A finding name that is not one of the renderable CheXpert findings."""


@dataclass(frozen=True)
class StudyFindings:
    """The lesions of one study, in CheXpert label order."""

    lesions: tuple[Lesion, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(lesion.label for lesion in self.lesions)

    def get(self, name: str) -> Lesion | None:
        return next((lesion for lesion in self.lesions if lesion.label == name), None)

    def only(self, names: Collection[str]) -> StudyFindings:
        """The same lesions (same parameters) restricted to ``names``: render an image with
        and without one finding to see exactly what it changes."""
        unknown = set(names) - set(RENDERABLE_FINDINGS)
        if unknown:
            raise UnknownFindingError(f"not renderable findings: {sorted(unknown)}")
        return StudyFindings(tuple(lesion for lesion in self.lesions if lesion.label in names))

    def labels(self) -> dict[str, bool]:
        """True findings for all 14 CheXpert labels (the ground truth)."""
        present = self.names
        out = {name: name in present for name in CHEXPERT_LABELS}
        out["Lung Opacity"] = out["Lung Opacity"] or bool(present & LUNG_OPACITY_CHILDREN)
        out["No Finding"] = not present
        return out


def _ordered(lesions: Mapping[str, Lesion]) -> StudyFindings:
    return StudyFindings(tuple(lesions[n] for n in RENDERABLE_FINDINGS if n in lesions))


def draw_study_findings(
    presence_rng: np.random.Generator, lesion_rng: np.random.Generator, config: SynthConfig
) -> StudyFindings:
    """Draw which findings a study has, then their parameters.

    Presence: with probability ``normal_fraction`` the study is normal; otherwise each
    finding is drawn independently with its configured prevalence, linked findings are
    added by ``cooccurrence``, and a study that drew nothing gets one finding chosen in
    proportion to the prevalences (an abnormal study has at least one finding). Parameters
    come from a separate stream so changing rates does not move existing lesions.
    """
    if presence_rng.random() < config.normal_fraction:
        return StudyFindings()
    names = [n for n, _ in config.prevalences]
    probs = np.array([p for _, p in config.prevalences], dtype=np.float64)
    drawn = presence_rng.random(len(names)) < probs
    present = {n for n, hit in zip(names, drawn, strict=True) if hit}
    for cause, effect, p in config.cooccurrence:
        # one draw per rule whatever the outcome keeps the stream aligned across studies
        hit = presence_rng.random() < p
        if cause in present and hit:
            present.add(effect)
    if not present and probs.sum() > 0:
        present.add(names[int(presence_rng.choice(len(names), p=probs / probs.sum()))])
    lesions = {n: LESION_DRAWERS[n](lesion_rng) for n in RENDERABLE_FINDINGS if n in present}
    return _ordered(lesions)


def draw_all_findings(lesion_rng: np.random.Generator) -> StudyFindings:
    """Parameters for EVERY renderable finding (select subsets with :meth:`only`)."""
    return _ordered({n: LESION_DRAWERS[n](lesion_rng) for n in RENDERABLE_FINDINGS})
