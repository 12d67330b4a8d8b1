"""MIMIC-style free-text reports written from the study's mentions.

Layout follows the MIMIC-CXR reports: a centred ``FINAL REPORT`` line, uppercase section
headings followed by a colon, one leading space per line, "___" wherever the
de-identification removed text (ages, dates, names, times). Variants, by weight:

- EXAMINATION / INDICATION / COMPARISON / FINDINGS / IMPRESSION (most reports);
- IMPRESSION only; "FINDINGS AND IMPRESSION:" in one section; FINDINGS only;
- optional TECHNIQUE, NOTIFICATION and a leading WET READ, HISTORY instead of INDICATION.

Findings are stated positively ("Small left pleural effusion."), negated ("No
pneumothorax.") or with uncertainty ("Pneumonia cannot be excluded.") per
:class:`Mention`; side and zone come from the drawn lesion, so the text matches the image.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from storage.synthetic.findings import LUNG_OPACITY_CHILDREN, StudyFindings
from storage.synthetic.lesions import (
    Fracture,
    LungLesion,
    PleuralEffusion,
    Pneumothorax,
    SupportDevices,
)
from storage.synthetic.mentions import Mention

_WIDTH = 76
_ORDER = (
    "Support Devices",
    "Consolidation",
    "Pneumonia",
    "Lung Opacity",
    "Lung Lesion",
    "Atelectasis",
    "Edema",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumothorax",
    "Cardiomegaly",
    "Enlarged Cardiomediastinum",
    "Fracture",
)


@dataclass(frozen=True)
class ReportContext:
    """Study facts the report mentions besides the findings."""

    examination: str
    sex: str  # "M" / "F"
    has_prior: bool


@dataclass(frozen=True)
class _Where:
    side: str  # "right", "left", "bilateral"
    zone: str  # "upper", "mid", "lower"


def _side_word(side: int) -> str:
    return {-1: "right", 1: "left"}.get(side, "bilateral")


def _where(findings: StudyFindings, name: str, rng: np.random.Generator) -> _Where:
    """Side and zone of the lesion behind a mention (random for false-positive mentions)."""
    lesion = findings.get(name)
    if lesion is None and name == "Lung Opacity":
        lesion = next((les for les in findings.lesions if les.label in LUNG_OPACITY_CHILDREN), None)
    side = lesion.side if lesion is not None else (-1 if rng.random() < 0.5 else 1)
    v = getattr(lesion, "v", None)
    if v is None:
        v = float(rng.uniform(0.2, 0.8))
    zone = "upper" if v < 0.4 else ("mid" if v < 0.6 else "lower")
    if getattr(lesion, "kind", None) == "basal":
        zone = "lower"
    if side == 0 and name not in ("Edema", "Pleural Effusion"):
        side = -1 if rng.random() < 0.5 else 1
    return _Where(side=_side_word(side), zone=zone)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _device_sentences(findings: StudyFindings, rng: np.random.Generator) -> list[str]:
    lesion = findings.get("Support Devices")
    kinds = lesion.kinds if isinstance(lesion, SupportDevices) else ("endotracheal tube",)
    texts = {
        "endotracheal tube": (
            "Endotracheal tube terminates approximately {n} cm above the carina.",
            "The ET tube is in standard position, {n} cm above the carina.",
        ),
        "enteric tube": (
            "An enteric tube courses below the diaphragm with its tip in the stomach.",
            "Nasogastric tube tip is in the stomach.",
        ),
        "right central line": (
            "Right internal jugular central venous catheter terminates in the mid SVC.",
            "A right-sided central line ends at the cavoatrial junction.",
        ),
        "pacemaker": (
            "Left-sided pacemaker with lead terminating in the right ventricle.",
            "A left chest wall pacing device is present, lead in the expected position.",
        ),
    }
    return [_pick(rng, texts[k]).format(n=int(rng.integers(3, 6))) for k in kinds]


def _positive(name: str, findings: StudyFindings, rng: np.random.Generator) -> list[str]:
    if name == "Support Devices":
        return _device_sentences(findings, rng)
    w = _where(findings, name, rng)
    lesion = findings.get(name)
    if name == "Pleural Effusion":
        height = max(h for _, h in lesion.heights) if isinstance(lesion, PleuralEffusion) else 0.25
        size = "small" if height < 0.3 else ("moderate" if height < 0.42 else "large")
        if w.side == "bilateral":
            return [
                _pick(
                    rng,
                    (
                        f"Bilateral {size} pleural effusions.",
                        f"Bilateral pleural effusions are present, {size} on the right.",
                    ),
                )
            ]
        return [
            _cap(
                _pick(
                    rng,
                    (
                        f"{size} {w.side} pleural effusion.",
                        f"a {size} {w.side} pleural effusion blunts the costophrenic angle.",
                        f"layering {w.side} pleural effusion is {size}.",
                    ),
                )
            )
        ]
    if name == "Pneumothorax":
        depth = lesion.depth if isinstance(lesion, Pneumothorax) else 0.25
        size = "small" if depth < 0.3 else "moderate"
        return [
            _cap(
                _pick(
                    rng,
                    (
                        f"there is a {size} {w.side} apical pneumothorax.",
                        f"{w.side} pneumothorax with a visible pleural line along the apex.",
                        f"a {size} {w.side} pneumothorax is new.",
                    ),
                )
            )
        ]
    if name == "Lung Lesion":
        radius = lesion.radius if isinstance(lesion, LungLesion) else 0.1
        cm = 30.0 * radius  # thorax half-width ~ 15 cm; diameter = 2 r
        return [
            _cap(
                _pick(
                    rng,
                    (
                        f"a {cm:.1f} cm nodule is seen in the {w.side} {w.zone} lung.",
                        f"there is a rounded {cm:.1f} cm mass in the {w.side} {w.zone} lung.",
                        f"{w.side} {w.zone} lung nodule measures {cm:.1f} cm.",
                    ),
                )
            )
        ]
    if name == "Lung Opacity" and lesion is None:
        return [_cap(_implied_opacity(findings, w, rng))]
    if name == "Fracture":
        rib = lesion.rib + 3 if isinstance(lesion, Fracture) else 6
        return [
            _cap(
                _pick(
                    rng,
                    (
                        f"displaced fracture of the {w.side} {_ordinal(rib)} posterolateral rib.",
                        f"there is an acute-appearing {w.side} {_ordinal(rib)} rib fracture.",
                    ),
                )
            )
        ]
    table = {
        "Atelectasis": (
            f"{w.side} basilar atelectasis.",
            f"plate-like atelectasis at the {w.side} lung base.",
            f"there is atelectasis of the {w.side} {w.zone} lung.",
        ),
        "Cardiomegaly": (
            "the heart is enlarged.",
            "moderate cardiomegaly.",
            "the cardiac silhouette is enlarged.",
        ),
        "Consolidation": (
            f"there is consolidation in the {w.side} {w.zone} lung.",
            f"dense {w.side} {w.zone} lobe consolidation.",
        ),
        "Edema": (
            "moderate pulmonary edema.",
            "there is bilateral perihilar haziness consistent with pulmonary edema.",
            "findings are consistent with interstitial pulmonary edema.",
        ),
        "Enlarged Cardiomediastinum": (
            "the superior mediastinum is widened.",
            "the mediastinum is widened.",
        ),
        "Lung Opacity": (
            f"hazy opacity in the {w.side} {w.zone} lung.",
            f"there is an ill-defined opacity in the {w.side} {w.zone} lung.",
        ),
        "Pleural Other": (
            f"{w.side} pleural thickening with calcified pleural plaques.",
            f"pleural thickening along the {w.side} lateral chest wall.",
        ),
        "Pneumonia": (
            f"findings consistent with {w.side} {w.zone} lobe pneumonia.",
            f"patchy {w.side} {w.zone} lung opacities represent pneumonia.",
        ),
    }
    return [_cap(_pick(rng, table[name]))]


def _implied_opacity(findings: StudyFindings, w: _Where, rng: np.random.Generator) -> str:
    """ "Lung Opacity" stated for a parenchymal child finding without its own opacity."""
    child = next((les for les in findings.lesions if les.label in LUNG_OPACITY_CHILDREN), None)
    if child is not None and child.label == "Edema":
        return _pick(rng, ("bilateral perihilar opacities.", "diffuse bilateral hazy opacities."))
    if child is not None and child.label == "Atelectasis":
        return f"{w.side} basilar opacity."
    return _pick(
        rng, (f"opacity in the {w.side} {w.zone} lung.", f"{w.side} {w.zone} lung opacity.")
    )


def _uncertain(name: str, findings: StudyFindings, rng: np.random.Generator) -> list[str]:
    w = _where(findings, name, rng)
    table = {
        "Atelectasis": (
            f"opacity at the {w.side} base may reflect atelectasis.",
            f"possible {w.side} basilar atelectasis.",
        ),
        "Cardiomegaly": (
            "the heart size may be mildly enlarged, difficult to assess on this view.",
            "possible mild cardiomegaly.",
        ),
        "Consolidation": (
            f"focal consolidation in the {w.side} {w.zone} lung cannot be excluded.",
            f"possible consolidation in the {w.side} {w.zone} lung.",
        ),
        "Edema": ("possible mild pulmonary edema.", "mild edema cannot be excluded."),
        "Enlarged Cardiomediastinum": (
            "the mediastinum may be widened, possibly due to positioning.",
        ),
        "Fracture": (f"possible fracture of a {w.side} rib.",),
        "Lung Lesion": (
            f"a nodular opacity in the {w.side} {w.zone} lung could represent a nodule.",
            f"possible {w.side} {w.zone} lung nodule; CT is recommended.",
        ),
        "Lung Opacity": (f"subtle {w.side} {w.zone} opacity may be present.",),
        "Pleural Effusion": (
            f"blunting of the {w.side} costophrenic angle may reflect a small effusion.",
            f"a small {w.side} pleural effusion cannot be excluded.",
        ),
        "Pleural Other": (f"possible {w.side} pleural thickening.",),
        "Pneumonia": (
            "pneumonia cannot be excluded.",
            f"possible early pneumonia in the {w.side} {w.zone} lung.",
            f"{w.side} {w.zone} opacity is concerning for pneumonia.",
        ),
        "Pneumothorax": (f"possible tiny {w.side} apical pneumothorax.",),
        "Support Devices": ("a tube is possibly present.",),
    }
    return [_cap(_pick(rng, table[name]))]


# Nouns for the combined negation sentence ("There is no focal consolidation, pleural
# effusion or pneumothorax."); other labels are negated in their own sentence.
_NEGATION_NOUNS = {
    "Consolidation": "focal consolidation",
    "Pleural Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Edema": "pulmonary edema",
    "Pneumonia": "pneumonia",
}
_SINGLE_NEGATIONS = {
    "Atelectasis": ("No atelectasis.",),
    "Cardiomegaly": (
        "Heart size is normal.",
        "The cardiac silhouette is normal in size.",
        "No cardiomegaly.",
    ),
    "Enlarged Cardiomediastinum": (
        "Mediastinal contours are normal.",
        "The mediastinal contour is not widened.",
    ),
    "Fracture": ("No displaced rib fracture is seen.", "No acute fracture."),
    "Lung Lesion": ("No pulmonary nodules or masses.",),
    "Lung Opacity": ("No focal opacity.", "No new lung opacity."),
    "Pleural Other": ("No pleural thickening.",),
    "Support Devices": ("No support devices.",),
}


def _negations(negated: list[str], rng: np.random.Generator) -> list[str]:
    sentences: list[str] = []
    combined = [_NEGATION_NOUNS[n] for n in _ORDER if n in negated and n in _NEGATION_NOUNS]
    if combined:
        listed = (
            combined[0] if len(combined) == 1 else ", ".join(combined[:-1]) + " or " + combined[-1]
        )
        sentences.append(
            _pick(
                rng,
                (
                    f"There is no {listed}.",
                    f"No {listed} is seen.",
                    f"No evidence of {listed}.",
                ),
            )
        )
    for name in _ORDER:
        if name in negated and name not in _NEGATION_NOUNS:
            sentences.append(_pick(rng, _SINGLE_NEGATIONS[name]))
    return sentences


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _indication(findings: StudyFindings, ctx: ReportContext, rng: np.random.Generator) -> str:
    names = findings.names
    reasons: tuple[str, ...]
    if "Support Devices" in names:
        reasons = ("intubated, evaluate tube position", "line placement, assess position")
    elif names & {"Pneumonia", "Consolidation"}:
        reasons = ("fever and cough, evaluate for pneumonia", "productive cough, r/o pneumonia")
    elif names & {"Edema", "Pleural Effusion", "Cardiomegaly"}:
        reasons = ("shortness of breath, history of CHF", "dyspnea and leg swelling")
    elif "Pneumothorax" in names:
        reasons = ("acute chest pain, evaluate for pneumothorax", "s/p chest tube removal")
    else:
        reasons = ("chest pain", "cough", "preoperative evaluation", "shortness of breath")
    reason = _pick(rng, reasons)
    person = "man" if ctx.sex == "M" else "woman"
    return _pick(
        rng,
        (
            f"___-year-old {person} with {reason}.",
            f"___{ctx.sex} with {reason}  // {reason.split(',')[0]}?",
            f"History: ___{ctx.sex} with {reason}",
            f"___ year old {person} with {reason}.",
        ),
    )


def _comparison(ctx: ReportContext, rng: np.random.Generator) -> str:
    if not ctx.has_prior:
        return _pick(rng, ("None.", "None available.", "___"))
    return _pick(
        rng, ("___.", "Chest radiograph from ___.", "Prior chest radiographs ___ and ___.")
    )


def _paragraph(sentences: list[str]) -> list[str]:
    text = "  ".join(sentences)
    return [" " + line for line in textwrap.wrap(text, _WIDTH)] or [" "]


def _section(heading: str, body: list[str], inline: bool = False) -> list[str]:
    """``INDICATION:  text`` (inline) or a heading line, a blank line and a paragraph."""
    if inline:
        first, *rest = body
        return [f" {heading}:  {first.strip()}", *rest, " "]
    return [f" {heading}:", " ", *body, " "]


def write_report(
    mentions: dict[str, Mention],
    findings: StudyFindings,
    ctx: ReportContext,
    rng: np.random.Generator,
) -> str:
    """Full report text for one study."""
    positives: list[str] = []
    impression: list[str] = []
    for name in _ORDER:
        mention = mentions.get(name, Mention.ABSENT)
        if mention is Mention.POSITIVE:
            sentences = _positive(name, findings, rng)
        elif mention is Mention.UNCERTAIN:
            sentences = _uncertain(name, findings, rng)
        else:
            continue
        positives.extend(sentences)
        if name != "Support Devices" or rng.random() < 0.3:
            impression.extend(sentences)
    negated = [n for n in _ORDER if mentions.get(n) is Mention.NEGATIVE]
    findings_text = positives + _negations(negated, rng)
    if not findings_text:
        findings_text = [_pick(rng, ("The lungs are clear.", "Lungs are well expanded and clear."))]
    if not impression:
        impression = [
            _pick(
                rng,
                (
                    "No acute cardiopulmonary process.",
                    "No acute intrathoracic process.",
                    "No radiographic evidence of acute disease.",
                ),
            )
        ]

    layout = _pick_weighted(
        rng,
        (
            ("findings+impression", 0.64),
            ("impression", 0.14),
            ("findings and impression", 0.12),
            ("findings", 0.10),
        ),
    )
    lines = ["                                 FINAL REPORT"]
    if rng.random() < 0.05:
        lines += _section("WET READ", [" ___ ___ ___ " + impression[0]], inline=True)
    lines += _section("EXAMINATION", [" " + ctx.examination], inline=True)
    heading = "INDICATION" if rng.random() < 0.85 else "HISTORY"
    lines += _section(heading, _paragraph([_indication(findings, ctx, rng)]), inline=True)
    if rng.random() < 0.3:
        technique = (
            "Portable AP chest radiograph."
            if "PORT" in ctx.examination
            else "PA and lateral views of the chest."
        )
        lines += _section("TECHNIQUE", [" " + technique], inline=True)
    lines += _section("COMPARISON", [" " + _comparison(ctx, rng)], inline=True)
    if layout == "findings+impression":
        lines += _section("FINDINGS", _paragraph(findings_text))
        lines += _section("IMPRESSION", _paragraph(impression))
    elif layout == "impression":
        # impression-only reports carry all mentions in the impression
        lines += _section(
            "IMPRESSION", _paragraph(findings_text if positives else impression + findings_text)
        )
    elif layout == "findings and impression":
        lines += _section("FINDINGS AND IMPRESSION", _paragraph(findings_text))
    else:
        lines += _section("FINDINGS", _paragraph(findings_text))
    if positives and rng.random() < 0.15:
        lines += _section(
            "NOTIFICATION",
            _paragraph(
                ["The findings were discussed with Dr. ___ by Dr. ___ by telephone on ___ at ___."]
            ),
        )
    return "\n".join(lines).rstrip() + "\n"


def _pick_weighted(rng: np.random.Generator, options: Sequence[tuple[str, float]]) -> str:
    weights = np.array([w for _, w in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]
