"""Simulated CheXpert and NegBio labelers: report mentions -> one label-CSV row.

positive -> 1.0, negated -> 0.0, uncertain -> -1.0, not mentioned -> blank. Each labeler
misreads a mention with probability ``noise`` in its own characteristic way (CheXpert tends
to keep hedges uncertain and miss negations; NegBio over-applies negation), and both draw
from their own random streams, so the two CSVs disagree on a few percent of mentions as the
real ones do. "No Finding" is 1.0 iff no other label is positive or uncertain, else blank
(support devices count, matching the ground-truth definition of this release).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.mentions import Mention

LabelValue = float | None  # None = blank cell

_VALUE: dict[Mention, LabelValue] = {
    Mention.POSITIVE: 1.0,
    Mention.NEGATIVE: 0.0,
    Mention.UNCERTAIN: -1.0,
    Mention.ABSENT: None,
}


class LabelerStyle(StrEnum):
    CHEXPERT = "chexpert"
    NEGBIO = "negbio"


# Confusions per style: a misread mention becomes one of these (first listed most often).
_CONFUSIONS: dict[LabelerStyle, dict[Mention, tuple[Mention, ...]]] = {
    LabelerStyle.CHEXPERT: {
        Mention.POSITIVE: (Mention.UNCERTAIN, Mention.ABSENT),
        Mention.NEGATIVE: (Mention.ABSENT, Mention.UNCERTAIN),
        Mention.UNCERTAIN: (Mention.POSITIVE, Mention.NEGATIVE),
    },
    LabelerStyle.NEGBIO: {
        Mention.POSITIVE: (Mention.NEGATIVE, Mention.UNCERTAIN),
        Mention.NEGATIVE: (Mention.ABSENT, Mention.POSITIVE),
        Mention.UNCERTAIN: (Mention.NEGATIVE, Mention.POSITIVE),
    },
}


def label_row(
    mentions: dict[str, Mention],
    rng: np.random.Generator,
    noise: float,
    style: LabelerStyle,
) -> dict[str, LabelValue]:
    """Values for the 14 CheXpert columns, in :data:`CHEXPERT_LABELS` order."""
    read: dict[str, Mention] = {}
    for name, mention in mentions.items():
        # draw for every label (hit or not) so the stream stays aligned across studies
        miss, pick = rng.random(), rng.random()
        if mention is not Mention.ABSENT and miss < noise:
            options = _CONFUSIONS[style][mention]
            mention = options[0] if pick < 0.75 else options[1]
        read[name] = mention
    row: dict[str, LabelValue] = {}
    for name in CHEXPERT_LABELS:
        if name == "No Finding":
            abnormal = any(m in (Mention.POSITIVE, Mention.UNCERTAIN) for m in read.values())
            row[name] = None if abnormal else 1.0
        else:
            row[name] = _VALUE[read[name]]
    return row


def format_label(value: LabelValue) -> str:
    """CSV cell text as in MIMIC: ``1.0``, ``0.0``, ``-1.0`` or empty."""
    return "" if value is None else f"{value:.1f}"
