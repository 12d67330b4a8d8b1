"""Index flow and search: a trained contrastive model's embeddings of every usable item of a
store (``STORE/index/<model sha256[:16]>/``, storage/store/embedding_index.py) and free-text
report→image retrieval over them.

``index_flow`` embeds what evaluation embeds: every usable item of every split (finished
image, heatmaps of the model's heatmap version done, labels and a report), through the same
:class:`~storage.datasets.contrastive.ContrastiveDataset` and
:func:`~daug_core.contrastive.training.embed`, so an item's index row equals its
``flows.evaluate.embed_split`` embedding (to float16). It runs in-process, one block of the
index's chunk rows at a time: a block's rows are written and then marked done, so a killed run
resumes with the rows not done. It holds the store's lease while it writes.

``search`` encodes a query with the model's own tokenizer and text tower and returns the
nearest images (exact cosine top-k over the index; why exact suffices at MIMIC-CXR's size:
the module docstring of storage/store/embedding_index.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prefect import flow, get_run_logger
from torch.utils.data import DataLoader, Subset

from daug_core.checkpoints.contrastive import ClipCheckpoint, load_clip_checkpoint
from daug_core.checkpoints.layout import checkpoint_sha256
from daug_core.compute import Compute, ComputeSettings, cpu_fp32
from daug_core.contrastive.losses import HybridContrastiveLoss
from daug_core.contrastive.model import build_tokenizer
from daug_core.contrastive.training import Embedded, PromptTokens, embed
from flows.reports import explain as pages
from flows.reports.artifacts import ProgressReporter, artifact_key, run_namer
from flows.reports.files import RunFolder, write_json
from flows.runtime.contrastive import clip_batches, prompt_tokens
from storage.datasets.contrastive import ContrastiveDataset
from storage.release.reader import SPLITS
from storage.store.embedding_index import (
    DEFAULT_CHUNK_ROWS,
    EmbeddingIndex,
    StaleIndexError,
    index_key,
    neighbours,
)
from storage.store.image import ImageStore
from storage.store.lease import StoreLease
from storage.store.location import Location

log = logging.getLogger(__name__)
SEARCH_JSON = "search.json"


@dataclass(frozen=True)
class IndexedModel:
    """A contrastive checkpoint loaded for indexing or search: the model, its weights' sha256
    (the index's key) and the heatmap version it was trained on (None without heatmaps)."""

    loaded: ClipCheckpoint
    sha256: str
    heatmap_version: str | None
    url: str


def load_indexed_model(model: str, compute: Compute) -> IndexedModel:
    """The checkpoint folder ``model`` (a path or URL; a URL is read from a local copy), on
    ``compute``'s device."""
    folder = RunFolder(Location.of(model))
    folder.pull()
    loaded = load_clip_checkpoint(folder.local)
    loaded.model.to(compute.device)
    version = loaded.info.get("heatmap_version") if loaded.heatmap_targets else None
    return IndexedModel(
        loaded=loaded,
        sha256=checkpoint_sha256(folder.local),
        heatmap_version=None if version is None else str(version),
        url=Location.of(model).url,
    )


def index_dataset(model: IndexedModel, store: str) -> ContrastiveDataset:
    """Every usable item of every split, as ``flows.evaluate.embed_split`` reads a split."""
    targets = list(model.loaded.heatmap_targets) or None
    return ContrastiveDataset(
        store,
        SPLITS,
        heatmap_version=model.heatmap_version if targets else None,
        heatmap_targets=targets,
        missing_heatmaps="exclude",
        augment=None,
        text_transform=build_tokenizer(model.loaded.config.model),
    )


def embed_positions(
    model: IndexedModel,
    dataset: ContrastiveDataset,
    positions: Sequence[int],
    prompts: PromptTokens,
    batch_size: int,
    compute: Compute,
) -> Embedded:
    """Image and report embeddings of the dataset's items at ``positions``, in that order."""
    loader = DataLoader(Subset(dataset, list(positions)), batch_size=batch_size, shuffle=False)
    loss = HybridContrastiveLoss(model.loaded.config.loss)
    return embed(model.loaded.model, loss, clip_batches(loader), prompts, compute=compute)


def build_index(
    model: IndexedModel,
    store: str,
    batch_size: int = 64,
    compute: Compute | None = None,
    lease: StoreLease | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: ProgressReporter | None = None,
) -> dict[str, Any]:
    """Embed the store's pending index rows, a block of ``chunk_rows`` rows at a time (each
    written, then marked done; ``lease.check()`` before each commit). An index of an earlier
    state of the store (other usable items) is made again. Returns the run's summary."""
    started = time.perf_counter()
    compute = compute or cpu_fp32()
    dataset = index_dataset(model, store)
    image_store = ImageStore.open(store)
    table = image_store.items().set_index("index").loc[dataset.indices]
    table = table.reset_index()[["index", "dicom_id", "study_id", "split"]]
    dim = model.loaded.model.embed_dim
    arguments = (model.sha256, model.heatmap_version, dim, table, chunk_rows)
    try:
        index = EmbeddingIndex.create_or_open(image_store, *arguments)
    except StaleIndexError as exc:
        log.warning("%s; making it again", exc)
        EmbeddingIndex.delete(image_store, model.sha256)
        index = EmbeddingIndex.create_or_open(image_store, *arguments)
    pending = index.pending_rows()
    log.info(
        "index %s: %d rows, %d to embed (excluded from the store: %s)",
        index.location,
        len(index),
        len(pending),
        dataset.excluded.as_dict(),
    )
    prompts = prompt_tokens(model.loaded.config)
    for block in np.unique(pending // index.chunk_rows):
        rows = pending[pending // index.chunk_rows == block]
        embedded = embed_positions(model, dataset, rows.tolist(), prompts, batch_size, compute)
        if lease is not None:
            lease.check()  # fencing: a run that lost the store's lease does not commit
        index.write(rows, embedded.image, embedded.text)
        if progress is not None:
            progress.advance(len(rows))
    return {
        "index": index.location,
        "model": model.url,
        "model_sha256": model.sha256,
        "heatmap_version": model.heatmap_version,
        "store": image_store.location,
        "rows": len(index),
        "computed": len(pending),
        "dim": dim,
        "complete": index.is_complete(),
        "excluded": dataset.excluded.as_dict(),
        "seconds": round(time.perf_counter() - started, 2),
    }


@flow(name="index", flow_run_name=run_namer("index", "store"))
def index_flow(
    model: str,
    store: str,
    batch_size: int = 64,
    compute: ComputeSettings = ComputeSettings(),
) -> dict[str, Any]:
    """Embed every usable item of STORE with a trained contrastive model into
    ``STORE/index/<model sha256[:16]>/`` (image and report embeddings, float16): what
    ``daug search`` and ``daug explain`` search. Resumable: a rerun embeds only rows not done.
    The run holds the store's lease while it writes.

    Args:
        model: checkpoint folder written by the train flow (``OUT/best``).
        store: the image store the model was trained on (with its heatmap version).
        batch_size: images per forward pass.
        compute: device (auto: CUDA when present) and precision of the forward passes.
    """
    logger = get_run_logger()
    amp = compute.resolve()
    indexed = load_indexed_model(model, amp)
    key = index_key(indexed.sha256)
    with StoreLease(store, owner=f"index:{key}") as lease:
        pending = _pending_estimate(store, indexed.sha256)
        progress = ProgressReporter(
            f"{artifact_key('index', Location.of(store).name, key)}-progress",
            pending,
            "items embedded",
        )
        summary = build_index(
            indexed, store, batch_size, amp, lease if lease.held else None, progress=progress
        )
    summary["compute"] = amp.record()
    logger.info(
        "index %s: %d rows (%d embedded now) in %.1f s",
        summary["index"],
        summary["rows"],
        summary["computed"],
        summary["seconds"],
    )
    return summary


def _pending_estimate(store: str, model_sha256: str) -> int:
    """Rows the run will embed, for its progress bar: the pending rows of an existing index,
    else the store's usable items."""
    image_store = ImageStore.open(store, read_only=True)
    if index_key(model_sha256) in EmbeddingIndex.models(image_store):
        return len(EmbeddingIndex(image_store, model_sha256).pending_rows())
    return int(image_store.usable_mask().sum())


@torch.no_grad()
def encode_texts(model: IndexedModel, texts: Sequence[str], compute: Compute) -> np.ndarray:
    """L2-normalised (N, D) float32 embeddings of free texts: the model's tokenizer and text
    tower, as its reports are embedded."""
    tokens = build_tokenizer(model.loaded.config.model)(list(texts))
    model.loaded.model.eval()
    with compute.autocast():
        text = model.loaded.model.encode_text(tokens.to(compute.device))
    result: np.ndarray = text.float().cpu().numpy()
    return result


def search(
    query: str,
    model: str,
    index: str,
    k: int = 10,
    out: str | None = None,
    compute: Compute | None = None,
) -> dict[str, Any]:
    """Report→image retrieval with free text: the ``k`` items of the index of ``model`` in
    store ``index`` whose image embeddings are nearest to the query's text embedding, with
    their ids, similarity, labels and report text (:func:`neighbours`). With ``out``, also
    written to ``OUT/search.json``."""
    if not query.strip():
        raise ValueError("the search text is empty")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    started = time.perf_counter()
    compute = compute or cpu_fp32()
    indexed = load_indexed_model(model, compute)
    image_store = ImageStore.open(index, read_only=True)
    embeddings = EmbeddingIndex.open(image_store, indexed.sha256)
    if not embeddings.is_complete():
        log.warning(
            "the index %s is incomplete (%d of %d rows pending): run daug index again",
            embeddings.location,
            len(embeddings.pending_rows()),
            len(embeddings),
        )
    query_embedding = encode_texts(indexed, [query], compute)
    found = embeddings.top_k(query_embedding, k, space="image")
    hits = neighbours(embeddings, image_store, found.similarity[0], found.rows[0])
    result: dict[str, Any] = {
        "query": query,
        "model": indexed.url,
        "model_sha256": indexed.sha256,
        "heatmap_version": indexed.heatmap_version,
        "index": embeddings.location,
        "index_items": embeddings.size,
        "index_complete": embeddings.is_complete(),
        "k": k,
        "direction": "report_to_image",
        "hits": hits,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if out is not None:
        folder = RunFolder(Location.of(out))
        pages.write_hit_images(
            hits, image_store.read_images([h["index"] for h in hits]), folder.local, "hit"
        )
        write_json(result, folder.local / SEARCH_JSON)
        pages.search_page(query, hits, folder.local, f"daug search: {query}")
        folder.sync()
        result["out"] = folder.location.child(SEARCH_JSON).url
        result["page"] = folder.location.child("index.html").url
    return result
