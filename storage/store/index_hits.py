"""What a hit of an embedding index is for a person: the item's ids and split, the similarity,
its positive CheXpert labels and its study's report text, read from the image store."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from daug_core.labels import CHEXPERT_LABELS
from storage.release.reports import ReportSections

if TYPE_CHECKING:
    from storage.store.embedding_index import EmbeddingIndex
    from storage.store.image import ImageStore

# Per index object, built on its first hits: the items table is read once, not per query.
_details: weakref.WeakKeyDictionary[EmbeddingIndex, pd.DataFrame] = weakref.WeakKeyDictionary()


def hit_details(index: EmbeddingIndex) -> pd.DataFrame:
    """Per index row: ``labels`` (the positive CheXpert classes, 1.0 in the store's labels;
    uncertain and blank are not) and ``report`` (FINDINGS then IMPRESSION, the text the model
    read)."""
    if index not in _details:
        items = index.image_store.items().set_index("index")
        chosen = items.loc[index.items()["index"].to_numpy()]
        raw = chosen[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)
        labels = [
            [name for name, value in zip(CHEXPERT_LABELS, row, strict=True) if value == 1.0]
            for row in raw
        ]
        reports = [
            ReportSections(f, i, "").text
            for f, i in zip(chosen["findings"], chosen["impression"], strict=True)
        ]
        _details[index] = pd.DataFrame({"labels": labels, "report": reports})
    return _details[index]


def neighbours(
    index: EmbeddingIndex,
    store: ImageStore | None,
    similarity: np.ndarray,
    rows: np.ndarray,
) -> list[dict[str, Any]]:
    """One query's hits (1-D ``similarity`` and ``rows`` of
    :meth:`~storage.store.embedding_index.EmbeddingIndex.top_k`), best first, as records: row,
    index (the image store's), dicom_id, study_id, split, similarity, labels and report (see
    :func:`hit_details`). ``store`` must be the index's store (None: the one it was opened
    with)."""
    if store is not None and store.location != index.image_store.location:
        raise ValueError(f"{index.location} is the index of {index.image_store.location}")
    sims = np.asarray(similarity, dtype=np.float64).reshape(-1)
    hits = np.asarray(rows, dtype=np.int64).reshape(-1)
    if sims.shape != hits.shape:
        raise ValueError(f"similarity {sims.shape} and rows {hits.shape} differ in shape")
    items, details = index.items(), hit_details(index)
    index_of = items["index"].to_numpy()
    dicom_ids, study_ids = items["dicom_id"].to_numpy(), items["study_id"].to_numpy()
    splits, labels = items["split"].to_numpy(), details["labels"].to_numpy()
    reports = details["report"].to_numpy()
    return [
        {
            "row": int(row),
            "index": int(index_of[row]),
            "dicom_id": str(dicom_ids[row]),
            "study_id": str(study_ids[row]),
            "split": str(splits[row]),
            "similarity": float(sim),
            "labels": list(labels[row]),
            "report": str(reports[row]),
        }
        for sim, row in zip(sims, hits, strict=True)
    ]
