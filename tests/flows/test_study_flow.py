"""`daug study` end to end on a handful of images in bf16, SIGKILLed in its ablation stage and
rerun: the heatmap answers were written before the ablation; the rerun keeps every finished
stage and run, finishes the rest, and its table's numbers are the evaluations' own (a variant's
estimate on all test images is its metrics.json headline).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from prefect.settings import get_current_settings

from daug_core.compute import ComputeSettings
from daug_core.evaluation.study_statistics import HEADLINE
from flows.runtime.pool import PoolSettings
from flows.study import study_flow
from flows.study_settings import StudySettings
from storage.store.heatmap_versions import DEFAULT_VERSION
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore

pytestmark = pytest.mark.slow

SMALL = StudySettings(
    studies=16,
    generator_steps=10,
    classifier_steps=10,
    heatmap_steps=2,
    seeds=1,
    grids=("ours",),
    heatmap_modes=("channel", "append"),
    epochs=1,
    resamples=30,
)
VARIANTS = ["baseline", "daug", "daug-append", "hybrid", "daug+hybrid", "daug+hybrid-append"]


def _cli_options(settings: StudySettings) -> list[str]:
    options = [
        f"--studies={settings.studies}",
        f"--generator-steps={settings.generator_steps}",
        f"--classifier-steps={settings.classifier_steps}",
        f"--heatmap-steps={settings.heatmap_steps}",
        f"--seeds={settings.seeds}",
        f"--epochs={settings.epochs}",
        f"--resamples={settings.resamples}",
        "--actors=1",
        "--precision=bf16",
    ]
    options += [f"--grid={g}" for g in settings.grids]
    return options + [f"--heatmap-mode={m}" for m in settings.heatmap_modes]


def test_study_killed_mid_ablation_resumes_and_reports_the_evaluations_numbers(
    tmp_path, prefect_server, ray_session
):
    import ray

    out = tmp_path / "study"
    runs = out / "ablation" / "ours"
    env = os.environ | {
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "CI": "true",
    }
    args = [sys.executable, "-m", "flows.cli", "study", str(out), *_cli_options(SMALL)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while (
        not list(runs.glob("*/seed-0/metrics.json"))
        and time.monotonic() < deadline
        and process.poll() is None
    ):
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/seed-0/metrics.json")}
    assert 0 < len(finished) < len(VARIANTS)
    assert not (out / "study.csv").exists()
    # The heatmap answers came first and are already in RESULTS.md.
    early = (out / "RESULTS.md").read_text()
    assert "softmax − unguided" in early and "models in bf16" in early
    assert "Not yet: the K = 7 heatmaps and the ablation are running." in early

    result = study_flow(
        out=str(out),
        study=SMALL,
        pool=PoolSettings(actors=1),
        compute=ComputeSettings(precision="bf16"),
    )

    # Finished runs were kept, the others trained; every stage before was already done.
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert sorted(p.parent.parent.name for p in runs.glob("*/seed-0/metrics.json")) == sorted(
        VARIANTS
    )
    table = pd.read_csv(out / "study.csv")
    assert list(dict.fromkeys(table["variant"])) == VARIANTS
    assert len(table) == len(VARIANTS) * len(HEADLINE)
    assert result["test_images"] == int(table["images"].iloc[0]) >= 2
    for row in table.itertuples():
        headline = json.loads((runs / row.variant / "seed-0" / "metrics.json").read_text())
        assert row.estimate == pytest.approx(headline["headline"][row.metric], abs=1e-9), row
        if row.variant == "baseline":
            assert math.isnan(row.p_value) and math.isnan(row.difference)
        else:
            assert 0 < row.p_value <= 1, row
            baseline = table[(table.variant == "baseline") & (table.metric == row.metric)]
            assert row.difference == pytest.approx(row.estimate - baseline.estimate.iloc[0])
        if math.isfinite(row.low):
            assert row.low <= row.estimate + 1e-9 and row.estimate <= row.high + 1e-9, row
    # The heatmap answers: each guidance mode against unguided, and softmax against sigmoid.
    pairs = {(r["first"], r["second"]) for r in result["heatmaps"]}
    assert pairs == {("softmax", "unguided"), ("sigmoid", "unguided"), ("softmax", "sigmoid")}
    markdown = (out / "RESULTS.md").read_text()
    assert "softmax − unguided" in markdown and "**ours grid**" in markdown
    assert "Not yet" not in markdown
    images = ImageStore.open(out / "store", read_only=True)
    assert HeatmapStore(images, DEFAULT_VERSION).provenance.translation.precision == "bf16"
    assert all(f"| {v} |" in markdown for v in VARIANTS)
    assert (out / "study.png").stat().st_size > 0
    assert json.loads((out / "study.json").read_text())["seconds"] > 0
