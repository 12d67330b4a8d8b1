"""docs/real-release.md's commands, run as written on a small synthetic release (only the
variables at the top of the block are set to it): ingest to status, each exit 0, results as
JSON on stdout, no traceback and no library notice on the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import run_daug

pytestmark = pytest.mark.slow

DOC = Path(__file__).parents[2] / "docs" / "real-release.md"


def doc_commands() -> str:
    """The doc's bash block after "## The commands"."""
    text = DOC.read_text()
    block = re.search(r"## The commands\n.*?```bash\n(.*?)```", text, re.S)
    assert block, f"{DOC} has no bash block under '## The commands'"
    return block.group(1)


def test_the_documented_path_runs_on_a_small_release(tmp_path, prefect_server):
    synth = run_daug("synth", str(tmp_path / "synth"), "--studies", "24", "--size", "64")
    assert synth.returncode == 0, synth.stderr[-2000:]
    values = {
        "RELEASE": tmp_path / "synth" / "release",
        "WORK": tmp_path / "work",
        "PRESET": "tiny",
        "SIZE": "64",
        "STEPS": "4",
        "EPOCHS": "2",
    }
    script = doc_commands()
    for name, value in values.items():
        script, found = re.subn(rf"^{name}=.*$", f"{name}='{value}'", script, flags=re.M)
        assert found == 1, f"the block sets {name} once"
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env |= {"COLUMNS": "200", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    from prefect.settings import get_current_settings

    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Traceback" not in run.stderr
    assert "No pretrained weights" not in run.stderr  # open_clip's notice, dropped

    work = values["WORK"]
    ingest = json.loads((work / "ingest.json").read_text())
    assert ingest["ingested"] > 0
    train = json.loads((work / "clip" / "train.json").read_text())
    assert train["epochs_run"] == 2
    assert set(train["excluded"]["train"]) >= {"no_labels", "no_report"}
    metrics = json.loads((work / "clip" / "metrics.json").read_text())
    assert metrics["test_items"] > 0 and "auc_macro" in metrics["headline"]
    assert str(work / "store") in run.stdout  # status: the store it describes
