"""The demo's results as text (compact tables that fit an 80-column terminal, and markdown) and
as one self-contained HTML page (:func:`write_report`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daug_core.evaluation.study_statistics import HEADLINE
from flows.reports.ablation import METRIC_LABELS
from flows.reports.evaluation import PLOTS
from flows.reports.html import Page


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def training_lines(trained: dict[str, Any]) -> str:
    """One line per trained model, then the classifier's AUC by noise level."""
    lines = [f"{run['name']:>10}: {_run_line(run)}" for run in trained["runs"]]
    auc = ", ".join(f"t={t}: {a:.3f}" for t, a in trained["classifier_mean_auc_by_t"].items())
    return "\n".join([*lines, f"classifier mean AUC on validate by noise level: {auc}"])


def _run_line(run: dict[str, Any]) -> str:
    """A model's steps and loss: a model resumed with nothing left to train says so and gives
    its checkpoint's last recorded loss."""
    loss = "none recorded" if math.isnan(run["final_loss"]) else f"{run['final_loss']:.4f}"
    if run["steps_after"] == run["steps_before"]:
        steps = f"resumed at step {run['steps_after']} (nothing left to train)"
        loss = f"last recorded loss {loss}"
    else:
        steps = f"steps {run['steps_before']} -> {run['steps_after']}"
        loss = f"last loss {loss}"
    return f"{steps}, {loss}, sha256 {run['sha256'][:16]}"


def quality_headline(quality: dict[str, Any]) -> str:
    """``+No Finding`` per heatmap source (the scored version, then each guidance mode)."""
    rows = []
    scored = quality.get("scored") or {}
    if scored:
        rows.append((scored["version"], scored["targets"].get("+No Finding")))
    for mode, source in (quality.get("modes") or {}).items():
        rows.append((mode, source["targets"].get("+No Finding")))
    rows = [(name, row) for name, row in rows if row]
    if not rows:
        return "heatmap quality: no +No Finding heatmaps scored"
    first = rows[0][1]
    lines = [
        f"heatmap quality, +No Finding, held-out images ({first['n_lesion']} with lesions, "
        f"{first['n_healthy']} healthy):",
        f"{'source':<10}{'pointing game':>15}{'pixel AUROC':>13}{'heat inside':>13}"
        f"{'healthy heat':>14}",
    ]
    for name, row in rows:
        lines.append(
            f"{name[:10]:<10}{_fmt(row['pointing_game']):>15}{_fmt(row['pixel_auroc']):>13}"
            f"{_fmt(row['mass_inside']):>13}{_fmt(row['healthy_energy']):>14}"
        )
    return "\n".join(lines)


def modes_table(quality: dict[str, Any]) -> str:
    """Softmax vs sigmoid per target, in columns that fit a terminal."""
    modes = quality.get("modes") or {}
    if set(modes) != {"softmax", "sigmoid"}:
        return ""
    soft, sig = modes["softmax"]["targets"], modes["sigmoid"]["targets"]
    lines = [
        "softmax / sigmoid guidance (lesion images; off-target: heat on other lesions)",
        f"{'target':<26}{'n':>4}{'pointing game':>15}{'pixel AUROC':>13}{'off-target':>13}",
    ]
    for target, a in soft.items():
        b = sig.get(target, {})
        cells = [
            f"{_fmt(a[m])}/{_fmt(b.get(m))}"
            for m in ("pointing_game", "pixel_auroc", "off_target_share")
        ]
        widths = (15, 13, 13)
        lines.append(
            f"{target:<26}{a['n_lesion']:>4}"
            + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def results_markdown(result: dict[str, Any]) -> str:
    """The demo's closing summary as markdown (the artifact of the demo flow)."""
    paths = "\n".join(f"- {name}: `{path}`" for name, path in result["paths"].items())
    return (
        f"## daug demo ({result['seconds']:.0f} s)\n\n{paths}\n\n"
        f"```\n{result['quality_headline']}\n\n{result['modes_table']}\n```\n\n"
        f"{result['ablation_markdown']}\n"
    )


@dataclass(frozen=True)
class DemoReport:
    """What the demo's page shows, as the flows returned it."""

    out: Path
    seconds: float
    stages: tuple[tuple[str, float], ...]  # (stage, seconds) in the order they ran
    training: dict[str, Any]  # train_generator_flow's result
    examples: Path | None  # precompute's overlay grid
    quality: dict[str, Any]  # heatmap_quality_flow's result
    evaluation: dict[str, Any]  # evaluate_flow's result (metrics.json)
    evaluation_dir: Path  # where its plots are
    ablation: dict[str, Any]  # ablate_flow's result
    ablation_dir: Path
    seeds: tuple[int, ...]


QUALITY_COLUMNS = ("pointing_game", "pixel_auroc", "mass_inside", "healthy_energy")
MODE_COLUMNS = ("pointing_game", "pixel_auroc", "off_target_share")


def quality_rows(quality: dict[str, Any], target: str = "+No Finding") -> list[list[object]]:
    """``target``'s headline per heatmap source: the scored version, then each guidance mode
    (source, lesion images, healthy images, then :data:`QUALITY_COLUMNS`)."""
    sources = []
    if quality.get("scored"):
        sources.append((quality["scored"]["version"], quality["scored"]["targets"]))
    sources += [(mode, s["targets"]) for mode, s in (quality.get("modes") or {}).items()]
    return [
        [name, row["n_lesion"], row["n_healthy"], *(row[m] for m in QUALITY_COLUMNS)]
        for name, targets in sources
        if (row := targets.get(target))
    ]


def mode_rows(quality: dict[str, Any]) -> list[list[object]]:
    """Per target and guidance mode: lesion images and :data:`MODE_COLUMNS`."""
    modes = quality.get("modes") or {}
    targets = dict.fromkeys(t for source in modes.values() for t in source["targets"])
    return [
        [target, mode, row["n_lesion"], *(row[m] for m in MODE_COLUMNS)]
        for target in targets
        for mode, source in modes.items()
        if (row := source["targets"].get(target))
    ]


def ablation_rows(ablation: dict[str, Any]) -> list[list[object]]:
    """Per variant: runs, then mean and std of each headline metric."""
    return [
        [
            row["variant"],
            row["runs"],
            *(value for m in HEADLINE for value in (row[f"mean_{m}"], row[f"std_{m}"])),
        ]
        for row in ablation["summary"]
    ]


def _local(url: str | None) -> Path | None:
    """A run's file on this machine (outputs on object storage are not embedded)."""
    return Path(url) if url and "://" not in url else None


def report_page(report: DemoReport) -> Page:
    page = Page("daug demo")
    page.paragraph(
        f"The whole pipeline on a synthetic MIMIC-CXR release, in {report.seconds:.0f} s; "
        f"every file is under {report.out.resolve()}."
    )
    page.heading("Pipeline stages")
    stages = [[name, round(seconds, 1)] for name, seconds in report.stages]
    page.table(
        ["stage", "seconds"],
        [*stages, ["total", report.seconds]],
        name="stages",
        digits=1,
    )
    page.heading("Generator and classifier")
    page.table(
        ["model", "steps before", "steps after", "last loss", "sha256"],
        [
            [r["name"], r["steps_before"], r["steps_after"], r["final_loss"], r["sha256"][:16]]
            for r in report.training["runs"]
        ],
        caption="a model resumed with nothing left to train shows its checkpoint's last loss",
        name="training",
    )
    auc = report.training.get("classifier_mean_auc_by_t") or {}
    page.table(
        ["noise level t", "classifier mean AUC (validate)"],
        [[int(t), a] for t, a in auc.items()],
        name="classifier-auc",
    )
    page.image(_local(report.training.get("loss_curves")), "loss curves")

    page.heading("Heatmaps")
    page.image(report.examples, "+No Finding heatmaps over their images (precompute examples)")

    page.heading("Heatmap quality (held-out images, against the lesion masks)")
    page.table(
        ["source", "lesion images", "healthy images", "pointing game", "pixel AUROC",
         "heat inside", "healthy heat"],
        quality_rows(report.quality),
        caption="+No Finding per heatmap source",
        name="quality",
    )  # fmt: skip
    if report.quality.get("modes"):
        page.table(
            ["target", "guidance", "lesion images", "pointing game", "pixel AUROC",
             "off-target share"],
            mode_rows(report.quality),
            caption="softmax vs sigmoid guidance per target (off-target: heat on other "
            "findings' lesions, lower is better)",
            name="modes",
        )  # fmt: skip
    paths = report.quality.get("paths") or {}
    page.image(_local(paths.get("sweep_plot")), "sweep: localisation and cost")
    for target, url in (paths.get("cases") or {}).items():
        page.image(_local(url), f"cases {target}: image, heatmaps, lesion mask")

    page.heading("Ablation (tiny CLIP)")
    page.table(
        ["variant", "runs"]
        + [f"{METRIC_LABELS[m]} {stat}" for m in HEADLINE for stat in ("mean", "std")],
        ablation_rows(report.ablation),
        caption=f"test split, mean and std over seeds {list(report.seeds)}",
        name="ablation",
    )
    page.image(report.ablation_dir / "ablation.png", "ablation")

    page.heading("Evaluation of daug+hybrid, seed 0")
    page.table(
        ["metric", "value"],
        [
            [METRIC_LABELS.get(name, name), value]
            for name, value in report.evaluation["headline"].items()
        ],
        name="evaluation",
    )
    for name in PLOTS:
        page.image(report.evaluation_dir / name, name.removesuffix(".png").replace("_", " "))
    return page


def write_report(report: DemoReport, path: Path) -> Path:
    """The demo's page at ``path`` (written atomically): stages and times, training, example
    heatmaps, heatmap quality, the ablation table and the evaluation's curves, every image
    embedded."""
    return report_page(report).write(path)
