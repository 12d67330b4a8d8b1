"""Diffing a derived synthetic release against a store, and applying the diff: the diff
equals the generator's ground truth; applying it updates labels and reports in place,
retires removed items, queues pixel-changed ones (and their heatmaps) for recomputation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from daug_core.labels import CHEXPERT_LABELS, LABEL_COLUMNS
from storage.datasets.batches import EmptySelectionError
from storage.datasets.contrastive import ContrastiveDataset
from storage.release.diff import ChangeKind, diff_release, file_sha256
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.release.reports import parse_report
from storage.release.update import apply_release_diff, record_release, release_history
from storage.store.heatmaps import HeatmapStore
from storage.store.image import ImageStore
from storage.store.ingest_shards import ingest_shard, plan_ingest
from storage.store.location import Location
from storage.store.status import format_status, item_states, store_status
from storage.synthetic import SynthConfig, write_synthetic_release
from storage.synthetic.next_release import ReleaseChangeConfig, write_next_release
from tests.factories import (
    MiniItem,
    call_within,
    dicom_bytes,
    fake_heatmap_provenance,
    gradient,
    replace_with_fifo,
    write_mini_release,
)
from tests.factories import dicom_id as mimic_id

ALL_VIEWS = ReaderConfig(views=())
CHANGES = ReleaseChangeConfig(
    new_fraction=0.1,
    relabel_fraction=0.1,
    report_fraction=0.1,
    pixel_fraction=0.05,
    remove_fraction=0.05,
)


def ingest(store: ImageStore, release: Path, reader_config: ReaderConfig = ALL_VIEWS) -> int:
    """The ingest flow's work without Prefect: plan, every shard, consolidate."""
    config = IngestConfig(size=store.size, shard_items=store.shard_items, reader=reader_config)
    reader = ReleaseReader(release, reader_config)
    plan = plan_ingest(store, reader, config)
    for work in plan.shards:
        ingest_shard(store, reader, work, plan.image_format)
    store.consolidate()
    return plan.pending


def truth(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path / "ground_truth" / "changes.csv", dtype=str, keep_default_na=False)
    return table.sort_values(["kind", "dicom_id"], ignore_index=True)


def changed(diff_changes: pd.DataFrame) -> pd.DataFrame:
    rows = diff_changes[diff_changes["kind"] != ChangeKind.UNCHANGED.value]
    return rows[["dicom_id", "kind"]].sort_values(["kind", "dicom_id"], ignore_index=True)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release_diff")
    write_synthetic_release(root / "base", SynthConfig(studies=40, size=64), seed=21)
    write_next_release(root / "base", root / "next", CHANGES)
    return {"root": root, "base": root / "base", "next": root / "next"}


@pytest.fixture(scope="module")
def base_store(releases) -> Path:
    """The base release (every view) ingested at 64 px, shards of 16."""
    path = releases["root"] / "store"
    ingest(ImageStore.create(path, 64, shard_items=16), releases["base"] / "release")
    return path


@pytest.fixture()
def store(base_store, tmp_path) -> ImageStore:
    """A private copy of the base store (tests change it)."""
    shutil.copytree(base_store, tmp_path / "store")
    return ImageStore.open(tmp_path / "store")


def test_diff_of_the_ingested_release_is_all_unchanged(base_store, releases):
    store = ImageStore.open(base_store, read_only=True)
    diff = diff_release(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS))
    assert not diff.needs_work
    assert diff.counts()["unchanged"] == len(store.items()) == diff.files_hashed
    again = diff_release(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS), workers=1)
    assert again.release_id == diff.release_id


def test_a_moved_copy_of_a_release_keeps_its_id(base_store, releases, tmp_path):
    store = ImageStore.open(base_store, read_only=True)
    diff = diff_release(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS))
    shutil.copytree(releases["base"] / "release", tmp_path / "moved")
    moved = diff_release(store, ReleaseReader(tmp_path / "moved", ALL_VIEWS))
    assert moved.release_id == diff.release_id and not moved.needs_work


def test_diff_equals_the_ground_truth_changes(base_store, releases):
    store = ImageStore.open(base_store, read_only=True)
    diff = diff_release(store, ReleaseReader(releases["next"] / "release", ALL_VIEWS))
    expected = truth(releases["next"])
    pd.testing.assert_frame_equal(changed(diff.changes), expected[["dicom_id", "kind"]])
    counts = diff.counts()
    for kind in ChangeKind:
        if kind is not ChangeKind.UNCHANGED:
            assert counts[kind.value] == (expected["kind"] == kind.value).sum() > 0, kind
    assert counts["unchanged"] == len(store.items()) - sum(
        counts[k] for k in ("pixels_changed", "labels_changed", "report_changed", "removed")
    )
    base_id = diff_release(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS))
    assert diff.release_id != base_id.release_id
    new = diff.of_kind(ChangeKind.NEW)
    assert (new["index"] == -1).all()
    labels = diff.of_kind(ChangeKind.LABELS_CHANGED)
    assert labels["detail"].str.contains(" -> ").all()


def test_diff_of_a_frontal_store_sees_the_frontal_truth(releases, tmp_path):
    frontal = ReaderConfig()
    store = ImageStore.create(tmp_path / "frontal", 64, shard_items=16)
    ingest(store, releases["base"] / "release", frontal)
    diff = diff_release(store, ReleaseReader(releases["next"] / "release", frontal))
    expected = truth(releases["next"])
    expected = expected[expected["ViewPosition"].isin(frontal.views)]
    pd.testing.assert_frame_equal(
        changed(diff.changes), expected[["dicom_id", "kind"]].reset_index(drop=True)
    )


def _heatmaps(store: ImageStore) -> HeatmapStore:
    """A heatmap version with every ok item done (values: the image itself)."""
    provenance = fake_heatmap_provenance(("+No Finding",), 64)
    heat = HeatmapStore.create(store, provenance)
    done = np.flatnonzero(store.done_mask())
    heat.write_heatmaps(done, store.read_images(done)[:, None])
    heat.mark_done(done)
    return heat


def test_apply_updates_in_place_retires_and_queues_changed_pixels(store, releases):
    heat = _heatmaps(store)
    release = releases["next"] / "release"
    reader = ReleaseReader(release, ALL_VIEWS)
    diff = diff_release(store, reader)
    before = store.items().set_index("dicom_id")
    applied = apply_release_diff(store, diff)
    counts = diff.counts()
    assert applied.labels_updated == counts["labels_changed"]
    assert applied.reports_updated == counts["report_changed"]
    assert applied.retired == counts["removed"]
    assert applied.pixels_invalidated == counts["pixels_changed"]
    assert applied.heatmaps_invalidated == {"v1": counts["pixels_changed"]}

    after = ImageStore.open(store.location).items().set_index("dicom_id")
    index = reader.index().items.set_index("dicom_id")
    relabelled = diff.of_kind(ChangeKind.LABELS_CHANGED)["dicom_id"]
    np.testing.assert_array_equal(
        after.loc[relabelled, list(LABEL_COLUMNS)].to_numpy(),
        index.loc[relabelled, list(LABEL_COLUMNS)].to_numpy(),
    )
    assert not np.array_equal(
        before.loc[relabelled, list(CHEXPERT_LABELS)].to_numpy(),
        after.loc[relabelled, list(CHEXPERT_LABELS)].to_numpy(),
        equal_nan=True,
    )
    for dicom_id in diff.of_kind(ChangeKind.REPORT_CHANGED)["dicom_id"]:
        text = (release / index.loc[dicom_id, "report_path"]).read_text()
        assert after.loc[dicom_id, "impression"] == parse_report(text).impression
        assert after.loc[dicom_id, "findings"] == parse_report(text).findings
    removed = diff.of_kind(ChangeKind.REMOVED)
    assert (after.loc[removed["dicom_id"], "status"] == "retired").all()
    pixels = diff.of_kind(ChangeKind.PIXELS_CHANGED)["index"].to_numpy()
    done = store.done_mask()
    assert not done[pixels].any() and done[removed["index"]].all()
    assert not heat.done_mask()[pixels].any()
    assert heat.done_mask().sum() == len(done) - len(pixels)

    # The next ingest works on exactly the new and the pixel-changed items.
    config = IngestConfig(size=64, shard_items=16, reader=ALL_VIEWS)
    plan = plan_ingest(store, reader, config)
    planned = sorted(i.dicom_id for s in plan.shards for i in s.items)
    expected = diff.changes[diff.changes["kind"].isin(["new", "pixels_changed"])]["dicom_id"]
    assert planned == sorted(expected)
    for work in plan.shards:
        ingest_shard(store, reader, work, plan.image_format)
    store.consolidate()
    items = store.items().set_index("dicom_id")
    for dicom_id in diff.of_kind(ChangeKind.PIXELS_CHANGED)["dicom_id"]:
        sha, _ = file_sha256(Location.of(release / index.loc[dicom_id, "source_path"]))
        assert items.loc[dicom_id, "source_sha256"] == sha
    assert not diff_release(store, reader).needs_work  # the store now is the release


def test_retired_items_are_finished_and_never_used(store, releases):
    diff = diff_release(store, ReleaseReader(releases["next"] / "release", ALL_VIEWS))
    apply_release_diff(store, diff)
    retired = diff.of_kind(ChangeKind.REMOVED)["index"].to_numpy()
    assert store.finished_mask()[retired].all()
    assert (item_states(store)[retired] == "retired").all()
    used = set()
    for split in ("train", "validate", "test"):
        try:
            used |= set(ContrastiveDataset(store.location, split)._indices.tolist())
        except EmptySelectionError:  # a split without usable items
            continue
    assert used and not used & set(retired.tolist())
    # An ingest of the old release does not bring them back.
    config = IngestConfig(size=64, shard_items=16, reader=ALL_VIEWS)
    plan = plan_ingest(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS), config)
    assert not {i.index for s in plan.shards for i in s.items} & set(retired.tolist())


def test_a_retired_item_back_in_a_release_is_new_under_its_old_index(store, releases):
    next_release = ReleaseReader(releases["next"] / "release", ALL_VIEWS)
    apply_release_diff(store, diff_release(store, next_release))
    ingest(store, releases["next"] / "release")
    back = diff_release(store, ReleaseReader(releases["base"] / "release", ALL_VIEWS))
    returned = back.of_kind(ChangeKind.NEW)
    retired = store.items().query("status == 'retired'")
    assert sorted(returned["dicom_id"]) == sorted(retired["dicom_id"])
    assert sorted(returned["index"]) == sorted(retired["index"])
    applied = apply_release_diff(store, back)
    assert applied.restored == len(retired)
    ingest(store, releases["base"] / "release")
    items = store.items().set_index("dicom_id")
    assert (items.loc[retired["dicom_id"], "status"] == "ok").all()
    assert len(store) == len(items)  # no new indices for them


def test_release_history_and_status(store, releases):
    assert release_history(store) == []  # ingested by plain functions: no ingest record
    reader = ReleaseReader(releases["next"] / "release", ALL_VIEWS)
    diff = diff_release(store, reader)
    apply_release_diff(store, diff)
    entry = record_release(store, diff)
    assert entry["counts"] == diff.counts() and entry["times_seen"] == 1
    again = record_release(store, diff_release(store, reader))
    assert again["times_seen"] == 2 and again["counts"] == diff.counts()
    assert len(release_history(store)) == 1
    status = store_status(store)
    assert status.states.loc["total", "retired"] == diff.counts()["removed"]
    assert status.states.loc["total", "pending"] == diff.counts()["pixels_changed"]
    text = format_status(status)
    assert diff.release_id in text and "retired" in text and "none recorded" in text


def test_release_history_starts_from_the_ingest_records(store):
    store.record_ingest({"release": "/data/r1", "at": "2026-01-01T00:00:00", "ingested": 5})
    store.record_ingest({"release": "/data/r1", "at": "2026-01-02T00:00:00", "ingested": 1})
    history = release_history(store)
    assert len(history) == 1 and history[0]["counts"]["ingested"] == 6
    assert history[0]["release_id"] is None and history[0]["times_seen"] == 2


def test_update_items_refuses_unknown_columns_and_identity_changes(store):
    with pytest.raises(ValueError):
        store.update_items(pd.DataFrame({"index": [0], "colour": ["red"]}))
    with pytest.raises(ValueError):
        store.update_items(pd.DataFrame({"index": [0], "dicom_id": ["x"]}))


def test_diff_reads_reports_and_refuses_fifos_as_ingest_does(tmp_path):
    items = [
        MiniItem(mimic_id(n), study_id=f"5000000{n}", content=dicom_bytes(gradient(top=900 + n)))
        for n in range(2)
    ]
    release = write_mini_release(tmp_path / "release", items)
    # A cp1252 report: ingest and diff must read the same text, or it would differ forever.
    report = release / "files" / "p10" / "p10000032" / "s50000000.txt"
    report.write_bytes("FINDINGS: Épanchement — minime.\nIMPRESSION: Rien.\n".encode("cp1252"))
    store = ImageStore.create(tmp_path / "store", 16, shard_items=4)
    ingest(store, release)
    assert store.items()["findings"].tolist()[0] == "Épanchement — minime."
    assert not diff_release(store, ReleaseReader(release, ALL_VIEWS)).needs_work

    index = ReleaseReader(release, ALL_VIEWS).index().items.set_index("dicom_id")
    fifo = replace_with_fifo(release / index.loc[mimic_id(1), "source_path"])
    assert call_within(10, lambda: file_sha256(Location.of(fifo))) == ("", 0)
    diff = call_within(60, lambda: diff_release(store, ReleaseReader(release, ALL_VIEWS)))
    assert diff.of_kind(ChangeKind.PIXELS_CHANGED)["dicom_id"].tolist() == [mimic_id(1)]
