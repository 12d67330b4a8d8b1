"""The study's heatmap answers as markdown, from the quality flow's paired rows."""

from __future__ import annotations

from flows.reports.study import heatmap_markdown


def row(metric: str, first: str, second: str, **values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "target": "-Pleural",
        "first": first,
        "second": second,
        "metric": metric,
        "n": 31,
        "first_mean": 0.55,
        "second_mean": 0.33,
        "chance_mean": None,  # strict JSON: NaN became null
        "difference": 0.22,
        "low": 0.15,
        "high": 0.30,
        "p_value": 0.0005,
    }
    return base | values


def test_cells_give_both_means_the_interval_p_and_specificitys_chance_level():
    paired = [
        row("specificity", "softmax", "unguided", chance_mean=0.37),
        row("pointing_game", "softmax", "unguided", first_mean=0.91, second_mean=0.27),
        row("specificity", "softmax", "sigmoid", difference=-0.1, low=-0.2, high=0.01,
            p_value=0.08, chance_mean=0.37),
    ]  # fmt: skip
    text = heatmap_markdown(paired)
    assert (
        "| -Pleural | 0.33 → 0.55: +0.220 [0.150, 0.300] p < 0.001 (n 31, chance 0.37) "
        "| 0.27 → 0.91: +0.220 [0.150, 0.300] p < 0.001 (n 31) |"
    ) in text
    assert "**softmax vs sigmoid** (softmax − sigmoid)" in text
    assert "| -Pleural | 0.33 → 0.55: -0.100 [-0.200, 0.010] p 0.080 (n 31, chance 0.37) |" in text
    assert "sigmoid − unguided" not in text  # no rows for it: no table
