"""What ``daug explain`` and ``daug search`` show a person: heatmap overlays as PNGs and one
self-contained ``index.html`` per batch (the inputs, their overlays and class probabilities,
and the most similar past studies with their labels and report text).

The HTML is built on :class:`flows.reports.html.Page`: every image is embedded as a data URI
and every text is escaped, so a report that contains ``<script>`` shows as written.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from flows.reports.html import Page, data_uri, format_cell
from storage.store.tables import replace_atomically

# The colour scale of every heatmap the project draws (flows/reports/precompute.py, quality.py).
COLORMAP = "jet"
# Opacity of the hottest pixel; a pixel's opacity is proportional to its heat, so cold pixels
# show the X-ray and even the hottest keep some anatomy visible.
MAX_ALPHA = 0.7
INDEX_NAME = "index.html"
_STYLE = """<style>
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
.gallery figure { margin: 0; width: 256px; }
.gallery img { width: 256px; height: auto; }
.bar { background: #c0392b; height: 0.8em; }
.bar-cell { width: 200px; }
td.report { white-space: pre-wrap; max-width: 40em; font-size: 0.85em; }
td.thumb img { width: 96px; height: auto; }
</style>"""


THUMBNAIL_SIZE = 128  # side of the neighbours' images on the pages


def render_overlay(image: np.ndarray, heat: np.ndarray, size: int = 512) -> np.ndarray:
    """The ``(S, S)`` image in [0, 1] with the ``(S, S)`` heatmap in [0, 1] blended over it in
    :data:`COLORMAP`, both upsampled (bilinear) to ``(size, size, 3)`` uint8. A pixel's opacity
    is ``MAX_ALPHA * heat``: where the heat is 0 the pixel is the grey image (R = G = B)."""
    if image.ndim != 2 or image.shape != heat.shape:
        raise ValueError(
            f"the image and the heatmap must be the same (S, S) shape, "
            f"got {image.shape} and {heat.shape}"
        )
    if not (np.isfinite(image).all() and np.isfinite(heat).all()):
        raise ValueError("the image or the heatmap holds NaN or infinite values")
    grey = _upsample(image, size)
    hot = _upsample(heat, size)
    colour = matplotlib.colormaps[COLORMAP](hot)[..., :3]
    alpha = (MAX_ALPHA * hot)[..., None]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colour
    return np.round(blended * 255.0).astype(np.uint8)


def _upsample(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` clipped to [0, 1] and resized bilinearly to ``(size, size)``."""
    plane = Image.fromarray(np.clip(array, 0.0, 1.0).astype(np.float32), mode="F")
    resized = plane.resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)


def write_png(rgb: np.ndarray, path: Path) -> Path:
    """The ``(H, W, 3)`` uint8 image as a PNG at ``path`` (atomically)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: a PNG needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    picture = Image.fromarray(rgb, mode="RGB")
    return replace_atomically(path, lambda tmp: picture.save(tmp, format="PNG"))


def write_hit_images(
    hits: Sequence[dict[str, Any]], pixels: np.ndarray, folder: Path, prefix: str
) -> None:
    """Each hit's image (its store pixels: ``pixels`` is (N, S, S) in [0, 1], a row per hit)
    as a small PNG in ``folder``, ``<prefix>-<rank>.png``; the hit records the file's name
    under ``"image"``."""
    for rank, (hit, image) in enumerate(zip(hits, pixels, strict=True), start=1):
        thumb = render_overlay(image, np.zeros_like(image), THUMBNAIL_SIZE)
        hit["image"] = write_png(thumb, folder / f"{prefix}-{rank}.png").name


def explain_page(
    results: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, str]],
    out_dir: Path,
    title: str,
) -> Path:
    """``out_dir/index.html``: the failures first (if any, with their ``detail`` where given),
    then per input its image, its overlays, its class probabilities (highest first) and its
    neighbours. A result's image paths (its own, its overlays', its neighbours') are relative
    to its folder ``out_dir/<id>``, as in its explain.json."""
    page = Page(title)
    page.parts.append(_STYLE)
    if failures:
        page.heading("Not explained")
        detail = any("detail" in f for f in failures)
        page.table(
            ("input", "reason", "detail") if detail else ("input", "reason"),
            (
                (f["input"], f["reason"], f.get("detail", ""))
                if detail
                else (f["input"], f["reason"])
                for f in failures
            ),
            name="failures",
        )
    page.paragraph(f"{len(results)} explained, {len(failures)} not explained.")
    for result in results:
        ident = str(result["id"])
        folder = _local(out_dir, out_dir, ident)
        page.heading(str(result["input"]), anchor=ident)
        figures = [_figure(out_dir, folder, result["image"], "input, as the model sees it")]
        figures += [
            _figure(out_dir, folder, path, target) for target, path in result["overlays"].items()
        ]
        page.parts.append(f'<div class="gallery">{"".join(figures)}</div>')
        page.parts.append(_probabilities(result["probabilities"], f"probabilities-{ident}"))
        page.heading("Most similar studies", level=3)
        page.parts.append(_neighbours(out_dir, folder, result["neighbours"], f"neighbours-{ident}"))
    return page.write(out_dir / INDEX_NAME)


def search_page(
    query: str, neighbours: Sequence[Mapping[str, Any]], out_dir: Path, title: str
) -> Path:
    """``out_dir/index.html``: the query text and the studies it retrieved (their image paths
    relative to ``out_dir``)."""
    page = Page(title)
    page.parts.append(_STYLE)
    page.heading("Query")
    page.preformatted(query)
    page.heading("Most similar studies")
    page.parts.append(_neighbours(out_dir, out_dir, neighbours, "neighbours"))
    return page.write(out_dir / INDEX_NAME)


def _local(out_dir: Path, base: Path, relative: str) -> Path:
    """``base / relative``, which must lie inside ``out_dir`` (the page embeds what it reads:
    a path that leaves the output folder is refused)."""
    root = out_dir.resolve()
    path = (base.resolve() / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative}: an image of the page must lie inside {out_dir}")
    return path


def _figure(out_dir: Path, base: Path, relative: str, caption: str) -> str:
    path = _local(out_dir, base, relative)
    if not path.is_file():
        where = html.escape(str(relative))
        return f'<p class="missing">{html.escape(caption)}: no image ({where})</p>'
    return (
        f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _probabilities(probabilities: Mapping[str, float], name: str) -> str:
    """Class probabilities, highest first, each with a bar of its length."""
    rows = []
    for label, p in sorted(probabilities.items(), key=lambda item: -item[1]):
        width = f"{100.0 * min(max(p, 0.0), 1.0):.1f}%"
        rows.append(
            f"<tr><td>{html.escape(label)}</td>"
            f'<td class="number">{html.escape(format_cell(float(p)))}</td>'
            f'<td class="bar-cell"><div class="bar" style="width: {width}"></div></td></tr>'
        )
    return (
        f'<table data-name="{html.escape(name)}"><caption>class probabilities</caption>'
        "<thead><tr><th>class</th><th>probability</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _neighbours(
    out_dir: Path, base: Path, neighbours: Sequence[Mapping[str, Any]], name: str
) -> str:
    """Rank, image (where given), ids, similarity, positive labels and report text."""
    if not neighbours:
        return "<p>no neighbours</p>"
    rows = []
    for rank, n in enumerate(neighbours, start=1):
        thumb = ""
        if n.get("image") is not None:
            thumb = _figure(out_dir, base, n["image"], f"neighbour {rank}: {n['dicom_id']}")
        cells = [
            f'<td class="number">{rank}</td>',
            f'<td class="thumb">{thumb}</td>',
            f"<td>{html.escape(str(n['dicom_id']))}</td>",
            f"<td>{html.escape(str(n['study_id']))}</td>",
            f'<td class="number">{html.escape(format_cell(float(n["similarity"])))}</td>',
            f"<td>{html.escape(', '.join(n['labels']) or 'none')}</td>",
            f'<td class="report">{html.escape(str(n["report"]))}</td>',
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(
        f"<th>{c}</th>"
        for c in ("rank", "image", "dicom_id", "study_id", "similarity", "labels", "report")
    )
    return (
        f'<table data-name="{html.escape(name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
