"""deployment.yaml: every entrypoint names a Prefect flow and its parameters are the flow's.

`prefect deploy` only warns on a wrong entrypoint and ignores unknown keys, so this is the
cheap check; running the deployments on a real server belongs to the operations tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "deployment.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_is_a_flow_that_accepts_the_parameters(deployment):
    path, name = deployment["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")  # what a worker does
    assert isinstance(flow, Flow)
    validated = flow.validate_parameters(deployment["parameters"])
    assert set(deployment["parameters"]) <= set(validated)
    assert deployment["work_pool"]["name"] == "daug-process"


def test_every_flow_has_a_deployment():
    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS}
    for path in sorted((ROOT / "flows").glob("*.py")):
        if "@flow(" in path.read_text():
            assert any(e.startswith(f"flows/{path.name}:") for e in entrypoints), path.name
