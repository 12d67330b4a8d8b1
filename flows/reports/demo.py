"""The demo's results as text: compact tables that fit an 80-column terminal, and markdown."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def training_lines(trained: dict[str, Any]) -> str:
    """One line per trained model, then the classifier's AUC by noise level."""
    lines = [
        f"{run['name']:>10}: steps {run['steps_before']} -> {run['steps_after']}, "
        f"last loss {run['final_loss']:.4f}, sha256 {run['sha256'][:16]}"
        for run in trained["runs"]
    ]
    auc = ", ".join(f"t={t}: {a:.3f}" for t, a in trained["classifier_mean_auc_by_t"].items())
    return "\n".join([*lines, f"classifier mean AUC on validate by noise level: {auc}"])


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
