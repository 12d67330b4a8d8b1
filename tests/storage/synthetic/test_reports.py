from __future__ import annotations

import re

import numpy as np

from daug_core.labels import CHEXPERT_LABELS
from storage.synthetic.findings import draw_all_findings
from storage.synthetic.labeler import LabelerStyle, format_label, label_row
from storage.synthetic.mentions import Mention, draw_mentions
from storage.synthetic.report_templates import ReportContext, write_report

HEADING = re.compile(r"^ ([A-Z][A-Z ]+):", re.MULTILINE)
OTHER_LABELS = [n for n in CHEXPERT_LABELS if n != "No Finding"]


def _reports(n: int) -> list[tuple[dict[str, bool], dict[str, Mention], str]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        everything = draw_all_findings(rng)
        chosen = [name for name in OTHER_LABELS if rng.random() < 0.15]
        findings = everything.only(set(chosen) & everything.names)
        truth = findings.labels()
        mentions = draw_mentions(rng, truth)
        ctx = ReportContext("CHEST (PA AND LAT)", "F" if i % 2 else "M", has_prior=i % 3 == 0)
        out.append((truth, mentions, write_report(mentions, findings, ctx, rng)))
    return out


def test_reports_have_mimic_sections_and_deid_tokens() -> None:
    reports = _reports(300)
    layouts = set()
    for _, _, text in reports:
        assert text.splitlines()[0].strip() == "FINAL REPORT"
        headings = HEADING.findall(text)
        assert "EXAMINATION" in headings
        assert "INDICATION" in headings or "HISTORY" in headings
        assert "___" in text
        assert all(line.startswith(" ") for line in text.splitlines() if line)
        layouts.add(tuple(h for h in headings if "FINDINGS" in h or "IMPRESSION" in h))
    assert ("FINDINGS", "IMPRESSION") in layouts
    assert ("IMPRESSION",) in layouts
    assert ("FINDINGS AND IMPRESSION",) in layouts
    assert ("FINDINGS",) in layouts


def test_reports_state_positive_negative_and_uncertain_findings() -> None:
    texts = " ".join(text.lower() for _, _, text in _reports(300))
    assert "pleural effusion" in texts
    assert "no " in texts  # negations
    assert "cannot be excluded" in texts or "possible" in texts
    assert "no acute cardiopulmonary process" in texts


def test_mentions_follow_truth() -> None:
    agree = positives = false_alarms = negatives = 0
    for truth, mentions, _ in _reports(300):
        for name, mention in mentions.items():
            if truth[name]:
                positives += 1
                agree += mention is Mention.POSITIVE
            else:
                negatives += 1
                false_alarms += mention is Mention.POSITIVE
    assert agree / positives > 0.8
    assert false_alarms / negatives < 0.02


def test_labeler_values_and_no_finding_rule() -> None:
    mentions = {n: Mention.ABSENT for n in OTHER_LABELS}
    mentions["Pleural Effusion"] = Mention.NEGATIVE
    row = label_row(mentions, np.random.default_rng(0), 0.0, LabelerStyle.CHEXPERT)
    assert row["Pleural Effusion"] == 0.0 and row["No Finding"] == 1.0
    assert row["Edema"] is None
    mentions["Pneumonia"] = Mention.UNCERTAIN
    mentions["Edema"] = Mention.POSITIVE
    row = label_row(mentions, np.random.default_rng(0), 0.0, LabelerStyle.NEGBIO)
    assert row["Pneumonia"] == -1.0 and row["Edema"] == 1.0 and row["No Finding"] is None
    assert [format_label(v) for v in (1.0, 0.0, -1.0, None)] == ["1.0", "0.0", "-1.0", ""]


def test_labelers_disagree_a_little() -> None:
    differ = cells = 0
    for i, (_, mentions, _) in enumerate(_reports(200)):
        a = label_row(mentions, np.random.default_rng(i), 0.03, LabelerStyle.CHEXPERT)
        b = label_row(mentions, np.random.default_rng(10_000 + i), 0.03, LabelerStyle.NEGBIO)
        cells += len(a)
        differ += sum(a[k] != b[k] for k in a)
    assert 0 < differ / cells < 0.05
