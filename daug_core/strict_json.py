"""JSON that every reader can parse: no bare ``NaN`` or ``Infinity``.

Python's :mod:`json` writes NaN and infinities as the bare words ``NaN`` / ``Infinity``, which
are not JSON (RFC 8259): ``jq``, browsers and most other languages refuse the whole file. An
undefined number (an AUC of a class without positives, a loss that diverged) is written as
``null`` instead; readers that want floats turn ``null`` back into NaN (:func:`float_or_nan`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def strict(value: Any) -> Any:
    """``value`` with every non-finite float (Python or numpy, at any depth of dicts, lists and
    tuples) replaced by ``None`` and numpy scalars made Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`strict` ``(value)``; anything still not JSON is an error."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def float_or_nan(value: Any) -> float:
    """A number read back from strict JSON: ``None`` (an undefined number) is NaN."""
    return math.nan if value is None else float(value)
