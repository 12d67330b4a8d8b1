"""Flow run names: the kind, where the run works, an optional detail and the UTC start time."""

import re
from types import SimpleNamespace

import pytest

from flows.reports import artifacts
from flows.reports.artifacts import run_namer

STAMP = r"\d{8}-\d{6}"


def named(monkeypatch: pytest.MonkeyPatch, namer, **parameters) -> str:
    monkeypatch.setattr(artifacts, "flow_run", SimpleNamespace(parameters=parameters))
    return namer()


def test_names_the_location_parameter(monkeypatch):
    name = named(monkeypatch, run_namer("ingest", "release"), release="/data/release-2")
    assert re.fullmatch(f"ingest-release-2-{STAMP}", name)


def test_missing_location_names_the_parameter(monkeypatch):
    assert re.fullmatch(f"ablate-store-{STAMP}", named(monkeypatch, run_namer("ablate", "store")))


def test_parent_and_detail(monkeypatch):
    namer = run_namer("evaluate", "checkpoint", parent=True, detail=lambda p: p["mode"])
    name = named(monkeypatch, namer, checkpoint="s3://bucket/runs/run-7/best.pt", mode="append")
    assert re.fullmatch(f"evaluate-run-7-append-{STAMP}", name)
