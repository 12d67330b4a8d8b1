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
    for path in sorted((ROOT / "flows").rglob("*.py")):
        if "@flow(" in path.read_text():
            module = path.relative_to(ROOT).as_posix()
            assert any(e.startswith(f"{module}:") for e in entrypoints), module


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_nested_settings_become_settings_objects(deployment):
    """Prefect validates a deployment's nested parameters into the flow's settings classes
    (their own checks run), so a worker gets typed objects, not dicts."""
    import dataclasses

    path, name = deployment["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
    validated = flow.validate_parameters(deployment["parameters"])
    for key, value in deployment["parameters"].items():
        if isinstance(value, dict):
            assert dataclasses.is_dataclass(validated[key]), key


def test_a_bad_number_in_a_deployment_is_refused_naming_it():
    from prefect.exceptions import ParameterTypeError

    (precompute,) = [d for d in DEPLOYMENTS if d["name"] == "precompute"]
    path, name = precompute["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
    bad = precompute["parameters"] | {"heatmaps": {"preset": "paper", "translation": {"scale": -1}}}
    with pytest.raises(ParameterTypeError, match="scale must be a finite number"):
        flow.validate_parameters(bad)
    flat = precompute["parameters"] | {"heatmaps": {"preset": "paper", "scale": 30.0}}
    with pytest.raises(ParameterTypeError, match=r"unknown keys \['scale'\]"):
        flow.validate_parameters(flat)  # never dropped silently


def test_a_deployment_names_only_what_it_changes_of_the_preset():
    import dataclasses

    from daug_core.diffusion.presets import preset

    (precompute,) = [d for d in DEPLOYMENTS if d["name"] == "precompute"]
    path, name = precompute["entrypoint"].split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{name}")
    changed = precompute["parameters"] | {
        "heatmaps": {"preset": "paper", "translation": {"scale": 30.0}}
    }
    translation = flow.validate_parameters(changed)["heatmaps"].translation
    assert translation == dataclasses.replace(preset("paper").translation, scale=30.0)
