"""daug explain on a 64 px store of frontal views: a heatmap student made the model's heatmap
version, the model trained on it, the store indexed for it. Explaining a release file of a
stored item gives the store's heatmaps, evaluation's probabilities and the item itself as its
top-1 neighbour; bad inputs are failures with reasons; mismatches are one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from daug_core.checkpoints.contrastive import load_clip_checkpoint, save_clip_checkpoint
from daug_core.contrastive.model import build_model
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.settings import CheckpointError, ConfigError
from daug_core.student.config import StudentSettings
from flows.evaluate import embed_split
from flows.explain import EXPLAIN_JSON, FAILURES_CSV, explain_inputs
from flows.index import index_flow
from flows.ingest import ingest_flow
from flows.precompute import student_provenance
from flows.runtime.contrastive import train_contrastive
from flows.runtime.heatmap_source import version_worker
from flows.train_student import train_student_flow
from storage.errors import StoreFormatError
from storage.release.ingest_config import IngestConfig
from storage.store.heatmap_shards import plan_heatmaps, precompute_shard
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.synthetic import SynthConfig, write_synthetic_release
from tests.factories import CHROMIUM, open_in_chromium, run_daug
from tests.flows.conftest import write_heatmaps

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
STUDENT_VERSION = "student"


def student_version(store: Path, student: Path) -> None:
    """The student's heatmaps of every item, as precompute --student writes them (its shard
    code and worker, in this process)."""
    images = ImageStore.open(store)
    provenance = student_provenance(student)
    heat = HeatmapStore.create(images, provenance, STUDENT_VERSION)
    worker = version_worker(provenance, student, version=STUDENT_VERSION, torch_threads=1)
    for work in plan_heatmaps(heat, images).shards:
        precompute_shard(heat, images, work, worker, batch_size=8)


@pytest.fixture(scope="module")
def explained_setup(tmp_path_factory, prefect_server, one_thread):
    root = tmp_path_factory.mktemp("explain")
    release = write_synthetic_release(root / "synth", SynthConfig(studies=40, size=64), seed=5)
    store = root / "store"
    ingest_flow(release=str(release.release_dir), store=str(store), ingest=IngestConfig(size=64))
    write_heatmaps(store)  # the "teacher" version v1 the student learns
    train_student_flow(
        store=str(store), out=str(root / "distil"), student=StudentSettings(steps=20)
    )
    student = root / "distil" / "student"
    student_version(store, student)
    config = ClipTrainSettings(heatmap_mode="channel", epochs=1, batch_size=8).config()
    train_contrastive(store, root / "run", config, heatmap_version=STUDENT_VERSION)
    model = root / "run" / "best"
    index_flow(model=str(model), store=str(store))
    return release.release_dir, store, model, student


def release_file(release: Path, dicom_id: str) -> Path:
    return next(release.rglob(f"{dicom_id}.dcm"))


def frontal_files(release: Path) -> list[Path]:
    """The release's PA and AP files (the store keeps those views)."""
    return [
        p
        for p in sorted(release.rglob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).ViewPosition in ("PA", "AP")
    ]


def test_a_stored_item_is_explained_as_the_store_and_evaluation_have_it(explained_setup, tmp_path):
    release, store, model, student = explained_setup
    loaded = load_clip_checkpoint(model)
    test = embed_split(loaded, store, ["test"], STUDENT_VERSION)
    chosen = test.dicom_ids[:2]
    files = [str(release_file(release, d)) for d in chosen]
    summary = explain_inputs(files, str(model), str(store), str(tmp_path), str(student))
    assert summary["explained"] == 2 and summary["failed"] == 0
    images = ImageStore.open(store)
    stored = HeatmapStore(images, STUDENT_VERSION)
    for position, dicom_id in enumerate(chosen):
        folder = next(p for p in tmp_path.iterdir() if p.name.startswith(dicom_id))
        record = json.loads((folder / EXPLAIN_JSON).read_text())
        index = int(test.indices[position])
        channels = [stored.targets.index(t) for t in loaded.heatmap_targets]
        expected = stored.read_heatmaps([index])[0, channels].astype(np.float32)
        np.testing.assert_allclose(np.load(folder / "heatmaps.npy"), expected, atol=2e-3)
        probabilities = np.array(list(record["probabilities"].values()))
        np.testing.assert_allclose(probabilities, test.embedded.probabilities[position], atol=1e-4)
        top = record["neighbours"][0]
        assert top["dicom_id"] == dicom_id and top["similarity"] == pytest.approx(1.0, abs=2e-3)
        assert record["provenance"]["heatmap_version"] == STUDENT_VERSION
        assert set(record["overlays"]) == set(loaded.heatmap_targets)
        for capture in record["dicom"].values():
            ds = pydicom.dcmread(folder / capture)
            source = pydicom.dcmread(release_file(release, dicom_id), stop_before_pixels=True)
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.SOPInstanceUID != source.SOPInstanceUID
    assert (tmp_path / "index.html").exists()
    # A second run over the same files skips them.
    again = explain_inputs(files, str(model), str(store), str(tmp_path), str(student))
    assert again["explained"] == 0 and again["skipped"] == 2


def test_bad_inputs_are_failures_with_reasons_and_the_rest_is_explained(explained_setup, tmp_path):
    release, store, model, student = explained_setup
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    frontal = frontal_files(release)
    shutil.copy(frontal[0], inbox / "good.dcm")
    (inbox / "notes.txt").write_text("not an image")
    (inbox / "broken.dcm").write_bytes(b"\0" * 300)
    ct = pydicom.dcmread(frontal[1])
    ct.Modality = "CT"
    ct.save_as(inbox / "ct.dcm")
    lateral = pydicom.dcmread(frontal[2])
    lateral.ViewPosition = "LL"
    lateral.save_as(inbox / "lateral.dcm")
    out = tmp_path / "out"
    summary = explain_inputs([str(inbox)], str(model), str(store), str(out), str(student))
    assert summary["explained"] == 1 and summary["failed"] == 4
    reasons = {Path(f["input"]).name: f["reason"] for f in summary["failures"]}
    assert reasons == {
        "notes.txt": "unknown_format",
        "broken.dcm": "not_dicom",
        "ct.dcm": "not_a_radiograph",
        "lateral.dcm": "view_not_kept",
    }
    table = pd.read_csv(out / FAILURES_CSV)
    assert sorted(Path(p).name for p in table["input"]) == sorted(reasons)


def test_a_student_other_than_the_versions_is_one_error_before_any_work(explained_setup, tmp_path):
    release, store, model, _ = explained_setup
    other = tmp_path / "other"
    train_student_flow(store=str(store), out=str(other), student=StudentSettings(steps=2, seed=1))
    file = str(next(release.rglob("*.dcm")))
    with pytest.raises(CheckpointError, match="heatmap version 'student' was made by"):
        explain_inputs([file], str(model), str(store), str(tmp_path / "o"), str(other / "student"))
    with pytest.raises(ConfigError, match="pass that student checkpoint"):
        explain_inputs([file], str(model), str(store), str(tmp_path / "o"), None)
    assert not (tmp_path / "o").exists()


def test_a_model_the_store_has_no_index_of_is_one_error(explained_setup, tmp_path):
    release, store, model, student = explained_setup
    loaded = load_clip_checkpoint(model)
    with torch.no_grad():
        next(loaded.model.parameters()).add_(0.01)  # another model: other weights
    other = save_clip_checkpoint(tmp_path / "model", loaded.model, loaded.config, loaded.info)
    file = str(next(release.rglob("*.dcm")))
    with pytest.raises(StoreFormatError, match="daug index"):
        explain_inputs([file], str(other), str(store), str(tmp_path / "o"), str(student))


def test_the_command_explains_a_folder_exits_1_for_its_failures_and_the_page_renders(
    explained_setup, tmp_path
):
    release, store, model, student = explained_setup
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in frontal_files(release)[:2]:
        shutil.copy(path, inbox / path.name)
    (inbox / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    done = run_daug(
        "explain", str(inbox), "--model", str(model), "--index", str(store),
        "--out", str(out), "--heatmap-models", str(student), "--neighbours", "3",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert (summary["explained"], summary["failed"]) == (2, 1)
    assert summary["failures"][0]["reason"] == "unknown_format"
    assert "not explained" in done.stderr and "notes.txt" in done.stderr
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs it)")
    shown = open_in_chromium(out / "index.html")
    # Per input: the image, one overlay per target and three neighbours.
    targets = len(load_clip_checkpoint(model).heatmap_targets)
    assert len(shown["widths"]) == 2 * (1 + targets + 3)
    assert all(width > 0 for _, width in shown["widths"]), shown["widths"]


def test_a_model_trained_on_another_making_of_its_heatmap_version_is_one_error(
    explained_setup, tmp_path
):
    """The store's version of the model's name was made otherwise than the one the model
    trained on (deleted and made again by other models): refused before any work."""
    release, store, model, student = explained_setup
    loaded = load_clip_checkpoint(model)
    recorded = dict(loaded.info["heatmap_provenance"])
    recorded["student_sha256"] = "0" * 64
    other = save_clip_checkpoint(
        tmp_path / "model",
        loaded.model,
        loaded.config,
        {**loaded.info, "heatmap_provenance": recorded},
    )
    file = str(next(release.rglob("*.dcm")))
    with pytest.raises(
        ConfigError, match=r"was trained on heatmap version 'student'.*student_sha256"
    ):
        explain_inputs([file], str(other), str(store), str(tmp_path / "o"), str(student))
    assert not (tmp_path / "o").exists()


def test_a_model_without_heatmap_channels_is_explained_without_heatmap_models(
    explained_setup, tmp_path
):
    release, store, _, _ = explained_setup
    config = ClipTrainSettings(heatmap_mode="none").config()
    plain = save_clip_checkpoint(tmp_path / "plain", build_model(config, (), seed=3), config, {})
    index_flow(model=str(plain), store=str(store))
    file = str(frontal_files(release)[0])
    summary = explain_inputs([file], str(plain), str(store), str(tmp_path / "o"), None)
    assert (summary["explained"], summary["failed"]) == (1, 0)
    record = json.loads(next((tmp_path / "o").glob("*/explain.json")).read_text())
    assert record["overlays"] == {} and record["provenance"]["heatmap_version"] is None
    assert len(record["neighbours"]) == 5
