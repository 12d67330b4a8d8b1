"""The `daug` command line: real subprocesses, exit codes and messages."""

import pandas as pd

from tests.factories import run_daug as daug


def test_synth_writes_a_release_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "synth"
    first = daug("synth", str(out), "--studies", "3", "--size", "48", "--format", "jpg")
    assert first.returncode == 0, first.stderr[-2000:]
    metadata = pd.read_csv(out / "release" / "mimic-cxr-2.0.0-metadata.csv")
    assert len(metadata) >= 3 and (out / "ground_truth" / "labels.csv").is_file()

    again = daug("synth", str(out), "--studies", "3", "--size", "48")
    assert again.returncode == 2
    assert "error:" in again.stderr and "exists" in again.stderr
    assert "Traceback" not in again.stderr

    replaced = daug("synth", str(out), "--studies", "2", "--size", "48", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]


def test_ingest_of_a_missing_release_is_one_clear_error(tmp_path):
    result = daug("ingest", str(tmp_path / "nowhere"), "--store", str(tmp_path / "store"))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_bad_format_option(tmp_path):
    result = daug("synth", str(tmp_path / "x"), "--format", "png")
    assert result.returncode == 2 and "dicom or jpg" in result.stderr


def test_delete_heatmaps_asks_then_deletes_only_that_version(tmp_path):
    import dataclasses

    from storage.heatmap_store import HeatmapStore
    from storage.image_store import ImageStore
    from tests.storage.test_heatmap_store import PROVENANCE

    images = ImageStore.create(tmp_path / "store", 16, shard_items=4)
    images.register(pd.DataFrame({"dicom_id": ["a", "b"], "split": ["train", "test"]}))
    HeatmapStore.create(images, PROVENANCE).mark_done([1])
    HeatmapStore.create(images, dataclasses.replace(PROVENANCE, scale=10.0), version="v2")
    store = str(tmp_path / "store")

    unknown = daug("delete-heatmaps", store, "v9", "--yes")
    assert unknown.returncode == 2 and "no heatmap version 'v9'" in unknown.stderr
    assert "v1, v2" in unknown.stderr

    declined = daug("delete-heatmaps", store, "v1", stdin="n\n")
    assert declined.returncode == 1 and "1 items done" in declined.stdout
    assert HeatmapStore.versions(ImageStore.open(store)) == ["v1", "v2"]

    deleted = daug("delete-heatmaps", store, "v1", "--yes")
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert HeatmapStore.versions(ImageStore.open(store)) == ["v2"]


def test_train_and_evaluate_refuse_bad_options_before_starting_prefect(tmp_path):
    bad_mode = daug("train", "--store", str(tmp_path), "--out", str(tmp_path / "o"), "--mode", "x")
    assert bad_mode.returncode == 2 and "--mode must be one of" in bad_mode.stderr
    no_store = daug("train", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert no_store.returncode == 2 and "error:" in no_store.stderr
    assert "Traceback" not in no_store.stderr
    no_ckpt = daug("evaluate", "--checkpoint", str(tmp_path), "--store", str(tmp_path))
    assert no_ckpt.returncode == 2 and "holds no clip.json" in no_ckpt.stderr


def test_demo_prints_the_heatmap_quality_headline_in_terminal_columns():
    from flows.cli import _modes_table, _quality_headline

    def row(pg, auroc, off=0.0):
        return {
            "n_lesion": 29,
            "n_healthy": 13,
            "pointing_game": pg,
            "pixel_auroc": auroc,
            "mass_inside": 0.18,
            "off_target_share": off,
            "healthy_energy": 0.015,
        }

    quality = {
        "scored": {"version": "v1", "targets": {"+No Finding": row(0.966, 0.953)}},
        "modes": {
            "softmax": {"targets": {"+No Finding": row(0.966, 0.953), "-Pleural": row(0.6, None)}},
            "sigmoid": {"targets": {"+No Finding": row(1.0, 0.949), "-Pleural": row(0.8, 0.94)}},
        },
    }
    headline = _quality_headline(quality).splitlines()
    assert headline[0].endswith("(29 with lesions, 13 healthy):")
    assert headline[2].split() == ["v1", "0.966", "0.953", "0.180", "0.015"]
    assert headline[4].split() == ["sigmoid", "1.000", "0.949", "0.180", "0.015"]
    modes = _modes_table(quality).splitlines()
    assert modes[3].split() == ["-Pleural", "29", "0.600/0.800", "n/a/0.940", "0.000/0.000"]
    assert max(len(line) for line in headline + modes) <= 80
    assert _modes_table({"modes": None}) == ""
