"""What a radiologist's report says about each label: positive, negated, uncertain, silent.

The report text (:mod:`report_templates`) is written FROM these mentions and the label CSVs
(:mod:`labeler`) are read FROM them, so the CSVs say what the report says, which is what the
real CheXpert / NegBio labelers approximate. Mentions mostly follow the truth, with the
imperfections of real reports: some positives hedged or not mentioned, some negatives
hedged ("cannot exclude pneumonia") and, rarely, a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from daug_core.labels import CHEXPERT_LABELS


class Mention(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    ABSENT = "absent"


# Probability that a report explicitly negates a label that is absent. Radiologists negate
# the common acute findings almost routinely and rarely mention the others.
NEGATION_RATE: dict[str, float] = {
    "Atelectasis": 0.05,
    "Cardiomegaly": 0.45,
    "Consolidation": 0.5,
    "Edema": 0.35,
    "Enlarged Cardiomediastinum": 0.3,
    "Fracture": 0.06,
    "Lung Lesion": 0.03,
    "Lung Opacity": 0.1,
    "Pleural Effusion": 0.6,
    "Pleural Other": 0.01,
    "Pneumonia": 0.2,
    "Pneumothorax": 0.55,
    "Support Devices": 0.0,
}


@dataclass(frozen=True)
class MentionRates:
    """How reports deviate from the truth (per label mention)."""

    positive_hedged: float = 0.07  # true finding described with uncertainty
    positive_silent: float = 0.04  # true finding not mentioned
    negative_hedged: float = 0.015  # absent finding raised as a possibility
    false_positive: float = 0.004  # absent finding reported as present


def draw_mentions(
    rng: np.random.Generator, truth: dict[str, bool], rates: MentionRates | None = None
) -> dict[str, Mention]:
    """One mention per CheXpert label except "No Finding" (the labelers derive it)."""
    rates = rates or MentionRates()
    out: dict[str, Mention] = {}
    for name in CHEXPERT_LABELS:
        if name == "No Finding":
            continue
        x = rng.random()
        if truth[name]:
            hedged = 0.0 if name == "Support Devices" else rates.positive_hedged
            if x < hedged:
                out[name] = Mention.UNCERTAIN
            elif x < hedged + rates.positive_silent:
                out[name] = Mention.ABSENT
            else:
                out[name] = Mention.POSITIVE
        else:
            neg = NEGATION_RATE[name]
            if name == "Support Devices":
                out[name] = Mention.ABSENT
            elif x < rates.false_positive:
                out[name] = Mention.POSITIVE
            elif x < rates.false_positive + rates.negative_hedged:
                out[name] = Mention.UNCERTAIN
            elif x < rates.false_positive + rates.negative_hedged + neg:
                out[name] = Mention.NEGATIVE
            else:
                out[name] = Mention.ABSENT
    return out
