"""benchmarks/gpu_check.sh, the script a lent GPU machine runs, passes its CPU dry run: every
step runs (tiny preset) and the results file says it was a dry run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_passes_its_cpu_dry_run(tmp_path):
    run = subprocess.run(
        ["bash", str(SCRIPT)],
        env=os.environ | {"OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["dry_run"] and record["preset"] == "tiny"
    steps = [row["step"] for row in record["rows"]]
    assert len(steps) == 8 and all(row["ok"] for row in record["rows"]), record["rows"]
    assert "student heatmaps" in " ".join(steps)
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: CPU")
