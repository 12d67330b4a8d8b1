"""Free-text MIMIC-CXR report parser: FINDINGS and IMPRESSION with the usual fallbacks.

Headings are uppercase words followed by a colon at the start of a line ("FINDINGS:",
"FINDINGS AND IMPRESSION:", "IMPRESSION:"). When a report has neither FINDINGS nor
IMPRESSION, the last present section is used as the impression, as the MIMIC-CXR section
parser and most downstream work do (a report's last section is its conclusion).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tried in order. MIMIC-CXR reports are ASCII, a valid UTF-8 subset; a report exported by another
# system may be Windows-1252 or Latin-1. Non-ASCII cp1252 text is almost never valid UTF-8, so
# strict UTF-8 first does not misread it; cp1252 leaves five bytes undefined, and Latin-1 maps
# every byte, so the last one never fails.
REPORT_ENCODINGS: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")

_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z0-9 &/,()\-]*[A-Z)])[ \t]*:", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")

FINDINGS_HEADINGS = frozenset({"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION"})
IMPRESSION_HEADINGS = frozenset({"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "SUMMARY"})
# Sections that describe the request, never the image: not a fallback for the impression.
_CONTEXT_HEADINGS = frozenset(
    {
        "EXAMINATION",
        "EXAM",
        "INDICATION",
        "HISTORY",
        "CLINICAL HISTORY",
        "COMPARISON",
        "TECHNIQUE",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "NOTIFICATION",
        "WET READ",
    }
)


@dataclass(frozen=True)
class ReportSections:
    """The parts of a report the models read; ``source`` says where they came from."""

    findings: str
    impression: str
    source: str  # "sections", "fallback:<HEADING>", "unstructured" or "empty"

    @property
    def text(self) -> str:
        """FINDINGS then IMPRESSION, the text a report encoder is trained on."""
        return " ".join(part for part in (self.findings, self.impression) if part)


@dataclass(frozen=True)
class ReportText:
    """A report file's text and the encoding it was read with (one of REPORT_ENCODINGS)."""

    text: str
    encoding: str

    @property
    def fallback(self) -> bool:
        """True when the bytes were not UTF-8 (the text may differ from what was meant)."""
        return self.encoding != REPORT_ENCODINGS[0]


def decode_report(data: bytes) -> ReportText:
    """The text of a report file: strict UTF-8, else cp1252, else Latin-1 (never replacement
    characters, which would lose the letters for good)."""
    for encoding in REPORT_ENCODINGS[:-1]:
        try:
            return ReportText(data.decode(encoding), encoding)
        except UnicodeDecodeError:
            continue
    return ReportText(data.decode(REPORT_ENCODINGS[-1]), REPORT_ENCODINGS[-1])


def _clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def split_sections(report: str) -> list[tuple[str, str]]:
    """(HEADING, body) pairs in document order; text before the first heading is dropped."""
    matches = list(_HEADING.finditer(report))
    sections = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(report)
        heading = _clean(match.group(1))
        sections.append((heading, _clean(report[match.end() : end])))
    return sections


def parse_report(report: str) -> ReportSections:
    """Extract FINDINGS and IMPRESSION from a report's text.

    - "FINDINGS AND IMPRESSION:" fills ``findings`` (its text is said once, not twice);
    - repeated headings are joined in order;
    - without either section, the last non-empty section that is not context (EXAMINATION,
      INDICATION, COMPARISON, ...) becomes the impression; a report without any heading
      becomes the impression as a whole ("unstructured").
    """
    if not report.strip():
        return ReportSections("", "", "empty")
    sections = split_sections(report)
    findings = " ".join(body for head, body in sections if head in FINDINGS_HEADINGS and body)
    impression = " ".join(body for head, body in sections if head in IMPRESSION_HEADINGS and body)
    if findings or impression:
        return ReportSections(findings, impression, "sections")
    candidates = [(h, b) for h, b in sections if b and h not in _CONTEXT_HEADINGS]
    if candidates:
        heading, body = candidates[-1]
        return ReportSections("", body, f"fallback:{heading}")
    if not sections:
        body = _clean(re.sub(r"^\s*FINAL REPORT\s*", "", report))
        return ReportSections("", body, "unstructured" if body else "empty")
    return ReportSections("", "", "empty")
