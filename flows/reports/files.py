"""Report files written atomically (a reader sees the old file or the new one, never a part)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from storage.tables import replace_atomically


def save_figure(figure: Figure, path: Path, dpi: int = 90) -> Path:
    """``figure`` as a PNG at ``path`` (atomically); the figure is closed."""
    try:
        replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(figure)
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    """``data`` as indented JSON: numpy numbers as numbers, other unknown values as strings."""
    return write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_text(text: str, path: Path) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
