"""A self-contained HTML page: headings, text, tables and images embedded as base64 data URIs,
so the one file opens anywhere (copied off the machine, mailed, served) without its folder.

Only the structure a report needs; every text is escaped, so a path or a markdown cell shows
as written.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flows.reports.files import write_text

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { border-bottom: 2px solid #444; }
h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
caption { text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #eee; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.missing { color: #a00; }
"""


def format_cell(value: object, digits: int = 3) -> str:
    """A table cell: numbers with ``digits`` decimals, None and NaN as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def data_uri(path: Path) -> str:
    """The file at ``path`` as a ``data:`` URI (its type from the suffix)."""
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class Page:
    """An HTML page built part by part; :meth:`render` gives the whole document."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def preformatted(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        caption: str | None = None,
        name: str | None = None,
        digits: int = 3,
    ) -> None:
        """A table; numbers are right-aligned, floats with ``digits`` decimals
        (:func:`format_cell`). ``name`` becomes the table's ``data-name`` (a test or a script
        finds the table by it)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for value in row:
                number = isinstance(value, int | float) and not isinstance(value, bool)
                css = ' class="number"' if number else ""
                cells.append(f"<td{css}>{html.escape(format_cell(value, digits))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        label = f' data-name="{html.escape(name)}"' if name else ""
        title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(
            f"<table{label}>{title}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )

    def image(self, path: Path | None, caption: str) -> None:
        """The image at ``path`` embedded in the page; a missing file is said, not linked."""
        if path is None or not path.is_file():
            where = f" ({path})" if path is not None else ""
            self.parts.append(f'<p class="missing">{html.escape(caption)}: no image{where}</p>')
            return
        self.parts.append(
            f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} — {html.escape(str(path))}</figcaption></figure>"
        )

    def render(self) -> str:
        made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>",
                f"<h1>{html.escape(self.title)}</h1>",
                f"<p><small>written {made}</small></p>",
                *self.parts,
                "</body></html>",
                "",
            ]
        )

    def write(self, path: Path) -> Path:
        """The page at ``path``, atomically (a browser never opens half a report)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text(self.render(), path)
