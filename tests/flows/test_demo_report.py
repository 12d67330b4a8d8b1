"""The demo's HTML report: one self-contained page whose images render in a browser and whose
tables hold the run's numbers; and the quiet terminal (third-party notices filtered)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from daug_core.evaluation.study_statistics import HEADLINE
from flows.ablate import summarise
from flows.reports.ablation import METRIC_LABELS, plot_ablation
from flows.reports.demo import DemoReport, write_report
from flows.reports.evaluation import PLOTS
from flows.reports.files import save_figure
from flows.reports.quality import plot_sweep
from tests.factories import CHROMIUM, open_in_chromium


def _png(path: Path, seed: int) -> Path:
    """A small real PNG, as the flows' plots are (matplotlib through the atomic writer)."""
    figure, ax = plt.subplots(figsize=(2, 1.5))
    ax.imshow(np.random.default_rng(seed).random((8, 8)), cmap="jet")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(figure, path)


def _quality_row(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "n_lesion": int(rng.integers(5, 30)),
        "n_healthy": int(rng.integers(5, 15)),
        "pointing_game": float(rng.random()),
        "pixel_auroc": float(rng.random()),
        "mass_inside": float(rng.random()),
        "off_target_share": float(rng.random()),
        "healthy_energy": float(rng.random()),
    }


def _ablation(tmp: Path, rng: np.random.Generator) -> dict[str, Any]:
    """ablate_flow's result for a grid of two variants over two seeds, and its chart."""
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, "w": 0.7, **{m: float(rng.random()) for m in HEADLINE}}
            for v in ("baseline", "daug+hybrid")
            for s in (0, 1)
        ]
    )
    summary = summarise(runs)
    plot_ablation(summary, tmp / "ablation" / "ablation.png")
    flat = summary.copy()
    flat.columns = [f"{c[0]}_{c[1]}" if c[1] else c[0] for c in flat.columns]
    return {"markdown": "", "summary": flat.reset_index().to_dict("records")}


@pytest.fixture
def report(tmp_path: Path) -> DemoReport:
    rng = np.random.default_rng(3)
    sweep = pd.DataFrame(
        [
            {
                "target": "+No Finding",
                "mode": mode,
                "scale": 10.0,
                "steps": steps,
                "level": level,
                "seconds_per_image": 0.1 * steps,
                "pointing_game": float(rng.random()),
                "pixel_auroc": float(rng.random()),
            }
            for mode in ("softmax", "sigmoid")
            for steps in (5, 10)
            for level in (150, 300)
        ]
    )
    quality_dir = tmp_path / "quality"
    quality_dir.mkdir()
    sweep_plot = plot_sweep(sweep, quality_dir / "sweep.png")
    targets = ("+No Finding", "-Pleural")
    cases = {t: str(_png(quality_dir / f"cases-{i}.png", i)) for i, t in enumerate(targets)}
    best = tmp_path / "ablation" / "daug+hybrid" / "seed-0"
    for i, name in enumerate(PLOTS):
        _png(best / name, 10 + i)
    return DemoReport(
        out=tmp_path,
        seconds=321.5,
        stages=(("1. synthetic release", 12.3), ("4. heatmaps", 98.7)),
        training={
            "runs": [
                {
                    "name": "generator",
                    "steps_before": 0,
                    "steps_after": 40,
                    "final_loss": 0.1234,
                    "sha256": "ab" * 32,
                },
                {
                    "name": "classifier",
                    "steps_before": 60,
                    "steps_after": 60,
                    "final_loss": 0.5678,
                    "sha256": "cd" * 32,
                },
            ],
            "classifier_mean_auc_by_t": {0: 0.81, 500: 0.62},
            "loss_curves": str(_png(tmp_path / "checkpoints" / "loss_curves.png", 1)),
        },
        examples=_png(tmp_path / "store" / "examples.png", 2),
        quality={
            "scored": {"version": "v1", "targets": {"+No Finding": _quality_row(rng)}},
            "modes": {
                mode: {"targets": {t: _quality_row(rng) for t in targets}}
                for mode in ("softmax", "sigmoid")
            },
            "paths": {"sweep_plot": str(sweep_plot), "cases": cases},
        },
        evaluation={"headline": {m: float(rng.random()) for m in (*HEADLINE, "i2r_recall5")}},
        evaluation_dir=best,
        ablation=_ablation(tmp_path, rng),
        ablation_dir=tmp_path / "ablation",
        seeds=(0, 1),
    )


def _close(cell: str, value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "n/a"
    if isinstance(value, int | float):
        return abs(float(cell) - float(value)) <= 5e-4
    return cell == str(value)


def test_the_page_is_self_contained(report, tmp_path):
    page = write_report(report, tmp_path / "report.html")
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]*)"', text)
    # loss curves, examples, sweep, 2 case grids, ablation chart, 3 evaluation plots
    assert len(sources) == 9
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert 'class="missing"' not in text
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing outside the file
    assert not list(tmp_path.glob(".*report*"))  # the atomic writer left no temporary file


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_the_report_renders_in_a_browser_with_the_run_numbers(report, tmp_path):
    shown = open_in_chromium(write_report(report, tmp_path / "report.html"))
    widths, tables = shown["widths"], shown["tables"]
    assert len(widths) == 9
    assert all(width > 0 for _, width in widths), widths

    assert tables["stages"] == [
        ["1. synthetic release", "12.3"],
        ["4. heatmaps", "98.7"],
        ["total", "321.5"],
    ]
    runs = report.training["runs"]
    for row, run in zip(tables["training"], runs, strict=True):
        assert row[0] == run["name"] and row[4] == run["sha256"][:16]
        values = (run["steps_before"], run["steps_after"], run["final_loss"])
        assert all(_close(c, v) for c, v in zip(row[1:4], values, strict=True)), row

    quality = report.quality
    sources = [("v1", quality["scored"]["targets"])] + [
        (mode, s["targets"]) for mode, s in quality["modes"].items()
    ]
    assert [row[0] for row in tables["quality"]] == ["v1", "softmax", "sigmoid"]
    columns = ("n_lesion", "n_healthy", "pointing_game", "pixel_auroc", "mass_inside")
    for row, (_, targets) in zip(tables["quality"], sources, strict=True):
        expected = targets["+No Finding"]
        assert all(_close(c, expected[m]) for c, m in zip(row[1:6], columns, strict=False)), row
    assert len(tables["modes"]) == 4
    for row in tables["modes"]:
        expected = quality["modes"][row[1]]["targets"][row[0]]
        metrics = ("n_lesion", "pointing_game", "pixel_auroc", "off_target_share")
        assert all(_close(c, expected[m]) for c, m in zip(row[2:], metrics, strict=True)), row

    summary = {r["variant"]: r for r in report.ablation["summary"]}
    assert [row[0] for row in tables["ablation"]] == ["baseline", "daug+hybrid"]
    for row in tables["ablation"]:
        expected = summary[row[0]]
        values = [expected["runs"]] + [
            expected[f"{s}_{m}"] for m in HEADLINE for s in ("mean", "std")
        ]
        assert all(_close(c, v) for c, v in zip(row[1:], values, strict=True)), row

    labels = {METRIC_LABELS.get(m, m): m for m in report.evaluation["headline"]}
    assert [row[0] for row in tables["evaluation"]] == list(labels)
    headline = report.evaluation["headline"]
    assert all(_close(row[1], headline[labels[row[0]]]) for row in tables["evaluation"])


def test_a_resumed_model_reports_its_last_recorded_loss_not_nan():
    from flows.reports.demo import training_lines

    run = {"name": "classifier", "steps_before": 60, "steps_after": 60, "sha256": "ab" * 32}
    lines = training_lines(
        {"runs": [{**run, "final_loss": 0.25}], "classifier_mean_auc_by_t": {0: 0.8}}
    )
    assert "resumed at step 60" in lines and "last recorded loss 0.2500" in lines
    assert "nan" not in lines
    unknown = training_lines(
        {"runs": [{**run, "final_loss": float("nan")}], "classifier_mean_auc_by_t": {}}
    )
    assert "nan" not in unknown and "none recorded" in unknown


# ---- the quiet terminal ----------------------------------------------------------------------
OPEN_CLIP = "/venv/lib/python3.11/site-packages/open_clip/factory.py"


def _record(name: str, level: int, message: str, pathname: str = "/work/flows/x.py") -> Any:
    return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_the_notice_filter_drops_the_named_notices_and_keeps_the_rest():
    from flows.runtime.notices import QuietNotices

    quiet = QuietNotices()
    dropped = [
        _record("root", logging.INFO, "Parsing tokenizer identifier. Schema: None", OPEN_CLIP),
        _record("root", logging.INFO, "Attempting to load config from built-in: x", OPEN_CLIP),
        _record("root", logging.WARNING, "No pretrained weights loaded for model 'x'.", OPEN_CLIP),
        _record(
            "diffusers.models.modeling_utils",
            logging.INFO,
            "Instantiating UNet2DModel model under default dtype torch.float32.",
        ),
        _record(
            "diffusers.models.modeling_utils",
            logging.WARNING,
            "There are modules in UNet2DModel that should be kept in float32: []. Casting ...",
        ),
        _record(
            "ray._private.authentication.authentication_token_setup",
            logging.WARNING,
            "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=...",
        ),
        _record("ray._private.worker", logging.INFO, "Started a local Ray instance."),
    ]
    kept = [
        _record("root", logging.WARNING, "Model x initialized partially.", OPEN_CLIP),
        _record("root", logging.ERROR, "Parsing tokenizer identifier failed", OPEN_CLIP),
        _record("root", logging.INFO, "Parsing tokenizer identifier, ours"),  # not open_clip's
        _record("diffusers.models.modeling_utils", logging.WARNING, "Instantiating failed"),
        _record(
            "diffusers.models.modeling_utils",
            logging.WARNING,
            "There are modules in UNet2DModel that should be kept in float32: ['norm']. ...",
        ),
        _record("daug.stage", logging.INFO, "1. synthesise a MIMIC-CXR release"),
        _record("prefect.flow_runs", logging.INFO, "heatmaps: 10 computed"),
    ]
    assert not [r.getMessage() for r in dropped if quiet.filter(r)]
    assert all(quiet.filter(r) for r in kept)


@pytest.fixture
def notice_loggers():
    """The loggers quiet_notices filters, restored afterwards."""
    from flows.runtime.notices import NOTICES

    loggers = [logging.getLogger(None if n.logger == "root" else n.logger) for n in NOTICES]
    saved = [list(logger.filters) for logger in loggers]
    yield
    for logger, filters in zip(loggers, saved, strict=True):
        logger.filters[:] = filters


def test_open_clip_and_matplotlib_are_quiet_unless_verbose(
    notice_loggers, monkeypatch, caplog, tmp_path
):
    import open_clip

    from flows.runtime.notices import VERBOSE_ENV, quiet_notices

    sweep = pd.DataFrame(
        {
            "target": "+No Finding",
            "mode": "softmax",
            "scale": 10.0,
            "steps": [5, 10],
            "level": 300,
            "seconds_per_image": [0.5, 1.0],
            "pointing_game": 0.5,
            "pixel_auroc": 0.5,
        }
    )
    monkeypatch.setenv(VERBOSE_ENV, "1")  # daug -v: everything
    quiet_notices()
    with caplog.at_level(logging.INFO):
        open_clip.get_tokenizer("ViT-B-32")
    assert any("Parsing tokenizer identifier" in r.getMessage() for r in caplog.records)

    caplog.clear()
    monkeypatch.delenv(VERBOSE_ENV)
    quiet_notices()
    with caplog.at_level(logging.INFO):
        open_clip.get_tokenizer("ViT-B-32")
        plot_sweep(sweep, tmp_path / "sweep.png")  # numeric-looking bar labels: no notice
        logging.getLogger("daug.test").info("kept")
    assert [r.getMessage() for r in caplog.records] == ["kept"]


def test_the_terminal_drops_prefect_run_chatter_and_run_log_only_records():
    from flows.cli.console import QuietRuns
    from flows.runtime.notices import RUN_LOG_ONLY

    quiet = QuietRuns()
    stage = _record("prefect.flow_runs", logging.INFO, "1. synthesise a MIMIC-CXR release")
    stage.__dict__.update(RUN_LOG_ONLY)  # as `logger.info(text, extra=RUN_LOG_ONLY)` makes it
    dropped = [
        stage,
        _record("prefect.flow_runs", logging.INFO, "Beginning subflow run 'x' for flow 'ingest'"),
        _record("prefect.task_runs", logging.INFO, "Finished in state Completed()"),
        _record("prefect", logging.INFO, "Starting temporary server on http://127.0.0.1:1"),
    ]
    kept = [
        _record("prefect.flow_runs", logging.ERROR, "Finished in state Failed('boom')"),
        _record("prefect.flow_runs", logging.INFO, "heatmaps: 318 computed, 0 failed"),
        _record("flows.ingest", logging.INFO, "Beginning subflow run: not Prefect's"),
    ]
    assert not [r.getMessage() for r in dropped if quiet.filter(r)]
    assert all(quiet.filter(r) for r in kept)


def test_quiet_loggers_pass_warnings_only_inside_the_block_unless_verbose(monkeypatch, caplog):
    from flows.runtime.notices import VERBOSE_ENV, quiet_loggers

    name = "flows.runtime.contrastive"
    before = logging.getLogger(name).level
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with caplog.at_level(logging.INFO):
        with quiet_loggers((name,)):
            logging.getLogger(name).info("epoch 1")
            logging.getLogger(name).warning("a warning")
        logging.getLogger(name).info("epoch 2")
        monkeypatch.setenv(VERBOSE_ENV, "1")
        with quiet_loggers((name,)):
            logging.getLogger(name).info("epoch 3")
    assert [r.getMessage() for r in caplog.records] == ["a warning", "epoch 2", "epoch 3"]
    assert logging.getLogger(name).level == before


def test_the_ablation_table_shows_std_only_over_several_seeds():
    from flows.reports.ablation import results_markdown

    rng = np.random.default_rng(4)
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, **{m: float(rng.random()) for m in HEADLINE}}
            for v in ("baseline", "daug")
            for s in (0, 1)
        ]
    )
    two = results_markdown(summarise(runs), [0, 1])
    one = results_markdown(summarise(runs[runs["seed"] == 0]), [0])
    assert two.startswith("Mean ± std over seeds [0, 1]") and two.count("±") > 2 * len(HEADLINE)
    assert one.startswith("One seed (0)") and "±" not in one and "n/a" not in one
    baseline = runs[(runs["variant"] == "baseline") & (runs["seed"] == 0)].iloc[0]
    assert f"| baseline | {baseline[HEADLINE[0]]:.3f} |" in one
