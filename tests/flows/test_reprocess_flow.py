"""The reprocess flow end to end: a 64 px store of a synthetic release with heatmaps from tiny
random models, then a derived release (new studies, changed labels, reports and pixels,
removed studies). Only the needed work is done, and reported; unchanged items keep their
pixels and heatmaps byte for byte; a second run does nothing; other checkpoints write a new
heatmap version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.settings import ConfigError
from flows.ingest import ingest_flow
from flows.precompute import precompute_flow
from flows.reprocess import (
    choose_heatmap_version,
    heatmaps_made_by,
    next_version_name,
    reprocess_flow,
)
from flows.runtime.pool import PoolSettings
from storage.release.diff import file_sha256
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.location import Location
from storage.store.status import format_status, record_evaluation, store_status
from storage.synthetic import SynthConfig, write_synthetic_release
from storage.synthetic.next_release import ReleaseChangeConfig, write_next_release
from tests.factories import run_daug as daug
from tests.factories import write_random_checkpoints, write_random_student

pytestmark = pytest.mark.slow

HEAT = HeatmapSettings.build(
    targets=("+No Finding",), translation={"level": 50, "steps": 3, "inversion_refinements": 0}
)
POOL = {"pool": PoolSettings(actors=1, batch_size=8)}
CHANGES = ReleaseChangeConfig(
    new_fraction=0.1,
    relabel_fraction=0.1,
    report_fraction=0.1,
    pixel_fraction=0.05,
    remove_fraction=0.05,
)


def save_checkpoints(path: Path, classifier_seed: int) -> Path:
    return write_random_checkpoints(path, classifier_seed=classifier_seed)


def chunk_bytes(store: Path, array: str, indices: np.ndarray) -> dict[int, bytes]:
    """The stored chunk file of each item (one chunk per item; absent = never written)."""
    out = {}
    for i in indices:
        path = store / array / "c" / str(int(i))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        out[int(i)] = b"".join(p.read_bytes() for p in files)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, prefect_server, ray_session) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reprocess")
    write_synthetic_release(root / "base", SynthConfig(studies=40, size=64), seed=31)
    write_next_release(root / "base", root / "next", CHANGES)
    ckpt = save_checkpoints(root / "ckpt", classifier_seed=1)
    store = root / "store"
    ingest_flow(
        release=str(root / "base" / "release"),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=16, reader=ReaderConfig(views=())),
    )
    full = precompute_flow(store=str(store), checkpoints=str(ckpt), heatmaps=HEAT, **POOL)
    images = ImageStore.open(store)
    everything = np.arange(len(images))
    truth = pd.read_csv(root / "next" / "ground_truth" / "changes.csv", dtype=str)
    return {
        "root": root,
        "store": store,
        "ckpt": ckpt,
        "release": root / "next" / "release",
        "truth": truth,
        "full": full,
        "items": images.items(),
        "images": chunk_bytes(store, "images", everything),
        "heatmaps": chunk_bytes(store, "heatmaps/v1/heatmaps", everything),
    }


@pytest.fixture(scope="module")
def first(setup) -> dict[str, Any]:
    return reprocess_flow(
        release=str(setup["release"]),
        store=str(setup["store"]),
        checkpoints=str(setup["ckpt"]),
        **POOL,
    )


def kind_count(truth: pd.DataFrame, *kinds: str) -> int:
    return int(truth["kind"].isin(kinds).sum())


def test_the_diff_and_its_report_match_the_ground_truth(setup, first):
    truth = setup["truth"]
    for kind in ("new", "pixels_changed", "labels_changed", "report_changed", "removed"):
        assert first["counts"][kind] == kind_count(truth, kind) > 0, kind
    run_dir = Path(first["run_dir"])
    changes = pd.read_csv(run_dir / "changes.csv", dtype=str)
    got = changes[["dicom_id", "kind"]].sort_values(["kind", "dicom_id"], ignore_index=True)
    expected = truth[["dicom_id", "kind"]].sort_values(["kind", "dicom_id"], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    report = (run_dir / "report.md").read_text()
    assert f"| removed | {first['counts']['removed']} |" in report
    assert "Time per phase" in report and "| diff |" in report and "| precompute |" in report
    assert truth.loc[truth["kind"] == "labels_changed", "dicom_id"].iloc[0] in report
    assert json.loads((run_dir / "summary.json").read_text())["release_id"] == first["release_id"]


def test_only_new_and_pixel_changed_items_are_ingested_and_get_heatmaps(setup, first):
    expected = kind_count(setup["truth"], "new", "pixels_changed")
    assert first["ingested"] == expected == first["ingest"]["ingested"]
    assert (
        first["ingest"]["plan"]["already_finished"]
        == len(setup["items"]) - first["counts"]["removed"] - first["counts"]["pixels_changed"]
    )
    assert first["heatmaps_computed"] == expected
    assert first["heatmap_version"] == "v1" and not first["new_heatmap_version"]
    assert (
        first["precompute"]["already_done"]
        == setup["full"]["done"] - first["counts"]["pixels_changed"] - first["counts"]["removed"]
    )
    images = ImageStore.open(setup["store"], read_only=True)
    assert images.attrs["ingests"][-1]["ingested"] == expected
    heat = HeatmapStore(images, "v1")
    assert heat.attrs["runs"][-1]["done"] == expected
    usable = np.flatnonzero(images.done_mask() & (images.items()["status"] == "ok").to_numpy())
    assert heat.done_mask()[usable].all()
    # The store now holds the new release's pixels and labels.
    items = images.items().set_index("dicom_id")
    reader = ReleaseReader(setup["release"], ReaderConfig(views=()))
    index = reader.index().items.set_index("dicom_id")
    truth = setup["truth"]
    for dicom_id in truth.loc[truth["kind"].isin(["new", "pixels_changed"]), "dicom_id"]:
        sha, _ = file_sha256(Location.of(setup["release"] / index.loc[dicom_id, "source_path"]))
        assert items.loc[dicom_id, "source_sha256"] == sha and items.loc[dicom_id, "status"] == "ok"
    relabelled = truth.loc[truth["kind"] == "labels_changed", "dicom_id"]
    columns = [c for c in items.columns if c.startswith("y_")]
    np.testing.assert_array_equal(
        items.loc[relabelled, columns].to_numpy(), index.loc[relabelled, columns].to_numpy()
    )
    removed = truth.loc[truth["kind"] == "removed", "dicom_id"]
    assert (items.loc[removed, "status"] == "retired").all()


def test_unchanged_items_keep_their_pixels_and_heatmaps_byte_for_byte(setup, first):
    before = setup["items"].set_index("dicom_id")["index"]
    truth = setup["truth"]
    touched = set(truth.loc[truth["kind"].isin(["pixels_changed"]), "dicom_id"])
    kept = np.array([i for d, i in before.items() if d not in touched])
    store = setup["store"]
    assert chunk_bytes(store, "images", kept) == {i: setup["images"][i] for i in kept}
    assert chunk_bytes(store, "heatmaps/v1/heatmaps", kept) == {
        i: setup["heatmaps"][i] for i in kept
    }
    changed = before[list(touched)].to_numpy()
    after = chunk_bytes(store, "images", changed)
    assert all(after[i] != setup["images"][i] for i in changed)


def test_status_lists_releases_states_versions_and_evaluation(setup, first):
    images = ImageStore.open(setup["store"])
    status = store_status(images)
    assert [r["via"] for r in status.releases] == ["ingest", "reprocess"]
    assert status.releases[-1]["release_id"] == first["release_id"]
    assert status.states.loc["total", "retired"] == first["counts"]["removed"]
    assert status.states.loc["total", "pending"] == 0
    assert status.current_heatmaps == "v1" and status.heatmaps[0].done > 0
    text = format_status(status)
    assert "retired" in text and "v1 (current)" in text and first["release_id"] in text


def test_a_second_reprocess_of_the_same_release_does_nothing(setup, first):
    again = reprocess_flow(
        release=str(setup["release"]),
        store=str(setup["store"]),
        checkpoints=str(setup["ckpt"]),
        **POOL,
    )
    assert again["release_id"] == first["release_id"]
    counts = again["counts"]
    assert (
        counts["unchanged"]
        == sum(first["counts"][k] for k in first["counts"]) - (first["counts"]["removed"])
    )
    assert all(n == 0 for k, n in counts.items() if k != "unchanged")
    assert again["ingest"] is None and again["precompute"] is None
    assert again["ingested"] == 0 and again["heatmaps_computed"] == 0
    entry = ImageStore.open(setup["store"]).attrs["releases"][-1]
    assert entry["times_seen"] == 2 and entry["counts"] == first["counts"]


def test_other_checkpoints_write_a_new_heatmap_version_and_retraining_reports_deltas(
    setup, first, one_thread
):
    other = save_checkpoints(setup["root"] / "ckpt2", classifier_seed=2)
    record_evaluation(
        ImageStore.open(setup["store"]),
        setup["root"] / "earlier" / "metrics.json",
        {"checkpoint": None, "headline": {"auc_macro": 0.5, "x2x_map5": 0.25}},
    )
    result = reprocess_flow(
        release=str(setup["release"]),
        store=str(setup["store"]),
        checkpoints=str(other),
        retrain=True,
        training=ClipTrainSettings(epochs=1),
        evaluate=True,
        **POOL,
    )
    assert result["new_heatmap_version"] and result["heatmap_version"] == "v2"
    assert "classifier_sha256" in result["heatmap_reason"]
    assert "generator_sha256" not in result["heatmap_reason"]
    images = ImageStore.open(setup["store"], read_only=True)
    assert HeatmapStore.versions(images) == ["v1", "v2"]
    usable = images.done_mask() & (images.items()["status"] == "ok").to_numpy()
    v2 = HeatmapStore(images, "v2").done_mask()
    assert result["heatmaps_computed"] == usable.sum() == v2.sum()
    assert HeatmapStore(images, "v1").done_mask()[usable].all()  # v1 stays as it was
    assert store_status(images).current_heatmaps == "v2"

    trained = Path(result["train"]["out"])
    assert json.loads((trained / "train.json").read_text())["heatmap_version"] == "v2"
    deltas = pd.DataFrame(result["metric_deltas"]).set_index("metric")
    assert deltas.loc["auc_macro", "before"] == 0.5
    assert deltas.loc["auc_macro", "delta"] == pytest.approx(deltas.loc["auc_macro", "after"] - 0.5)
    evaluation = images.attrs["last_evaluation"]
    assert evaluation["path"] == str((trained / "metrics.json").resolve())
    assert evaluation["headline"]["auc_macro"] == deltas.loc["auc_macro", "after"]
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "new version v2" in report and "| auc_macro | 0.5000 |" in report
    assert "| train |" in report and "| evaluate |" in report


def test_a_student_made_version_gets_the_new_items_from_the_same_student(setup, tmp_path):
    store = tmp_path / "store"
    ingest_flow(
        release=str(setup["root"] / "base" / "release"),
        store=str(store),
        ingest=IngestConfig(size=64, shard_items=16, reader=ReaderConfig(views=())),
    )
    student = write_random_student(tmp_path / "student", HEAT.targets)
    precompute_flow(store=str(store), student=str(student), **POOL)
    with pytest.raises(ConfigError, match="checkpoints or a student, not both"):
        reprocess_flow(
            release=str(setup["release"]),
            store=str(store),
            checkpoints=str(setup["ckpt"]),
            student=str(student),
        )

    result = reprocess_flow(
        release=str(setup["release"]), store=str(store), student=str(student), **POOL
    )
    expected = kind_count(setup["truth"], "new", "pixels_changed")
    assert result["heatmap_version"] == "v1" and not result["new_heatmap_version"]
    assert result["heatmaps_computed"] == expected == result["precompute"]["done"]
    images = ImageStore.open(store, read_only=True)
    made = HeatmapStore(images, "v1")
    assert made.provenance.student_sha256 == checkpoint_sha256(student)
    assert made.done_for(images.usable()["index"].to_numpy()).all()
    # The teacher, or a student of other targets, would write a new version, naming why.
    teacher = choose_heatmap_version(images, heatmaps_made_by(str(setup["ckpt"]), None), None, HEAT)
    assert (teacher.version, teacher.new_version) == ("v2", True)
    assert "student_sha256" in teacher.reason
    other = write_random_student(tmp_path / "other", ("+Pleural",))
    another = choose_heatmap_version(images, heatmaps_made_by(None, str(other)), None, HEAT)
    assert another.new_version and "targets" in another.reason


def test_next_version_name():
    assert next_version_name([]) == "v1"
    assert next_version_name(["v1"]) == "v2"
    assert next_version_name(["v1", "v3", "paper"]) == "v4"


def test_the_nightly_deployment_parses_into_a_utc_cron_schedule():
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    root = Path(__file__).resolve().parents[2]
    deployments = yaml.safe_load((root / "deployment.yaml").read_text())["deployments"]
    (deployment,) = [d for d in deployments if d["name"] == "reprocess-release"]
    (schedule,) = [_schedule_config_to_deployment_schedule(s) for s in deployment["schedules"]]
    assert schedule["schedule"].cron == "0 2 * * *" and schedule["schedule"].timezone == "UTC"
    assert schedule["active"] is True


def test_cli_status_synth_next_and_reprocess_errors(setup, first, tmp_path):
    status = daug("status", str(setup["store"]))
    assert status.returncode == 0, status.stderr[-2000:]
    assert "retired" in status.stdout and first["release_id"] in status.stdout

    derived = daug("synth-next", str(setup["root"] / "base"), str(tmp_path / "n"), "--seed", "3")
    assert derived.returncode == 0, derived.stderr[-2000:]
    assert (tmp_path / "n" / "ground_truth" / "changes.csv").is_file()

    missing = daug("reprocess", str(setup["release"]), "--store", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "error:" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "nowhere").exists()
