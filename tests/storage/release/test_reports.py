import pytest

from storage.release.reports import ReportText, decode_report, parse_report, split_sections

MIMIC_EXAMPLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_findings_and_impression_of_the_mimic_example():
    sections = parse_report(MIMIC_EXAMPLE)
    assert sections.findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
        "nodular opacities that most likely represent nipple shadows."
    )
    assert sections.impression == "No acute cardiopulmonary process."
    assert sections.source == "sections"
    assert sections.text.startswith("There is no focal") and sections.text.endswith("process.")


def test_headings_in_document_order_and_preamble_dropped():
    heads = [h for h, _ in split_sections(MIMIC_EXAMPLE)]
    assert heads == ["EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"]


@pytest.mark.parametrize(
    ("report", "findings", "impression", "source"),
    [
        ("IMPRESSION: Small left effusion.", "", "Small left effusion.", "sections"),
        ("FINDINGS: Heart is enlarged.", "Heart is enlarged.", "", "sections"),
        (
            "FINDINGS AND IMPRESSION:\n Cannot exclude pneumonia.",
            "Cannot exclude pneumonia.",
            "",
            "sections",
        ),
        # Inline text after the heading, odd spacing and tabs.
        ("FINDINGS:\tLungs   clear.\n\nIMPRESSION:Normal.", "Lungs clear.", "Normal.", "sections"),
        # Neither section: the last non-context section stands in for the impression.
        (
            "INDICATION: cough\nCOMPARISON: ___\nNOTE: Lines in place.\nSUMMARY OF CHANGES:"
            " ET tube removed.",
            "",
            "ET tube removed.",
            "fallback:SUMMARY OF CHANGES",
        ),
        ("INDICATION: ___ with fever\nCOMPARISON: None.", "", "", "empty"),
        (
            "   FINAL REPORT\n Portable chest radiograph: no change.",
            "",
            "Portable chest radiograph: no change.",
            "unstructured",
        ),
        ("", "", "", "empty"),
        ("   \n  ", "", "", "empty"),
        (
            "FINAL REPORT\nheart size normal, lungs clear",
            "",
            "heart size normal, lungs clear",
            "unstructured",
        ),
        # Repeated headings are joined in order.
        ("FINDINGS: A.\nFINDINGS: B.\nIMPRESSION: C.", "A. B.", "C.", "sections"),
        # A heading-like word inside a sentence is not a heading.
        (
            "FINDINGS: Compared to prior, NOTE: stable.\n",
            "Compared to prior, NOTE: stable.",
            "",
            "sections",
        ),
        ("CONCLUSION: Cardiomegaly.", "", "Cardiomegaly.", "sections"),
    ],
)
def test_phrasings(report, findings, impression, source):
    sections = parse_report(report)
    assert sections.findings == findings
    assert sections.impression == impression
    assert sections.source.startswith(source)


def test_lowercase_label_with_colon_is_not_a_heading():
    report = "FINDINGS:\n PA and lateral views: lungs are clear.\nIMPRESSION: Normal."
    assert parse_report(report).findings == "PA and lateral views: lungs are clear."


def test_deidentification_tokens_are_kept():
    assert "___" in parse_report("IMPRESSION: Dr. ___ was notified at ___.").impression


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"No acute process.", ReportText("No acute process.", "utf-8")),
        ("Épanchement — d’aigu".encode(), ReportText("Épanchement — d’aigu", "utf-8")),
        ("Épanchement — d’aigu".encode("cp1252"), ReportText("Épanchement — d’aigu", "cp1252")),
        (b"\xc9panchement \x81", ReportText("Épanchement \x81", "latin-1")),  # 0x81: no cp1252
    ],
    ids=["ascii", "utf-8", "cp1252", "latin-1"],
)
def test_report_bytes_decode_strictly_with_named_fallbacks(data, expected):
    decoded = decode_report(data)
    assert decoded == expected
    assert decoded.fallback == (expected.encoding != "utf-8")
