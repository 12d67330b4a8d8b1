"""The three converters (``daug convert-generator``, ``convert-classifier``, ``convert-clip``)
on a damaged weights file: one ``error:`` line naming the file and the fault, exit code 2, no
traceback (a 0-byte .pt printed only ``Aborted.``, a truncated .safetensors or a wrongly shaped
tensor a 100-line traceback, NaN weights converted with exit 0), and nothing written."""

from __future__ import annotations

import re

import pytest

from tests.daug_core.checkpoints.test_foreign_weights import (
    CLASSIFIER_OPTIONS,
    FAULTS,
    GENERATOR_OPTIONS,
    TENSOR,
    faulty_source,
    weights_file,
)
from tests.factories import run_daug


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("generator", "empty"),
        ("generator", "truncated"),
        ("generator", "shape"),
        ("generator", "nan"),
        ("classifier", "truncated"),
        ("clip", "nan"),
    ],
)
def test_a_damaged_weights_file_is_one_error_line_naming_it_and_the_fault(tmp_path, kind, fault):
    source = faulty_source(kind, fault, tmp_path)
    out = tmp_path / "out"
    if kind == "clip":
        done = run_daug("convert-clip", str(source), str(out / "clip.safetensors"))
    else:
        options = GENERATOR_OPTIONS if kind == "generator" else CLASSIFIER_OPTIONS
        done = run_daug(f"convert-{kind}", str(source), str(out), *options)
    text = done.stdout + done.stderr
    assert done.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "Aborted" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    assert str(weights_file(kind, source)) in errors[0]
    assert re.search(FAULTS[fault].format(tensor=re.escape(TENSOR[kind])), errors[0]), errors[0]
    assert not out.exists()
