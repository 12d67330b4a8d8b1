"""EmbeddingIndex: exact top-k against brute force, resumable writes, provenance checks, hits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.errors import StoreFormatError
from storage.store import embedding_index
from storage.store.embedding_index import (
    EmbeddingIndex,
    IndexMismatchError,
    NoIndexError,
    StaleIndexError,
    index_key,
    neighbours,
)
from storage.store.image import ImageStore

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
N, D = 203, 16


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    """A store of N registered items with labels and report text (no pixels needed)."""
    images = ImageStore.create(tmp_path / "store", size=8, shard_items=16)
    images.register(
        pd.DataFrame(
            {
                "dicom_id": [f"d{i}" for i in range(N)],
                "study_id": [f"s{i // 2}" for i in range(N)],
                "split": ["train", "validate", "test"] * (N // 3) + ["train"] * (N % 3),
                "findings": [f"finding {i}." for i in range(N)],
                "impression": [f"impression {i}." if i % 2 else "" for i in range(N)],
                "Pleural Effusion": [1.0 if i % 3 == 0 else 0.0 for i in range(N)],
                "Pneumothorax": [-1.0 if i % 4 == 0 else np.nan for i in range(N)],
                "No Finding": [1.0 if i % 5 == 0 else np.nan for i in range(N)],
            }
        )
    )
    return ImageStore.open(tmp_path / "store")


def items_table(store: ImageStore, drop: int = 7) -> pd.DataFrame:
    """Every item but one (an item without heatmaps, say), in store order."""
    items = store.items()
    return items.loc[items["index"] != drop, ["index", "dicom_id", "study_id", "split"]]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def filled(store: ImageStore, chunk_rows: int = 32) -> tuple[EmbeddingIndex, np.ndarray]:
    index = EmbeddingIndex.create_or_open(
        store, SHA, "v1", D, items_table(store), chunk_rows=chunk_rows
    )
    rng = np.random.default_rng(0)
    image, text = unit(rng, len(index)), unit(rng, len(index))
    index.write(np.arange(len(index)), image, text)
    return index, image


def brute_force(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    stored = database.astype(np.float16).astype(np.float32)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ stored.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "from-store"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 32, 64, 100, 1000, 65536])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_equals_brute_force_for_every_block_size(
    store, chunk_rows, k, in_memory, monkeypatch
):
    if not in_memory:
        monkeypatch.setattr(embedding_index, "CACHE_BYTES", 0)
    index, image = filled(store, chunk_rows=7)  # search blocks: multiples of 7 rows
    queries = np.random.default_rng(1).standard_normal((9, D)).astype(np.float32)
    found = index.top_k(queries, k, chunk_rows=chunk_rows)
    sims, rows = brute_force(image, queries, k)
    assert found.similarity.shape == found.rows.shape == (9, k)
    assert found.similarity.dtype == np.float32 and found.rows.dtype == np.int64
    np.testing.assert_allclose(found.similarity, sims, atol=1e-5)
    # Rows agree except between near-equal similarities (float summation order).
    differ = found.rows != rows
    assert np.all(np.abs(found.similarity[differ] - sims[differ]) < 1e-5)
    assert differ.mean() < 0.05
    assert np.all(np.diff(found.similarity, axis=1) <= 0)


def test_top_k_searches_the_text_space_and_leaves_excluded_rows_out(store):
    index, _ = filled(store)
    text = index.read(np.arange(len(index)), "text")
    found = index.top_k(text[[3, 50]], 3, space="text")
    assert list(found.rows[:, 0]) == [3, 50]  # a text row is its own best match
    np.testing.assert_allclose(found.similarity[:, 0], 1.0, atol=1e-3)
    without = index.top_k(text[[3, 50]], 3, space="text", exclude=[3, 50])
    assert not np.isin(without.rows, [3, 50]).any()
    with pytest.raises(ValueError, match="space must be one of"):
        index.top_k(text[:1], 3, space="report")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"queries must be \(Q, 16\)"):
        index.top_k(np.ones((1, 3)), 3)


def test_top_k_reads_only_done_rows_and_caps_k(store):
    index = EmbeddingIndex.create_or_open(store, SHA, "v1", D, items_table(store), chunk_rows=32)
    rng = np.random.default_rng(2)
    rows = np.array([5, 40, 41, 150])
    image = unit(rng, len(rows))
    index.write(rows, image, unit(rng, len(rows)))
    found = index.top_k(image, 10)
    assert found.rows.shape == (4, 4) and set(found.rows.ravel()) == set(rows)
    assert list(found.rows[:, 0]) == list(rows)
    empty = index.top_k(image, 10, exclude=rows)
    assert empty.rows.shape == (4, 0)
    # Rows written after a search are searched next time (the in-memory copy is dropped).
    more = unit(rng, 1)
    index.write([77], more, unit(rng, 1))
    assert index.top_k(more, 1).rows[0, 0] == 77
    assert index.top_k(more, 10).rows.shape == (1, 5)


def test_a_rerun_computes_only_the_rows_not_done(store):
    """A run killed after its first blocks: reopened, only the rest is pending; finishing it
    gives what one uninterrupted run gives."""
    table = items_table(store)
    rng = np.random.default_rng(3)
    image, text = unit(rng, len(table)), unit(rng, len(table))
    first = EmbeddingIndex.create_or_open(store, SHA, "v1", D, table, chunk_rows=32)
    assert len(first) == len(table) and list(first.pending_rows()) == list(range(len(table)))
    first.write(np.arange(0, 64), image[:64], text[:64])
    first.write(np.arange(96, 128), image[96:128], text[96:128])
    # ... killed here: rows 64..95 and 128.. are not done.
    again = EmbeddingIndex.create_or_open(ImageStore.open(store.root), SHA, "v1", D, table)
    pending = again.pending_rows()
    assert list(pending) == [*range(64, 96), *range(128, len(table))]
    assert not again.is_complete()
    again.write(pending, image[pending], text[pending])
    assert again.is_complete() and len(again.pending_rows()) == 0
    np.testing.assert_allclose(again.read(np.arange(len(table))), image, atol=1e-3)
    np.testing.assert_allclose(again.read(np.arange(len(table)), "text"), text, atol=1e-3)
    opened = EmbeddingIndex.open(store.root, SHA)  # by path, read-only, like a reader
    assert (
        opened.is_complete() and opened.items()["dicom_id"].tolist() == table["dicom_id"].tolist()
    )
    assert opened.provenance.store_items == N and opened.dim == D
    assert opened.location.endswith(f"/index/{index_key(SHA)}")


def test_write_normalises_and_refuses_bad_rows(store):
    index = EmbeddingIndex.create_or_open(store, SHA, "v1", D, items_table(store))
    index.write([2, 0], np.full((2, D), 3.0), np.full((2, D), -1.0))
    np.testing.assert_allclose(np.linalg.norm(index.read([0, 2]), axis=1), 1.0, atol=1e-3)
    assert list(np.flatnonzero(index.done_mask())) == [0, 2]
    with pytest.raises(ValueError, match="distinct rows"):
        index.write([1, 1], np.ones((2, D)), np.ones((2, D)))
    with pytest.raises(ValueError, match="distinct rows"):
        index.write([len(index)], np.ones((1, D)), np.ones((1, D)))
    with pytest.raises(ValueError, match="not finite or zero"):
        index.write([1], np.zeros((1, D)), np.ones((1, D)))
    with pytest.raises(ValueError, match=r"image must be \(1, 16\)"):
        index.write([1], np.ones((1, 3)), np.ones((1, D)))
    assert list(np.flatnonzero(index.done_mask())) == [0, 2]


def test_another_heatmap_version_or_dim_is_a_clear_error(store):
    table = items_table(store)
    EmbeddingIndex.create_or_open(store, SHA, "v1", D, table)
    with pytest.raises(IndexMismatchError, match=r"heatmap_version: 'v1' -> 'v2'"):
        EmbeddingIndex.create_or_open(store, SHA, "v2", D, table)
    with pytest.raises(IndexMismatchError, match=r"dim: 16 -> 32"):
        EmbeddingIndex.create_or_open(store, SHA, "v1", 32, table)
    with pytest.raises(StaleIndexError, match="the store changed since"):
        EmbeddingIndex.create_or_open(store, SHA, "v1", D, items_table(store, drop=8))


def test_an_index_of_another_model_is_a_clear_error_naming_the_indexed_ones(store):
    with pytest.raises(NoIndexError, match="indexed models: none"):
        EmbeddingIndex.open(store, SHA)
    EmbeddingIndex.create_or_open(store, SHA, None, D, items_table(store))
    with pytest.raises(
        NoIndexError, match=rf"no embedding index of model cdcd.*\['{index_key(SHA)}'\]"
    ):
        EmbeddingIndex.open(store, OTHER_SHA)
    assert EmbeddingIndex.models(store) == [index_key(SHA)]
    EmbeddingIndex.delete(store, SHA)
    assert EmbeddingIndex.models(store) == []
    with pytest.raises(ValueError, match="not a sha256"):
        index_key("not-hex")


def test_a_creation_cut_short_is_no_index_and_is_made_again(store):
    group = store.group.require_group("index").create_group(index_key(SHA))
    group.create_array("image", shape=(3, D), dtype="float16")  # no attributes yet
    with pytest.raises(NoIndexError):
        EmbeddingIndex.open(store, SHA)
    index = EmbeddingIndex.create_or_open(store, SHA, "v1", D, items_table(store))
    assert len(index) == N - 1 and not index.done_mask().any()


def test_a_damaged_items_table_is_a_store_format_error(store):
    EmbeddingIndex.create_or_open(store, SHA, "v1", D, items_table(store))
    store.tables.write(f"index/{index_key(SHA)}/items", items_table(store).head(3))
    with pytest.raises(StoreFormatError, match=r"items\.csv has 3 rows, the arrays 202"):
        EmbeddingIndex.open(store, SHA)


def test_neighbours_carry_ids_labels_and_report_text(store):
    index, image = filled(store)
    found = index.top_k(image[[0, 9]], 3)
    hits = neighbours(index, store, found.similarity[1], found.rows[1])
    assert [h["row"] for h in hits] == list(found.rows[1])
    first = hits[0]
    # Row 9 is store item 10 (item 7 is not indexed).
    assert first["index"] == 10 and first["dicom_id"] == "d10" and first["study_id"] == "s5"
    assert first["split"] == "validate"
    assert first["labels"] == ["No Finding"]  # 1.0 only; uncertain (-1) and blank are not
    assert first["report"] == "finding 10."
    assert first["similarity"] == pytest.approx(float(found.similarity[1, 0]))
    row0 = neighbours(index, None, found.similarity[0], found.rows[0])[0]
    assert row0["labels"] == ["No Finding", "Pleural Effusion"]
    assert row0["report"] == "finding 0."
    odd = neighbours(index, None, np.array([0.5]), np.array([1]))[0]
    assert odd["report"] == "finding 1. impression 1." and odd["labels"] == []
    with pytest.raises(ValueError, match="differ in shape"):
        neighbours(index, None, found.similarity[0], found.rows[0][:1])
