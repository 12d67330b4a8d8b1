"""The outputs of ``daug explain`` a person looks at: the heatmap overlay, its PNG, and the
batch's self-contained index.html (every image renders in a browser; report text is escaped)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flows.reports.explain import explain_page, render_overlay, search_page, write_png
from tests.factories import CHROMIUM, open_in_chromium

HOSTILE = 'FINDINGS: <script>window.pwned = 1</script> effusion & "quotes"\nIMPRESSION: none'


def _xray(size: int = 16) -> np.ndarray:
    ramp = np.linspace(0.1, 0.9, size)
    return np.outer(ramp, ramp[::-1])


def test_an_overlay_is_rgb_of_the_size_asked_and_deterministic():
    heat = np.random.default_rng(0).random((16, 16))
    overlay = render_overlay(_xray(), heat, size=64)
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay, render_overlay(_xray(), heat, size=64))


def test_a_cold_heatmap_shows_the_grey_image_and_hot_pixels_are_coloured():
    cold = render_overlay(_xray(), np.zeros((16, 16)), size=32)
    assert (cold[..., 0] == cold[..., 1]).all() and (cold[..., 1] == cold[..., 2]).all()
    flat = render_overlay(np.full((16, 16), 0.5), np.zeros((16, 16)), size=32)
    assert (flat == 128).all()  # round(0.5 * 255): the image itself, not darkened

    heat = np.zeros((16, 16))
    heat[4:12, 4:12] = 1.0
    hot = render_overlay(np.full((16, 16), 0.5), heat, size=32).astype(int)
    centre, corner = hot[16, 16], hot[0, 0]
    assert centre.max() - centre.min() > 60  # coloured
    assert corner.max() == corner.min()  # untouched grey


def test_an_overlay_refuses_mismatched_or_non_finite_input():
    with pytest.raises(ValueError, match="shape"):
        render_overlay(_xray(16), np.zeros((8, 8)))
    heat = np.zeros((16, 16))
    heat[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        render_overlay(_xray(), heat)


def test_the_png_reads_back_as_written(tmp_path):
    rgb = render_overlay(_xray(), np.random.default_rng(1).random((16, 16)), size=24)
    path = write_png(rgb, tmp_path / "a" / "overlay.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]
    with pytest.raises(ValueError, match="uint8"):
        write_png(rgb.astype(np.float32), tmp_path / "b.png")


def _neighbours(folder: Path, seed: int) -> list[dict[str, Any]]:
    """Two neighbours with their images, paths relative to ``folder``."""
    rng = np.random.default_rng(seed)
    rows = []
    for rank in range(2):
        image = f"neighbours/{seed}-{rank}.png"
        write_png((rng.random((20, 20, 3)) * 255).astype(np.uint8), folder / image)
        rows.append(
            {
                "dicom_id": f"d{seed}{rank}",
                "study_id": f"s{seed}",
                "similarity": 0.9 - rank / 10,
                "labels": ["Pleural Effusion"] if rank == 0 else [],
                "report": HOSTILE,
                "image": image,
            }
        )
    return rows


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], list[dict[str, str]]]:
    """Two explained inputs with two overlays and two neighbours each (paths relative to the
    input's folder, as explain.json has them), and one failure."""
    out = tmp_path / "explained"
    results = []
    for i in range(2):
        ident = f"input-{i}"
        rng = np.random.default_rng(i)
        folder = out / ident
        write_png(render_overlay(_xray(), np.zeros((16, 16)), 64), folder / "image.png")
        overlays = {}
        for target in ("Pleural Effusion", "Cardiomegaly"):
            path = f"heatmap-{target.replace(' ', '-')}.png"
            write_png(render_overlay(_xray(), rng.random((16, 16)), 64), folder / path)
            overlays[target] = path
        results.append(
            {
                "input": f"/inbox/<b>study</b>-{i}.dcm",
                "id": ident,
                "image": "image.png",
                "probabilities": {"Cardiomegaly": 0.2, "Pleural Effusion": 0.7, "Edema": 0.05},
                "overlays": overlays,
                "neighbours": _neighbours(folder, i),
            }
        )
    failures = [{"input": "/inbox/lateral.dcm", "reason": "lateral", "detail": "ViewPosition LL"}]
    return out, results, failures


def test_the_page_is_one_self_contained_file_with_its_text_escaped(batch):
    out, results, failures = batch
    page = explain_page(results, failures, out, "daug explain")
    assert page == out / "index.html"
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) == 2 * (1 + 2 + 2)  # per input: image, two overlays, two neighbours
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert 'class="missing"' not in text
    assert "<script>" not in text and "&lt;script&gt;window.pwned" in text
    assert "<b>study</b>" not in text


def test_an_image_outside_the_output_folder_is_refused(batch):
    out, results, failures = batch
    results[0]["overlays"]["Edema"] = "../../../etc/passwd"
    with pytest.raises(ValueError, match="inside"):
        explain_page(results, failures, out, "daug explain")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_the_pages_render_in_a_browser_with_every_image(batch, tmp_path):
    out, results, failures = batch
    shown = open_in_chromium(explain_page(results, failures, out, "daug explain"))
    assert len(shown["widths"]) == 10
    assert all(width > 0 for _, width in shown["widths"]), shown["widths"]
    assert {alt for alt, _ in shown["widths"]} >= {"Pleural Effusion", "Cardiomegaly"}
    assert shown["pwned"] is None
    assert "/inbox/<b>study</b>-0.dcm" in shown["headings"]
    tables = shown["tables"]
    assert tables["failures"] == [["/inbox/lateral.dcm", "lateral", "ViewPosition LL"]]
    assert [row[:2] for row in tables["probabilities-input-0"]] == [
        ["Pleural Effusion", "0.700"],
        ["Cardiomegaly", "0.200"],
        ["Edema", "0.050"],
    ]
    first, second = tables["neighbours-input-1"]
    assert first[0] == "1" and first[2:6] == ["d10", "s1", "0.900", "Pleural Effusion"]
    assert second[5] == "none" and second[6] == HOSTILE

    found = tmp_path / "search"
    shown = open_in_chromium(search_page(HOSTILE, _neighbours(found, 7), found, "daug search"))
    assert len(shown["widths"]) == 2 and all(w > 0 for _, w in shown["widths"])
    assert shown["pwned"] is None
    assert [row[2] for row in shown["tables"]["neighbours"]] == ["d70", "d71"]
