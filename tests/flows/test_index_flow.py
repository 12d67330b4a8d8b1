"""The index flow and search on a tiny trained contrastive model: the index holds evaluation's
embeddings, a killed run resumes with only what is not done, an item finds itself, a report
finds its image."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from daug_core.checkpoints.contrastive import load_clip_checkpoint
from daug_core.compute import cpu_fp32
from daug_core.contrastive.presets import ClipTrainSettings
from daug_core.labels import CHEXPERT_LABELS
from flows.evaluate import embed_split
from flows.index import build_index, index_flow, load_indexed_model, search
from flows.runtime.contrastive import train_contrastive
from storage.release.reader import SPLITS
from storage.release.reports import ReportSections
from storage.store.embedding_index import EmbeddingIndex, NoIndexError
from storage.store.image import ImageStore
from tests.factories import run_daug

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
BLOCK = 16


@pytest.fixture(scope="module")
def trained(contrastive_store, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("index") / "run"
    config = ClipTrainSettings(heatmap_mode="channel", epochs=2, batch_size=8).config()
    train_contrastive(contrastive_store, out, config)
    return out / "best"


@pytest.fixture(scope="module")
def indexed(contrastive_store, trained, tmp_path_factory):
    """A copy of the store, indexed by a run killed after its first block and a rerun."""
    store = tmp_path_factory.mktemp("indexed") / "store"
    shutil.copytree(contrastive_store, store)
    model = load_indexed_model(str(trained), cpu_fp32())
    original = EmbeddingIndex.write
    calls = []

    def write_then_die(self, rows, image, text):
        if calls:
            raise KeyboardInterrupt("killed between blocks")
        calls.append(len(rows))
        original(self, rows, image, text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EmbeddingIndex, "write", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            build_index(model, str(store), batch_size=8, chunk_rows=BLOCK)
    assert calls == [BLOCK]
    partial = EmbeddingIndex.open(store, model.sha256)
    assert int(partial.done_mask().sum()) == BLOCK and not partial.is_complete()
    summary = index_flow(model=str(trained), store=str(store), batch_size=8)
    return store, summary


def test_a_rerun_embeds_only_the_rows_not_done(indexed, trained):
    store, summary = indexed
    assert summary["complete"] and summary["computed"] == summary["rows"] - BLOCK
    again = index_flow(model=str(trained), store=str(store), batch_size=8)
    assert again["computed"] == 0 and again["rows"] == summary["rows"]
    assert summary["heatmap_version"] == "v1" and summary["dim"] == 128
    assert summary["index"].endswith(f"/index/{summary['model_sha256'][:16]}")
    assert summary["excluded"]["no_heatmap"] == 1  # the conftest's item without heatmaps


def test_index_holds_the_embeddings_evaluation_computes(indexed, trained):
    store, summary = indexed
    loaded = load_clip_checkpoint(trained)
    evaluated = embed_split(loaded, store, list(SPLITS), "v1")
    index = EmbeddingIndex.open(store, summary["model_sha256"])
    items = index.items()
    assert items["index"].tolist() == evaluated.indices.tolist()
    assert items["dicom_id"].tolist() == evaluated.dicom_ids
    rows = np.arange(len(index))
    np.testing.assert_allclose(index.read(rows), evaluated.embedded.image, atol=2e-3)
    np.testing.assert_allclose(index.read(rows, "text"), evaluated.embedded.text, atol=2e-3)
    split_of = ImageStore.open(store).items().set_index("index")["split"]
    assert items["split"].tolist() == split_of.loc[items["index"]].tolist()


def test_an_items_own_image_is_its_top_neighbour(indexed):
    store, summary = indexed
    index = EmbeddingIndex.open(store, summary["model_sha256"])
    rows = np.arange(len(index))
    found = index.top_k(index.read(rows), 1)
    assert (found.rows[:, 0] == rows).all()
    np.testing.assert_allclose(found.similarity[:, 0], 1.0, atol=2e-3)


def test_search_with_an_items_report_finds_it(indexed, trained, tmp_path):
    """Search ranks the images as evaluation's own embeddings do (report→image by brute force
    over ``embed_split``); the item whose report ranks its study best there (a model trained
    for two epochs on 60 studies puts most studies lower) is found by search in its top-k."""
    store, summary = indexed
    index = EmbeddingIndex.open(store, summary["model_sha256"])
    evaluated = embed_split(load_clip_checkpoint(trained), store, list(SPLITS), "v1")
    studies = np.asarray(evaluated.study_ids)
    sims = evaluated.embedded.text @ evaluated.embedded.image.T
    order = np.argsort(-sims, axis=1, kind="stable")
    ranks = np.array(
        [np.flatnonzero(studies[o] == s)[0] for o, s in zip(order, studies, strict=True)]
    )
    row = int(np.argmin(ranks))
    item = ImageStore.open(store).items().set_index("index").loc[int(evaluated.indices[row])]
    report = ReportSections(item["findings"], item["impression"], "").text
    result = search(report, str(trained), str(store), k=10, out=str(tmp_path))
    hits = result["hits"]
    assert [h["row"] for h in hits][: ranks[row] + 1] == order[row, : ranks[row] + 1].tolist()
    np.testing.assert_allclose(
        [h["similarity"] for h in hits], sims[row, order[row, :10]], atol=5e-3
    )
    hit = hits[int(ranks[row])]
    assert hit["study_id"] == item["study_id"] and hit["report"] == report
    assert hit["labels"] == [c for c in CHEXPERT_LABELS if item[c] == 1.0]
    # The free text is encoded as the index encoded the item's report.
    expected = index.top_k(index.read([row], "text"), 10)
    assert [h["row"] for h in hits] == expected.rows[0].tolist()
    on_disk = json.loads((tmp_path / "search.json").read_text())
    assert on_disk["hits"] == hits and on_disk["query"] == report
    assert result["index_complete"] and result["direction"] == "report_to_image"


def test_search_without_an_index_of_the_model_is_a_clear_error(contrastive_store, trained):
    with pytest.raises(NoIndexError, match="no embedding index of model"):
        search("pleural effusion", str(trained), str(contrastive_store))


def test_search_command_prints_json_and_a_table(indexed, trained):
    store, _ = indexed
    run = run_daug(
        "search", "pleural effusion", "--model", str(trained), "--index", str(store), "-k", "3"
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert len(result["hits"]) == 3 and result["query"] == "pleural effusion"
    assert "nearest images" in run.stderr and result["hits"][0]["dicom_id"] in run.stderr
