"""The heatmap-quality flow end to end: tiny random models, a 64 px synthetic store, its masks.

Untrained models make heatmaps that mean nothing, so the numbers are checked against an
independent recount (kinds, item counts, the comparison's differences), not for quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.diffusion.targets import Target
from flows.ingest import ingest_flow
from flows.quality.flow import compared_settings, heatmap_quality_flow
from flows.quality.scoring import PAIRED_COLUMNS, PAIRED_METRICS, target_mask
from flows.quality.settings import SweepSettings
from flows.quality.sweep import run_sweep, select_sweep_items, sweep_grid
from flows.runtime.pool import PoolSettings
from storage.release.ingest_config import IngestConfig
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.ingest_shards import store_fit_mode
from storage.synthetic.ground_truth import GroundTruthMasks, MaskStore
from tests.factories import run_daug, write_random_checkpoints

SPLITS = ["test", "validate"]
FAST = HeatmapSettings.build(translation={"level": 50, "steps": 3, "inversion_refinements": 0})
ONE_ACTOR = PoolSettings(actors=1)
TARGETS = list(compared_settings(FAST).targets)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_pair, prefect_server, ray_session) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heatmap_quality")
    store = root / "store"
    ingest_flow(
        release=str(synthetic_pair[0]),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=8),
    )
    ckpt = write_random_checkpoints(root / "ckpt")
    truth = synthetic_pair[0].parent / "ground_truth"
    return {"root": root, "store": store, "ckpt": ckpt, "truth": truth}


@pytest.fixture(scope="module")
def first_run(setup) -> dict[str, Any]:
    torch.set_num_threads(1)
    return heatmap_quality_flow(
        store=str(setup["store"]),
        truth=str(setup["truth"]),
        checkpoints=str(setup["ckpt"]),
        splits=SPLITS,
        heatmaps=FAST,
        sweep=SweepSettings(items=4),
        pool=ONE_ACTOR,
        examples_per_target=2,
        out=str(setup["root"] / "run1"),
    )


def _expected_items(setup) -> pd.DataFrame:
    """Finished items of SPLITS with their masks, recounted from the ground truth."""
    images = ImageStore.open(setup["store"], read_only=True)
    items = images.items()
    items = items[items["split"].isin(SPLITS) & images.done_mask()[items["index"]]]
    truth = GroundTruthMasks.open(setup["truth"])
    rows = []
    for index, dicom_id in zip(items["index"], items["dicom_id"], strict=True):
        masks = truth.masks(dicom_id, 64, "pad")
        rows.append(
            {
                "index": int(index),
                "dicom_id": dicom_id,
                "any": bool(masks.any()),
                "pleural": bool(target_mask(masks, "Pleural").any()),
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_modes_are_computed_scored_and_compared(setup, first_run):
    expected = _expected_items(setup)
    assert expected["any"].any() and not expected["any"].all()  # lesion and healthy items
    run_dir = Path(first_run["run_dir"])
    images = ImageStore.open(setup["store"], read_only=True)
    for mode, run in first_run["modes"].items():
        heat = HeatmapStore(images, run["version"])
        assert run["version"].startswith(f"quality-{mode}-")
        translation = heat.provenance.translation
        assert translation.mode == mode and translation.steps == 3
        assert translation.level == 50 and list(heat.targets) == TARGETS
        assert heat.done_mask().sum() == len(expected)  # only the chosen splits
        scores = pd.read_csv(run_dir / f"scores-{mode}.csv")
        assert len(scores) == len(expected) * len(TARGETS)
        nf = scores[scores["target"] == "+No Finding"].set_index("index")
        lesion = nf.loc[expected["index"], "kind"].eq("lesion").to_numpy()
        np.testing.assert_array_equal(lesion, expected["any"].to_numpy())
        pleural = scores[scores["target"] == "-Pleural"].set_index("index")
        kinds = pleural.loc[expected["index"], "kind"].to_numpy()
        want = np.where(
            expected["pleural"], "lesion", np.where(expected["any"], "other", "healthy")
        )
        np.testing.assert_array_equal(kinds, want)
        assert set(scores["hit"].dropna()) <= {0.0, 1.0}
        summary = first_run["modes"][mode]["targets"]
        assert list(summary) == TARGETS
        assert summary["+No Finding"]["n_lesion"] == expected["any"].sum()
        assert summary["+No Finding"]["n_healthy"] == (~expected["any"]).sum()
        assert 0.0 <= summary["+No Finding"]["pointing_game"] <= 1.0
        shares = scores[scores["kind"] == "lesion"][
            ["on_target_share", "off_target_share", "healthy_share"]
        ].sum(axis=1)
        np.testing.assert_allclose(shares, 1.0, atol=1e-9)

    modes = pd.read_csv(run_dir / "modes.csv").set_index("target")
    assert modes.index.tolist() == TARGETS
    soft, sig = (first_run["modes"][m]["targets"] for m in ("softmax", "sigmoid"))
    for target in TARGETS:
        for metric in ("pointing_game", "off_target_share"):
            a, b = soft[target][metric], sig[target][metric]
            if a is None or b is None:
                assert np.isnan(modes.loc[target, f"{metric}_diff"])
            else:
                assert modes.loc[target, f"{metric}_diff"] == pytest.approx(a - b)
    assert "Softmax vs sigmoid" in first_run["markdown"]
    assert "off_target_share_diff" in first_run["markdown"]


def test_each_mode_is_paired_with_the_unguided_baseline_and_with_the_other(setup, first_run):
    run_dir = Path(first_run["run_dir"])
    images = ImageStore.open(setup["store"], read_only=True)
    unguided_version = first_run["modes"]["softmax"]["version"].replace("softmax", "unguided")
    unguided = HeatmapStore(images, unguided_version)
    assert unguided.provenance.translation.scale == 0.0
    assert unguided.done_mask().sum() == len(_expected_items(setup))
    paired = pd.read_csv(run_dir / "paired.csv")
    assert list(paired) == list(PAIRED_COLUMNS)
    pairs = {("softmax", "unguided"), ("sigmoid", "unguided"), ("softmax", "sigmoid")}
    assert set(zip(paired["first"], paired["second"], strict=True)) == pairs
    assert len(paired) == len(pairs) * len(TARGETS) * len(PAIRED_METRICS)
    returned = pd.DataFrame(first_run["paired"], columns=list(PAIRED_COLUMNS))
    pd.testing.assert_frame_equal(paired, returned, check_dtype=False)
    scores = {m: pd.read_csv(run_dir / f"scores-{m}.csv") for m in ("softmax", "unguided")}
    row = paired[
        (paired["first"] == "softmax")
        & (paired["second"] == "unguided")
        & (paired["target"] == "+No Finding")
        & (paired["metric"] == "pointing_game")
    ].iloc[0]
    for name, column in (("softmax", "first_mean"), ("unguided", "second_mean")):
        mine = scores[name][(scores[name]["target"] == "+No Finding")]
        assert row[column] == pytest.approx(mine.loc[mine["kind"] == "lesion", "hit"].mean())
    assert row["n"] == _expected_items(setup)["any"].sum()
    defined = paired.dropna(subset=["difference"])
    assert len(defined) and (defined["n"] >= 2).all()
    np.testing.assert_allclose(
        defined["difference"], defined["first_mean"] - defined["second_mean"], atol=1e-12
    )
    assert (defined["low"] <= defined["difference"] + 1e-12).all()
    assert (defined["difference"] <= defined["high"] + 1e-12).all()
    assert defined["p_value"].between(0, 1).all()


@pytest.mark.slow
def test_a_sweep_over_modes_and_class_targets_scores_each_target_on_its_class_s_images(setup):
    config = FAST.config()
    images = ImageStore.open(setup["store"], read_only=True)
    truth = GroundTruthMasks.open(setup["truth"])
    fit = store_fit_mode(images)
    names = ["-Pleural", "+No Finding"]
    targets = [Target.parse(t) for t in names]
    items = select_sweep_items(images, truth, SPLITS, 2, config.image_size, fit, targets)
    pleural = [bool(target_mask(m, "Pleural").any()) for m in items.masks]
    expected = _expected_items(setup)
    assert sum(pleural) == min(2, int(expected["pleural"].sum()))
    assert all(m.any() for m in items.masks) and len(items.indices) >= 2
    # items in index order, and the selection stops once every target has its images
    assert list(items.indices) == sorted(items.indices)
    settings = SweepSettings(
        modes=("softmax", "sigmoid"), scales=(10.0,), levels=(50,), steps=(1,), items=2
    )
    points = sweep_grid(config.translation, settings)
    assert [(p.mode, p.scale, p.level, p.steps) for p in points] == [
        ("softmax", 10.0, 50, 1),
        ("sigmoid", 10.0, 50, 1),
    ]
    torch.set_num_threads(1)
    table = run_sweep(config, setup["ckpt"], items, points, 2, 1, targets=names)
    assert list(zip(table["mode"], table["target"], strict=True)) == [
        ("softmax", "-Pleural"),
        ("softmax", "+No Finding"),
        ("sigmoid", "-Pleural"),
        ("sigmoid", "+No Finding"),
    ]
    by_target = table.set_index(["mode", "target"])
    assert by_target.loc[("softmax", "-Pleural"), "n_lesion"] == sum(pleural)
    assert by_target.loc[("softmax", "+No Finding"), "n_lesion"] == len(items.indices)
    assert table["pointing_game"].between(0, 1).all()


@pytest.mark.slow
def test_sweep_rows_plots_and_summary_json(setup, first_run):
    run_dir = Path(first_run["run_dir"])
    points = sweep_grid(FAST.translation, SweepSettings())
    assert len(points) == 8
    sweep = pd.read_csv(run_dir / "sweep.csv")
    assert len(sweep) == len(first_run["sweep"]) == 8
    assert sorted(zip(sweep["scale"], sweep["level"], sweep["steps"], strict=True)) == sorted(
        (p.scale, p.level, p.steps) for p in points
    )
    assert (sweep["target"] == "+No Finding").all() and (sweep["mode"] == "softmax").all()
    lesion_items = int(_expected_items(setup)["any"].sum())
    assert (sweep["items"] == min(4, lesion_items)).all()
    assert (sweep["n_lesion"] == min(4, lesion_items)).all()
    assert (sweep["seconds_per_image"] > 0).all()
    assert sweep["pointing_game"].between(0, 1).all()
    # 3 DDIM steps cost more time per image than 1 (summed over the other numbers)
    by_steps = sweep.groupby("steps")["seconds_per_image"].sum()
    assert by_steps.loc[3] > by_steps.loc[1]
    assert (run_dir / "sweep.png").stat().st_size > 5000
    cases = first_run["paths"]["cases"]
    assert list(cases) == TARGETS
    assert all(Path(p).stat().st_size > 2000 for p in cases.values())
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["modes"]["softmax"]["targets"] == json.loads(
        json.dumps(first_run["modes"]["softmax"]["targets"])
    )
    assert saved["failures"] == 0 and saved["scored"] is None
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_rerun_computes_nothing_and_gives_the_same_numbers(setup, first_run):
    again = heatmap_quality_flow(
        store=str(setup["store"]),
        truth=str(setup["truth"]),
        checkpoints=str(setup["ckpt"]),
        splits=SPLITS,
        heatmaps=FAST,
        sweep=SweepSettings(enabled=False),
        pool=ONE_ACTOR,
        examples_per_target=0,
        out=str(setup["root"] / "run2"),
    )
    images = ImageStore.open(setup["store"], read_only=True)
    for run in first_run["modes"].values():
        assert HeatmapStore(images, run["version"]).attrs["runs"][-1]["done"] == 0
    assert again["modes"] == first_run["modes"]
    assert again["sweep"] == [] and again["paths"]["cases"] == {}


@pytest.mark.slow
def test_scoring_a_version_reports_an_item_without_masks(setup, first_run):
    truth = setup["root"] / "truth_missing_one"
    shutil.copytree(setup["truth"], truth)
    expected = _expected_items(setup)
    gone = expected[expected["any"]].iloc[0]
    MaskStore.open_existing(truth / "masks.zarr").delete(gone["dicom_id"])
    result = heatmap_quality_flow(
        store=str(setup["store"]),
        truth=str(truth),
        heatmap_version=first_run["modes"]["softmax"]["version"],
        splits=SPLITS,
        examples_per_target=1,
    )
    assert result["modes"] is None and result["sweep"] == []
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == setup["store"] / "_runs"
    assert run_dir.name.startswith("heatmap-quality-")
    failures = pd.read_csv(run_dir / "failures.csv")
    assert failures["dicom_id"].tolist() == [gone["dicom_id"]]
    assert "MissingMasksError" in failures["reason"].iloc[0]
    assert result["failures"] == 1
    scored = result["scored"]
    softmax = first_run["modes"]["softmax"]["version"]
    assert scored["version"] == softmax and scored["items"] == len(expected)
    full = first_run["modes"]["softmax"]["targets"]["+No Finding"]
    assert scored["targets"]["+No Finding"]["n_lesion"] == full["n_lesion"] - 1
    summary = pd.read_csv(run_dir / f"summary-{softmax}.csv").set_index("target")
    assert (summary["n_failed"] == 1).all()
    assert f"Heatmaps {softmax}" in result["markdown"]


@pytest.mark.slow
def test_nothing_to_score_is_refused(setup, prefect_server):
    with pytest.raises(ValueError, match="nothing to score"):
        heatmap_quality_flow(store=str(setup["store"]), truth=str(setup["truth"]))


@pytest.mark.slow
def test_cli_scores_a_version_and_prints_the_headline(setup, first_run, tmp_path):
    result = run_daug(
        "heatmap-quality",
        "--store",
        str(setup["store"]),
        "--truth",
        str(setup["truth"]),
        "--heatmap-version",
        first_run["modes"]["sigmoid"]["version"],
        "--split",
        "test",
        "--split",
        "validate",
        "--out",
        str(tmp_path / "cli"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sigmoid = first_run["modes"]["sigmoid"]["version"]
    assert f"Heatmaps {sigmoid}" in result.stderr and "pointing_game" in result.stderr
    summary = pd.read_csv(tmp_path / "cli" / f"summary-{sigmoid}.csv")
    assert summary["target"].tolist() == TARGETS


def test_cli_fails_fast_on_missing_inputs(tmp_path, synthetic_pair):
    truth = synthetic_pair[0].parent / "ground_truth"
    ImageStore.create(tmp_path / "store", 16, shard_items=4)
    no_truth = run_daug(
        "heatmap-quality", "--store", str(tmp_path / "store"), "--truth", str(tmp_path)
    )
    assert no_truth.returncode == 2 and "holds no masks.zarr" in no_truth.stderr
    assert "Traceback" not in no_truth.stderr
    no_ckpt = run_daug(
        "heatmap-quality",
        "--store",
        str(tmp_path / "store"),
        "--truth",
        str(truth),
        "--checkpoints",
        str(tmp_path / "ckpt"),
    )
    assert no_ckpt.returncode == 2 and "does not exist" in no_ckpt.stderr
    nothing = run_daug("heatmap-quality", "--store", str(tmp_path / "store"), "--truth", str(truth))
    assert nothing.returncode == 2 and "nothing to score" in nothing.stderr
    no_version = run_daug(
        "heatmap-quality",
        "--store",
        str(tmp_path / "store"),
        "--truth",
        str(truth),
        "--heatmap-version",
        "v9",
    )
    assert no_version.returncode == 2 and "no heatmap version 'v9'" in no_version.stderr


def test_the_sweep_device_is_checked_where_the_settings_are_built():
    from daug_core.settings import ConfigError

    assert SweepSettings().device == "auto"
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        SweepSettings(device="gpu0")
