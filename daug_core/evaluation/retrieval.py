"""Retrieval metrics of an image-text model (docs/metrics.md), pure torch.

Two metrics, both on L2-normalised embeddings compared by cosine similarity:

- :func:`class_retrieval`: class-based mAP@k and wmAP@k of the DAug paper, for image->image
  (x->x) and report->image (r->x) retrieval: queries are the test split's image (or report)
  embeddings, the database is the train + validate images (docs/metrics.md, "Class-based
  retrieval: mAP@k and wmAP@k").
- :func:`pair_recall`: CXR-CLIP style image->report and report->image Recall@k on the test
  split, where the relevant items are the query's own pair at study level (docs/metrics.md,
  "Pair retrieval").

Ranking. For each query the database is ranked by similarity, highest first; equal
similarities are ordered by database row, lowest first, so the metric is a function of the
embeddings alone (``torch.topk`` leaves the order of ties unspecified). Only the top ``max(ks)``
items are ever materialised, one block of queries at a time, so a database of hundreds of
thousands of images needs memory for ``query_chunk x database`` similarities only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CLASS_KS: tuple[int, ...] = (1, 3, 5, 10)
DEFAULT_PAIR_KS: tuple[int, ...] = (1, 5, 10)
# Similarities held at once per block of queries: 16 M floats (64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24

EmbeddingLike = torch.Tensor | np.ndarray


def _embeddings(x: EmbeddingLike, name: str) -> torch.Tensor:
    """(N, D) float embeddings, L2-normalised here (docs/metrics.md: similarity = cosine).

    float64 inputs stay float64 (exact ties stay ties); anything else becomes float32.
    """
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(t.shape)}")
    if t.dtype != torch.float64:
        t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    norms = t.norm(dim=1)
    if (norms == 0).any():
        rows = torch.nonzero(norms == 0).flatten()[:5].tolist()
        raise ValueError(f"{name} has zero vectors (rows {rows}): no direction to compare")
    return F.normalize(t, dim=1)


def _binary_labels(y: EmbeddingLike, rows: int, name: str) -> torch.Tensor:
    """(N, C) labels -> bool "has the label". NaN (uncertain, masked by the store's ``ignore``
    policy) counts as *not* having it: such a query is not a positive query of the class and
    such a database item is not a hit. This is how docs/metrics.md reads the labels for retrieval
    (binary after the store's uncertainty policy, masked entries read as negatives)."""
    t = torch.as_tensor(y, dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] != rows:
        raise ValueError(f"{name} must be ({rows}, C), got shape {tuple(t.shape)}")
    known = t[~torch.isnan(t)]
    if not bool(((known == 0) | (known == 1)).all()):
        raise ValueError(f"{name} must hold 0, 1 or NaN")
    return t == 1


def top_k_indices(
    queries: torch.Tensor, database: torch.Tensor, k: int, query_chunk: int | None = None
) -> torch.Tensor:
    """(Q, k) database rows with the highest ``queries @ database.T``, best first, ties by row.

    ``torch.topk`` gives the k-th best value v per query; every item above v is taken, and of
    the items equal to v the lowest rows fill the remaining places. The k chosen rows are then
    sorted by similarity with a stable sort over ascending rows, which puts ties in row order.
    """
    m = database.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k = {k} needs 1 <= k <= database size {m}")
    chunk = query_chunk or max(1, min(4096, _BLOCK_ELEMENTS // max(m, 1)))
    out = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ database.T  # (q, M)
        kth = torch.topk(sims, k, dim=1).values[:, -1:]  # (q, 1) k-th best value
        above = sims > kth
        equal = sims == kth
        still_needed = k - above.sum(dim=1, keepdim=True)
        chosen = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= still_needed))
        # nonzero() is row-major: per query, the chosen rows come in ascending order.
        rows = torch.nonzero(chosen)[:, 1].view(-1, k)
        order = torch.sort(torch.gather(sims, 1, rows), dim=1, descending=True, stable=True)
        out.append(torch.gather(rows, 1, order.indices))
    if not out:
        return torch.empty((0, k), dtype=torch.long, device=database.device)
    return torch.cat(out)


def _check_ks(ks: Sequence[int], database_size: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if max(ks) > database_size:
        raise ValueError(f"k = {max(ks)} exceeds the database size {database_size}")
    return ks


@dataclass(frozen=True)
class ClassRetrievalAtK:
    """Class-based retrieval at one cut-off k (docs/metrics.md).

    ``ap`` per class is NaN for a class that no query has (AP undefined). Two means:
    ``map_official`` counts such classes as AP = 0, as the official DAug implementation does
    (use it to compare with the paper); ``map_present`` averages only the classes with at least
    one query. ``wmap`` weights AP_c by n_c, so the two conventions agree on it.
    """

    k: int
    ap: tuple[float, ...]
    map_official: float
    map_present: float
    wmap: float
    # AP_c(q) per (query, class), NaN where the query does not have the class: what a
    # bootstrap over queries resamples (:func:`class_means` gives the means back).
    query_ap: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.empty(0))


@dataclass(frozen=True)
class ClassMeans:
    """AP per class (NaN without a query) and the three means of :class:`ClassRetrievalAtK`."""

    ap: np.ndarray
    map_official: float
    map_present: float
    wmap: float


def class_means(query_ap: np.ndarray) -> ClassMeans:
    """AP_c, mAP (official: classes without a query count 0; present: left out) and wmAP from
    per-(query, class) APs, NaN where a query does not have the class. AP_c is the mean over
    the queries having c, so wmAP (weights n_c) is the mean of every defined entry."""
    ap_q = np.asarray(query_ap, dtype=np.float64)
    if ap_q.ndim != 2:
        raise ValueError(f"query_ap must be (queries, classes), got shape {ap_q.shape}")
    has = ~np.isnan(ap_q)
    n_c = has.sum(axis=0)
    sums = np.where(has, ap_q, 0.0).sum(axis=0)
    ap = np.full(ap_q.shape[1], np.nan)
    np.divide(sums, n_c, out=ap, where=n_c > 0)
    present = n_c > 0
    return ClassMeans(
        ap=ap,
        map_official=float(np.nan_to_num(ap, nan=0.0).mean()),
        map_present=float(ap[present].mean()) if present.any() else float("nan"),
        wmap=float(sums.sum() / n_c.sum()) if present.any() else float("nan"),
    )


@dataclass(frozen=True)
class ClassRetrieval:
    class_names: tuple[str, ...]
    queries_per_class: tuple[int, ...]  # n_c: queries having class c
    num_queries: int
    database_size: int
    results: tuple[ClassRetrievalAtK, ...]  # one per k, in the order asked

    def at(self, k: int) -> ClassRetrievalAtK:
        found = self.get(k)
        if found is None:
            raise KeyError(f"k = {k} not computed (have {[r.k for r in self.results]})")
        return found

    def get(self, k: int) -> ClassRetrievalAtK | None:
        """The result at ``k``, or None where it was not computed (a database smaller than
        ``k`` items)."""
        return next((result for result in self.results if result.k == k), None)

    def rows(self) -> list[dict[str, object]]:
        """One flat dict per (k, class): ready for a table artifact."""
        return [
            {"k": r.k, "class": name, "queries": n, "ap": r.ap[c]}
            for r in self.results
            for c, (name, n) in enumerate(
                zip(self.class_names, self.queries_per_class, strict=True)
            )
        ]


def class_retrieval(
    query_emb: EmbeddingLike,
    query_labels: EmbeddingLike,
    db_emb: EmbeddingLike,
    db_labels: EmbeddingLike,
    class_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_CLASS_KS,
    query_chunk: int | None = None,
) -> ClassRetrieval:
    """Class-based retrieval mAP@k and wmAP@k (docs/metrics.md), queries against a database.

    For class c and a query q with y_q[c] = 1, over the top-k items d_1..d_k:
    hits = ranks r with d_r having label c; AP_c(q) = (1/|hits|) sum_j j / r_j (precision at
    the j-th hit), 0 without hits; AP_c = mean of AP_c(q) over those queries;
    wmAP@k = sum_c AP_c n_c / sum_c n_c. Labels are binary with NaN read as "not having the
    label" (see :func:`_binary_labels`). Embeddings are L2-normalised here.
    """
    q = _embeddings(query_emb, "query_emb")
    d = _embeddings(db_emb, "db_emb").to(device=q.device, dtype=q.dtype)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != database dim {d.shape[1]}")
    yq = _binary_labels(query_labels, q.shape[0], "query_labels").to(q.device)
    yd = _binary_labels(db_labels, d.shape[0], "db_labels").to(q.device)
    names = tuple(class_names)
    if yq.shape[1] != yd.shape[1] or yq.shape[1] != len(names):
        raise ValueError(
            f"label columns: queries {yq.shape[1]}, database {yd.shape[1]}, names {len(names)}"
        )
    ks = _check_ks(ks, d.shape[0])
    top = top_k_indices(q, d, max(ks), query_chunk)  # (Q, kmax)
    relevant = yd[top] & yq[:, None, :]  # (Q, kmax, C): d_r has c, for queries having c
    n_c = yq.sum(dim=0)
    results = []
    for k in ks:
        rel = relevant[:, :k, :].double()
        hits_so_far = torch.cumsum(rel, dim=1)
        ranks = torch.arange(1, k + 1, dtype=torch.float64, device=rel.device)[None, :, None]
        precision_sum = (rel * hits_so_far / ranks).sum(dim=1)  # sum_j j / r_j, (Q, C)
        hits = rel.sum(dim=1)
        ap_q = torch.where(hits > 0, precision_sum / hits.clamp(min=1), 0.0)  # (Q, C)
        query_ap = torch.where(yq, ap_q, torch.nan).cpu().numpy()
        means = class_means(query_ap)
        results.append(
            ClassRetrievalAtK(
                k=k,
                ap=tuple(float(a) for a in means.ap),
                map_official=means.map_official,
                map_present=means.map_present,
                wmap=means.wmap,
                query_ap=query_ap,
            )
        )
    return ClassRetrieval(
        class_names=names,
        queries_per_class=tuple(int(n) for n in n_c),
        num_queries=int(q.shape[0]),
        database_size=int(d.shape[0]),
        results=tuple(results),
    )


@dataclass(frozen=True)
class PairRecall:
    """Recall@k of image->report and report->image retrieval (docs/metrics.md), one
    value per k in ``ks`` order: the share of queries whose top k hold an item of the query's
    own study."""

    ks: tuple[int, ...]
    image_to_report: tuple[float, ...]
    report_to_image: tuple[float, ...]
    num_pairs: int

    def rows(self) -> list[dict[str, object]]:
        return [
            {"k": k, "image_to_report": i2r, "report_to_image": r2i}
            for k, i2r, r2i in zip(self.ks, self.image_to_report, self.report_to_image, strict=True)
        ]


def _recall_at(
    top: torch.Tensor, query_study: torch.Tensor, item_study: torch.Tensor, ks: tuple[int, ...]
) -> tuple[float, ...]:
    """Share of queries with an item of their own study among their top k, per k."""
    same = item_study[top] == query_study[:, None]  # (Q, kmax)
    return tuple(float(same[:, :k].any(dim=1).double().mean()) for k in ks)


def pair_recall(
    image_emb: EmbeddingLike,
    text_emb: EmbeddingLike,
    study_ids: Sequence[object] | np.ndarray,
    ks: Sequence[int] = DEFAULT_PAIR_KS,
    query_chunk: int | None = None,
) -> PairRecall:
    """CXR-CLIP style Recall@k on the test split: row i of ``image_emb`` and ``text_emb`` is
    one (image, report) pair of study ``study_ids[i]``.

    image->report: query image i against all report rows; a hit when any of the top-k reports
    belongs to study ``study_ids[i]`` (its own report, or the same report stored again for
    another image of the study). report->image likewise against all image rows.
    """
    images = _embeddings(image_emb, "image_emb")
    texts = _embeddings(text_emb, "text_emb").to(device=images.device, dtype=images.dtype)
    if images.shape != texts.shape:
        raise ValueError(f"image {tuple(images.shape)} and text {tuple(texts.shape)} differ")
    ids = np.asarray(study_ids, dtype=object)
    if ids.shape != (images.shape[0],):
        raise ValueError(f"need one study id per pair ({images.shape[0]}), got {ids.shape}")
    _, codes_np = np.unique(ids.astype(str), return_inverse=True)
    codes = torch.as_tensor(codes_np.ravel(), device=images.device)
    ks = _check_ks(ks, images.shape[0])
    kmax = max(ks)
    return PairRecall(
        ks=ks,
        image_to_report=_recall_at(
            top_k_indices(images, texts, kmax, query_chunk), codes, codes, ks
        ),
        report_to_image=_recall_at(
            top_k_indices(texts, images, kmax, query_chunk), codes, codes, ks
        ),
        num_pairs=int(images.shape[0]),
    )
