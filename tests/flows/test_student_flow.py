"""train-student and precompute --student on a 64 px store whose teacher heatmaps are a known
function of the image (tests/flows/conftest.py write_heatmaps): the student learns it, its
heatmaps go into a version of their own with the student in its provenance, a version never
mixes teacher and student, and bad input is one clear error before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.settings import CheckpointError
from daug_core.student.config import StudentSettings
from flows.precompute import precompute_flow
from flows.runtime.pool import PoolSettings
from flows.train_student import train_student_flow
from storage.errors import EmptySelectionError, StoreFormatError
from storage.store.heatmaps import HeatmapStore, ProvenanceMismatchError
from storage.store.image import ImageStore
from tests.factories import (
    fake_heatmap_provenance,
    write_random_checkpoints,
    write_random_student,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
POOL = PoolSettings(batch_size=8, actors=1)


@pytest.fixture(scope="module")
def trained(contrastive_store, tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("student")
    store = root / "store"
    shutil.copytree(contrastive_store, store)
    out = root / "run"
    first = train_student_flow(store=str(store), out=str(out), student=StudentSettings(steps=30))
    return store, out, first


def test_the_student_trains_resumes_and_reports_its_agreement(trained):
    store, out, first = trained
    assert first["steps"] == 30 and first["train_items"] > 10
    more = train_student_flow(store=str(store), out=str(out), student=StudentSettings(steps=40))
    assert (more["steps_run"], more["steps"]) == (10, 40)
    summary = json.loads((out / "student.json").read_text())
    assert summary["validation"]["items"] > 0
    assert summary["validation"]["mean_abs_difference"] < 0.25
    header = json.loads((out / "student" / "model.json").read_text())
    assert header["kind"] == "student" and header["teacher_version"] == "v1"
    assert header["targets"] == list(HeatmapStore(ImageStore.open(store), "v1").targets)


def test_student_heatmaps_go_into_their_own_version_and_never_mix(trained, ray_session):
    store, out, _ = trained
    result = precompute_flow(
        store=str(store), student=str(out / "student"), pool=POOL, heatmap_version="student"
    )
    assert result["failed"] == 0
    images = ImageStore.open(store)
    version = HeatmapStore(images, "student")
    teacher = HeatmapStore(images, "v1")
    provenance = version.attrs["provenance"]
    assert provenance["student_sha256"] == checkpoint_sha256(out / "student")
    assert provenance["teacher_version"] == "v1"
    assert provenance["targets"] == teacher.attrs["provenance"]["targets"]
    usable = images.usable()["index"].to_numpy()
    assert version.done_for(usable).all()
    heat = version.read_heatmaps(usable)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    # A rerun computes nothing; the teacher's own models into the student's version: refused.
    again = precompute_flow(
        store=str(store), student=str(out / "student"), pool=POOL, heatmap_version="student"
    )
    assert again["done"] == 0
    checkpoints = write_random_checkpoints(out.parent / "ckpt")
    with pytest.raises(ProvenanceMismatchError, match="student_sha256"):
        precompute_flow(
            store=str(store), checkpoints=str(checkpoints), pool=POOL, heatmap_version="student"
        )
    # Nor does a student of other targets write into it.
    other = write_random_student(out.parent / "other", ("+Edema",))
    with pytest.raises(ProvenanceMismatchError, match="targets"):
        precompute_flow(store=str(store), student=str(other), pool=POOL, heatmap_version="student")
    assert version.done_for(usable).all()


def test_a_teacher_version_without_done_items_is_one_error_before_any_work(trained, tmp_path):
    store, _, _ = trained
    images = ImageStore.open(store)
    HeatmapStore.create(images, fake_heatmap_provenance(("+Edema",), 64), "empty")
    with pytest.raises(EmptySelectionError, match="'empty' has no done items"):
        train_student_flow(store=str(store), out=str(tmp_path / "run"), teacher_version="empty")
    assert not (tmp_path / "run").exists()


def test_a_student_preset_of_another_size_than_the_teacher_version_is_refused(trained, tmp_path):
    store, _, _ = trained
    with pytest.raises(StoreFormatError, match="'v1' is 64 px; the student computes 512 px"):
        train_student_flow(
            store=str(store), out=str(tmp_path / "run"), student=StudentSettings(preset="paper")
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ({"targets": ("+Edema",), "teacher_targets": ("+No Finding",)}, "a student of targets"),
        ({"targets": ("+Edema",), "image_size": 32}, "a 64 px student of 32 px teacher heatmaps"),
    ],
    ids=["targets", "image-size"],
)
def test_a_student_checkpoint_unlike_its_teacher_is_refused(trained, tmp_path, student, message):
    store, _, _ = trained
    checkpoint = write_random_student(tmp_path / "student", **student)
    versions = HeatmapStore.versions(ImageStore.open(store))
    with pytest.raises(CheckpointError, match=message):
        precompute_flow(store=str(store), student=str(checkpoint), pool=POOL, heatmap_version="x")
    assert HeatmapStore.versions(ImageStore.open(store)) == versions


def test_a_student_for_larger_images_than_the_store_is_refused(trained, tmp_path):
    _, out, _ = trained
    small = ImageStore.create(tmp_path / "store32", 32, shard_items=8)
    with pytest.raises(StoreFormatError, match="holds 32 px images; the tiny student"):
        precompute_flow(store=str(small.root), student=str(out / "student"), pool=POOL)
