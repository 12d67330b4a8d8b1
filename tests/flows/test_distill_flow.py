"""daug distill on a 64 px store with tiny random teacher models: the teacher computes exactly
the label-stratified fraction of the train split, the student learns it and makes every item's
heatmaps into a version of its own; a rerun does no stage's work again; bad input is one
error before any stage starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from daug_core.settings import ConfigError
from daug_core.student.config import StudentSettings
from flows.distill import distill_flow
from flows.runtime.pool import PoolSettings
from storage.datasets.teacher import stratified_selection
from storage.errors import EmptySelectionError
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from tests.factories import run_daug, write_random_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
FRACTION = 0.25
HEAT = HeatmapSettings.build(
    targets=("+No Finding", "+Pleural"),
    translation={"level": 50, "steps": 3, "inversion_refinements": 0},
)
PLAN: dict[str, Any] = {
    "heatmaps": HEAT,
    "student": StudentSettings(steps=12),
    "pool": PoolSettings(batch_size=8, actors=1),
}


@pytest.fixture(scope="module")
def setup(contrastive_store, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    store = root / "store"
    shutil.copytree(contrastive_store, store)  # v1: the fixture's heatmaps of every item
    return {"root": root, "store": store, "ckpt": write_random_checkpoints(root / "ckpt")}


def distill(setup: dict[str, Path], out: Path, **changes: Any) -> dict[str, Any]:
    arguments = PLAN | {"fraction": FRACTION} | changes
    return distill_flow(
        store=str(setup["store"]), checkpoints=str(setup["ckpt"]), out=str(out), **arguments
    )


@pytest.fixture(scope="module")
def distilled(setup, ray_session) -> dict[str, Any]:
    return distill(setup, setup["root"] / "out")


def test_the_teacher_makes_the_fraction_and_the_student_every_item(setup, distilled):
    images = ImageStore.open(setup["store"], read_only=True)
    chosen = stratified_selection(images, ["train"], FRACTION)
    train = images.usable(["train"])["index"].to_numpy()
    assert 0 < len(chosen) < len(train)
    teacher = HeatmapStore(images, "teacher")
    np.testing.assert_array_equal(np.flatnonzero(teacher.done_mask()), chosen)
    assert teacher.attrs["runs"][-1]["fraction"] == FRACTION
    assert teacher.targets == ("+No Finding", "+Pleural")

    out = setup["root"] / "out"
    made = HeatmapStore(images, "student")
    provenance = made.attrs["provenance"]
    assert provenance["student_sha256"] == checkpoint_sha256(out / "student")
    assert provenance["teacher_version"] == "teacher"
    usable = images.usable()["index"].to_numpy()
    np.testing.assert_array_equal(np.flatnonzero(made.done_mask()), usable)

    assert distilled["items"] == {
        "train_split": len(train),
        "teacher": len(chosen),
        "student_training": len(chosen),
        "student_heatmaps": len(usable),
    }
    assert distilled["teacher"]["done"] == len(chosen)
    assert distilled["heatmaps"]["done"] == len(usable)
    assert distilled["train"]["steps_run"] == 12
    assert set(distilled["seconds"]) == {"teacher", "train", "student", "total"}
    assert distilled["fraction"] == FRACTION
    assert (distilled["teacher_version"], distilled["heatmap_version"]) == ("teacher", "student")
    assert json.loads((out / "distill.json").read_text()) == json.loads(
        json.dumps(distilled, default=str)
    )


def test_a_rerun_does_no_stage_again(setup, distilled):
    again = distill(setup, setup["root"] / "out")
    assert again["teacher"]["done"] == 0
    assert again["teacher"]["already_done"] == distilled["items"]["teacher"]
    assert again["train"]["steps_run"] == 0 and again["train"]["steps"] == 12
    assert again["train"]["student_sha256"] == distilled["train"]["student_sha256"]
    assert again["heatmaps"]["done"] == 0
    assert again["heatmaps"]["already_done"] == distilled["items"]["student_heatmaps"]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"fraction": 0.0}, ConfigError, r"fraction must be in \(0, 1\]"),
        ({"heatmap_version": "teacher"}, ConfigError, "both are 'teacher'"),
        ({"teacher_version": "../up"}, ConfigError, "use letters, digits"),
        ({"student": StudentSettings(preset="paper")}, ConfigError, "learns 512 px heatmaps"),
        # v1 holds every train item: a student of it would learn more than the fraction.
        ({"teacher_version": "v1"}, ConfigError, r"v1' holds heatmaps of \d+ train item"),
        ({"heatmap_version": "v1"}, ConfigError, "'v1' holds heatmaps made by the teacher"),
    ],
    ids=["fraction", "one-version", "version-name", "student-size", "teacher", "student"],
)
def test_bad_input_is_one_error_before_any_work(setup, tmp_path, changes, error, message):
    versions = HeatmapStore.versions(ImageStore.open(setup["store"], read_only=True))
    with pytest.raises(error, match=message):
        distill(setup, tmp_path / "out", **changes)
    assert not (tmp_path / "out").exists()
    assert HeatmapStore.versions(ImageStore.open(setup["store"], read_only=True)) == versions


def test_a_store_without_train_items_is_refused_before_any_work(setup, tmp_path):
    ImageStore.create(tmp_path / "store", 64, shard_items=8)
    with pytest.raises(EmptySelectionError, match="no usable item in the train split"):
        distill({**setup, "store": tmp_path / "store"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_another_fraction_into_the_same_output_is_refused(setup, distilled):
    with pytest.raises(ConfigError, match=r"other fraction 0.25 -> 0.5: pass a new --out"):
        distill(setup, setup["root"] / "out", fraction=0.5)


def test_the_command_refuses_a_bad_fraction_in_one_line(setup, tmp_path):
    result = run_daug(
        "distill",
        "--store",
        str(setup["store"]),
        "--checkpoints",
        str(setup["ckpt"]),
        "--out",
        str(tmp_path / "out"),
        "--fraction",
        "1.5",
    )
    assert result.returncode == 2 and "fraction must be in (0, 1], got 1.5" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
