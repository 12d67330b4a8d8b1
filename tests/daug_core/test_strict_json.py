"""strict_json: undefined numbers are null, so every JSON reader can parse what we write."""

import json
import math

import numpy as np
import pytest

from daug_core import strict_json


def refuse(word: str) -> None:
    raise ValueError(f"{word} is not JSON")


def test_non_finite_numbers_at_any_depth_become_null():
    value = {
        "auc": np.float64("nan"),
        "loss": [1.5, float("inf"), (np.float32(-np.inf), 2)],
        "n": np.int64(3),
        "name": "x",
        "nested": {"ok": 0.25, "bad": float("nan")},
    }
    text = strict_json.dumps(value, sort_keys=True)
    assert json.loads(text, parse_constant=refuse) == {
        "auc": None,
        "loss": [1.5, None, [None, 2]],
        "n": 3,
        "name": "x",
        "nested": {"bad": None, "ok": 0.25},
    }
    assert isinstance(json.loads(text)["n"], int)


def test_null_reads_back_as_nan_and_numbers_as_floats():
    assert math.isnan(strict_json.float_or_nan(None))
    assert strict_json.float_or_nan(2) == 2.0 and strict_json.float_or_nan("0.5") == 0.5


def test_values_json_cannot_hold_are_still_errors():
    with pytest.raises(TypeError, match="not JSON serializable"):
        strict_json.dumps({"when": object()})
