"""Ingest as plain functions: the bad-input matrix, resume after a crash, no PHI leakage."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from daug_core.labels import UncertaintyPolicy
from storage.errors import StoreFormatError
from storage.release.ingest_config import IngestConfig, ReaderConfig
from storage.release.reader import ReleaseReader
from storage.store.image import ImageStore
from storage.store.ingest_shards import ingest_shard, plan_ingest
from tests.factories import (
    BAD,
    MiniItem,
    bad_release,
    call_within,
    dicom_bytes,
    dicom_id,
    good,
    gradient,
    subject,
    write_mini_release,
)

SIZE = 16


def run_all(store: ImageStore, reader: ReleaseReader, config: IngestConfig) -> None:
    plan = plan_ingest(store, reader, config)
    for work in plan.shards:
        ingest_shard(store, reader, work, plan.image_format, config.fit)
    store.consolidate()


def test_bad_input_goes_to_quarantine_and_good_items_survive(tmp_path):
    reader = ReleaseReader(bad_release(tmp_path / "release"))
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    # Within a time limit: opening the FIFO would wait for a writer forever.
    call_within(60, lambda: run_all(store, reader, IngestConfig(size=SIZE, shard_items=4)))

    quarantine = store.quarantine()
    reasons = dict(
        zip(quarantine["dicom_id"], quarantine["reason"].str.split(":").str[0], strict=False)
    )
    for k, reason in enumerate(BAD):
        assert reasons[dicom_id(100 + k)] == reason
    assert reasons[dicom_id(200)] == "missing_file"
    assert reasons[dicom_id(3)] == "duplicate_dicom_id"
    assert reasons["../../../../../escape"] == "path_escapes_root"
    assert len(quarantine) == len(BAD) + 3
    assert all(": " in r for r in quarantine["reason"])  # every reason says why

    items = store.items().set_index("dicom_id")
    ok = items[items["status"] == "ok"]
    assert sorted(ok.index) == sorted([dicom_id(n) for n in (0, 1, 2, 4, 5, 201)])
    assert not set(ok.index) & set(quarantine["dicom_id"])  # never both ingested and refused
    assert items.loc[dicom_id(201), "report_missing"]
    assert items.loc[dicom_id(0), "findings"] == "Normal heart."
    assert len(items.loc[dicom_id(0), "source_sha256"]) == 64
    done = store.done_mask()
    assert done[ok["index"].to_numpy()].all() and done.sum() == len(ok)
    pixels = store.read_images(ok["index"].to_numpy())
    assert np.isfinite(pixels).all() and pixels.max() == pytest.approx(1.0, abs=1e-3)


def test_rerun_is_idempotent_and_skips_finished_work(tmp_path):
    reader = ReleaseReader(bad_release(tmp_path / "release"))
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    config = IngestConfig(size=SIZE, shard_items=4)
    run_all(store, reader, config)
    before = (store.items(), store.quarantine(), store.read_images(range(len(store))))
    again = plan_ingest(store, reader, config)
    assert again.pending == 0 and again.counts["already_finished"] == len(store)
    retry = plan_ingest(
        store, reader, IngestConfig(size=SIZE, shard_items=4, retry_quarantined=True)
    )
    assert retry.pending == len(BAD) + 1  # decode-time failures only
    for work in retry.shards:
        ingest_shard(store, reader, work, retry.image_format)
    store.consolidate()
    pd.testing.assert_frame_equal(store.items(), before[0])
    pd.testing.assert_frame_equal(store.quarantine(), before[1])
    np.testing.assert_array_equal(store.read_images(range(len(store))), before[2])


def test_crash_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    release = bad_release(tmp_path / "release")
    config = IngestConfig(size=SIZE, shard_items=4)
    reference = ImageStore.create(tmp_path / "reference", SIZE, shard_items=4)
    run_all(reference, ReleaseReader(release), config)

    reader = ReleaseReader(release)
    store = ImageStore.create(tmp_path / "crashed", SIZE, shard_items=4)
    plan = plan_ingest(store, reader, config)
    first, second, *_ = plan.shards
    ingest_shard(store, reader, first, plan.image_format)  # finished, not consolidated
    # Crash inside the second shard: pixels written, neither part table nor done flags.
    half = second.items[: len(second.items) // 2]
    store.write_images([i.index for i in half], np.full((len(half), SIZE, SIZE), 0.5))

    resumed = ImageStore.open(tmp_path / "crashed")
    plan2 = plan_ingest(resumed, reader, config)
    assert plan2.counts["already_finished"] == len(first.items)
    for work in plan2.shards:
        ingest_shard(resumed, reader, work, plan2.image_format)
    resumed.consolidate()
    pd.testing.assert_frame_equal(resumed.items(), reference.items())
    pd.testing.assert_frame_equal(resumed.quarantine(), reference.quarantine())
    np.testing.assert_array_equal(
        resumed.read_images(range(len(resumed))), reference.read_images(range(len(reference)))
    )
    np.testing.assert_array_equal(resumed.done_mask(), reference.done_mask())


def test_new_release_appends_without_moving_old_items(tmp_path):
    config = IngestConfig(size=SIZE, shard_items=4)
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    run_all(store, ReleaseReader(write_mini_release(tmp_path / "r1", [good(0), good(1)])), config)
    old = store.items()[["index", "dicom_id"]]
    release2 = write_mini_release(tmp_path / "r2", [good(2), good(0), good(1), good(5)])
    run_all(store, ReleaseReader(release2), config)
    items = store.items()
    pd.testing.assert_frame_equal(items[["index", "dicom_id"]].iloc[:2], old)
    assert items["dicom_id"].tolist()[2:] == [dicom_id(2), dicom_id(5)]
    assert (items["status"] == "ok").all() and store.done_mask().all()


def test_no_dicom_header_field_reaches_the_store(tmp_path):
    reader = ReleaseReader(bad_release(tmp_path / "release"))
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    run_all(store, reader, IngestConfig(size=SIZE, shard_items=4))
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (b"Doe^Jane", b"SECRET-123", b"19700101", b"Doe"):
                assert secret not in data, f"{secret!r} leaked into {path}"


def test_the_decode_budget_travels_from_the_config_to_the_readers(tmp_path):
    small = MiniItem(dicom_id(1), **subject(1), content=dicom_bytes(gradient(16, 16)))  # 512 B
    large = MiniItem(dicom_id(2), **subject(2), content=dicom_bytes(gradient()))  # 2,560 B
    release = write_mini_release(tmp_path / "release", [small, large])
    reader_config = ReaderConfig(max_decoded_mb=1024 / (1 << 20))
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    run_all(store, ReleaseReader(release, reader_config), IngestConfig(size=SIZE, shard_items=4))
    items = store.items().set_index("dicom_id")
    assert items.loc[dicom_id(1), "status"] == "ok"
    assert items.loc[dicom_id(2), "reason"].startswith("image_too_large: 40x32 ")


def test_the_summary_counts_positives_per_super_class_overall_and_per_split(tmp_path):
    from storage.store.ingest_shards import summarise_store

    items = [good(n) for n in range(4)]
    edema = {"Edema": 1.0, "Cardiomegaly": 0.0}
    items.append(MiniItem(dicom_id(9), **subject(9), labels=edema, content=good(9).content))
    root = write_mini_release(tmp_path / "release", items)
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    run_all(store, ReleaseReader(root), IngestConfig(size=SIZE, shard_items=4))
    summary = summarise_store(store)
    counts = {(g, v): n for g, v, n in summary.itertuples(index=False)}
    assert counts[("positive", "super_cardiomediastinal")] == 4
    assert counts[("positive", "super_parenchymal")] == 1
    splits = dict(zip(store.items()["dicom_id"], store.items()["split"], strict=True))
    for column in ("super_cardiomediastinal", "super_parenchymal"):
        per_split = [
            n for (g, v), n in counts.items() if g.startswith("positive, ") and v == column
        ]
        assert sum(per_split) == counts[("positive", column)]
    assert {g for g, _ in counts if g.startswith("positive, ")} == {
        f"positive, {s}" for s in set(splits.values())
    }


def test_one_store_holds_one_label_policy(tmp_path):
    release = write_mini_release(tmp_path / "r1", [good(0), good(1)])
    store = ImageStore.create(tmp_path / "store", SIZE, shard_items=4)
    config = IngestConfig(size=SIZE, shard_items=4)
    run_all(store, ReleaseReader(release), config)
    items = store.items()
    other = IngestConfig(
        size=SIZE,
        shard_items=4,
        reader=ReaderConfig(views=(), uncertainty=UncertaintyPolicy.U_ONES),
    )
    with pytest.raises(StoreFormatError) as refused:
        plan_ingest(store, ReleaseReader(release, other.reader), other)
    assert str(refused.value) == (
        f"{store.location} holds items ingested with uncertainty 'u-zeros', views "
        "['PA', 'AP', 'AP AXIAL']; this ingest asks for uncertainty 'u-ones', views []. One "
        "store holds one label policy: ingest into a new store, or pass the store's settings"
    )
    pd.testing.assert_frame_equal(store.items(), items)  # nothing registered
    # The same settings again (a new release, a retry) are fine.
    again = dataclasses.replace(config, retry_quarantined=True)
    assert plan_ingest(store, ReleaseReader(release), again).pending == 0
