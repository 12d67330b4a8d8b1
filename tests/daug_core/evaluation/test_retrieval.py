"""Class-based mAP@k / wmAP@k and pair Recall@k against a brute-force Python reference and
hand-worked cases (docs/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from daug_core.evaluation.retrieval import class_means, class_retrieval, pair_recall, top_k_indices

nan = float("nan")


# ---- brute-force references: a literal reading of docs/metrics.md -----------------------
def ranked(query, database):
    """Database rows by cosine similarity, best first, ties by row (the documented order)."""
    q = np.asarray(query, dtype=np.float64)
    q = q / math.sqrt(sum(v * v for v in q))
    sims = []
    for j, row in enumerate(database):
        d = np.asarray(row, dtype=np.float64)
        d = d / math.sqrt(sum(v * v for v in d))
        sims.append((-sum(a * b for a, b in zip(q, d, strict=True)), j))
    return [j for _, j in sorted(sims)]


def brute_class_retrieval(q_emb, q_lab, d_emb, d_lab, ks):
    n_classes = len(q_lab[0])
    out = {}
    orders = [ranked(q, d_emb) for q in q_emb]
    for k in ks:
        aps, counts = [], []
        for c in range(n_classes):
            per_query = []
            for i, order in enumerate(orders):
                if q_lab[i][c] != 1:  # NaN and 0: not a query of class c
                    continue
                hits = [r for r in range(1, k + 1) if d_lab[order[r - 1]][c] == 1]
                precisions = [j / r for j, r in enumerate(hits, start=1)]
                per_query.append(sum(precisions) / len(hits) if hits else 0.0)
            counts.append(len(per_query))
            aps.append(sum(per_query) / len(per_query) if per_query else nan)
        present = [a for a in aps if not math.isnan(a)]
        out[k] = {
            "ap": aps,
            "official": sum(a if not math.isnan(a) else 0.0 for a in aps) / n_classes,
            "present": sum(present) / len(present) if present else nan,
            "wmap": sum(a * n for a, n in zip(aps, counts, strict=True) if n) / sum(counts)
            if sum(counts)
            else nan,
            "counts": counts,
        }
    return out


def brute_recall(queries, items, study, ks):
    out = []
    for k in ks:
        hits = 0
        for i, q in enumerate(queries):
            top = ranked(q, items)[:k]
            hits += any(study[j] == study[i] for j in top)
        out.append(hits / len(queries))
    return tuple(out)


# ---- random cases -------------------------------------------------------------------------
def tied_embeddings(rng, n, dim=8):
    """Vectors with four entries +-1: norm exactly 2, every cosine a multiple of 1/4, so exact
    ties are frequent and exact in any summation order."""
    x = np.zeros((n, dim))
    for row in x:
        cols = rng.choice(dim, size=4, replace=False)
        row[cols] = rng.choice([-1.0, 1.0], size=4)
    return x * rng.choice([1.0, 3.0], size=(n, 1))  # scale must not matter


def random_labels(rng, n, c, p_nan=0.15):
    y = (rng.random((n, c)) < 0.35).astype(float)
    y[rng.random((n, c)) < p_nan] = nan
    return y


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [True, False])
def test_class_retrieval_matches_brute_force(seed, tied):
    rng = np.random.default_rng(seed)
    nq, nd, c = 13, 23, 5
    if tied:
        q_emb, d_emb = tied_embeddings(rng, nq), tied_embeddings(rng, nd)
    else:
        q_emb, d_emb = rng.normal(size=(nq, 6)), rng.normal(size=(nd, 6))
    q_lab, d_lab = random_labels(rng, nq, c), random_labels(rng, nd, c)
    q_lab[:, 1] = 0.0  # a class without queries (official AP 0, excluded from map_present)
    q_lab[:, 3] = np.where(q_lab[:, 3] == 1, nan, q_lab[:, 3])  # only masked or negative
    ks = (1, 3, 5, 10)
    got = class_retrieval(
        q_emb, q_lab, d_emb, d_lab, [f"c{i}" for i in range(c)], ks, query_chunk=4
    )
    want = brute_class_retrieval(q_emb, q_lab, d_emb, d_lab, ks)
    assert got.queries_per_class == tuple(want[1]["counts"])
    assert got.queries_per_class[1] == 0 and got.queries_per_class[3] == 0
    for k in ks:
        r = got.at(k)
        np.testing.assert_allclose(r.ap, want[k]["ap"], rtol=0, atol=1e-12)
        assert r.map_official == pytest.approx(want[k]["official"], abs=1e-12)
        assert r.map_present == pytest.approx(want[k]["present"], abs=1e-12)
        assert r.wmap == pytest.approx(want[k]["wmap"], abs=1e-12)
        assert r.map_official < r.map_present or r.map_present == 0


@pytest.mark.parametrize("seed", range(4))
def test_top_k_breaks_ties_by_database_row_and_does_not_depend_on_chunking(seed):
    rng = np.random.default_rng(seed)
    q = torch.as_tensor(tied_embeddings(rng, 9) / 2)
    d = torch.as_tensor(tied_embeddings(rng, 30) / 2)
    d = d / d.norm(dim=1, keepdim=True)
    for k in (1, 7, 30):
        want = [ranked(row, d.numpy())[:k] for row in q.numpy()]
        for chunk in (1, 4, None):
            assert top_k_indices(q, d, k, chunk).tolist() == want


# ---- hand-worked cases --------------------------------------------------------------------
def at_angles(*degrees):
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_hand_worked_example_with_a_class_without_queries():
    # Query 0 at 0 deg ranks d0..d4 in order; query 1 at 60 deg ranks d4, d3, d2, d1, d0.
    db = at_angles(10, 20, 30, 40, 50)
    db_labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=float)
    queries = at_angles(0, 60)
    query_labels = np.array([[1, 1, 0], [1, 0, nan]])
    result = class_retrieval(queries, query_labels, db, db_labels, ["A", "B", "C"], ks=(1, 3))
    assert result.queries_per_class == (2, 1, 0)
    k3 = result.at(3)
    # q0/A: hits at ranks 1, 3 -> (1/1 + 2/3) / 2 = 5/6; q1/A: d4, d2 -> ranks 1, 3 -> 5/6.
    # q0/B: hits at ranks 2, 3 -> (1/2 + 2/3) / 2 = 7/12. C: no query.
    assert k3.ap[0] == pytest.approx(5 / 6) and k3.ap[1] == pytest.approx(7 / 12)
    assert math.isnan(k3.ap[2])
    assert k3.map_official == pytest.approx((5 / 6 + 7 / 12 + 0) / 3)  # 17/36
    assert k3.map_present == pytest.approx((5 / 6 + 7 / 12) / 2)  # 17/24
    assert k3.wmap == pytest.approx((5 / 6 * 2 + 7 / 12 * 1) / 3)  # 3/4
    # Per (query, class), NaN where the query lacks the class: what a bootstrap resamples.
    np.testing.assert_allclose(k3.query_ap, [[5 / 6, 7 / 12, nan], [5 / 6, nan, nan]])
    means = class_means(k3.query_ap)
    assert (means.map_official, means.map_present, means.wmap) == (
        k3.map_official,
        k3.map_present,
        k3.wmap,
    )
    # Query 0 drawn twice: A and B each average over the drawn queries having them.
    twice = class_means(k3.query_ap[[0, 0]])
    np.testing.assert_allclose(twice.ap, [5 / 6, 7 / 12, nan])
    assert twice.wmap == pytest.approx((5 / 6 + 7 / 12) / 2)
    k1 = result.at(1)
    assert k1.ap[:2] == (1.0, 0.0)
    assert (k1.map_official, k1.map_present) == (pytest.approx(1 / 3), 0.5)
    assert k1.wmap == pytest.approx(2 / 3)
    rows = result.rows()
    assert rows[0] == {"k": 1, "class": "A", "queries": 2, "ap": 1.0} and len(rows) == 6
    with pytest.raises(KeyError):
        result.at(5)


def test_hand_worked_example_with_ties_and_masked_labels():
    # d1, d2, d3 tie at similarity 1 (d2 scaled: normalised first); rows order them.
    db = np.array([[0.0, 1.0], [1.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    db_labels = np.array([[1.0], [nan], [1.0], [1.0]])  # d1 masked: not a hit
    queries = np.array([[2.0, 0.0], [1.0, 1.0]])
    query_labels = np.array([[1.0], [nan]])  # the second query does not count for A
    result = class_retrieval(queries, query_labels, db, db_labels, ["A"], ks=(1, 2, 3, 4))
    assert result.queries_per_class == (1,)
    assert result.at(1).ap == (0.0,)  # d1 first, masked
    assert result.at(2).ap == (0.5,)  # hit at rank 2: 1/2
    assert result.at(3).ap == (pytest.approx((1 / 2 + 2 / 3) / 2),)
    assert result.at(4).ap == (pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3),)
    # float32 inputs rank the same ties the same way.
    again = class_retrieval(
        queries.astype(np.float32), query_labels, db.astype(np.float32), db_labels, ["A"], (2,)
    )
    assert again.at(2).ap == (0.5,)


def test_class_retrieval_rejects_bad_input():
    e, y = np.eye(3), np.eye(3)
    with pytest.raises(ValueError, match="exceeds the database size"):
        class_retrieval(e, y, e, y, ["a", "b", "c"], ks=(4,))
    with pytest.raises(ValueError, match="zero vectors"):
        class_retrieval(np.zeros((1, 3)), y[:1], e, y, ["a", "b", "c"], ks=(1,))
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        class_retrieval(e, y * 2, e, y, ["a", "b", "c"], ks=(1,))
    with pytest.raises(ValueError, match="label columns"):
        class_retrieval(e, y, e, y, ["a", "b"], ks=(1,))


def test_pair_recall_hand_case_counts_any_report_of_the_same_study():
    study = ["s1", "s1", "s2", "s3"]
    texts = at_angles(0, 90, 180, 270)
    images = at_angles(80, 100, 240, 10)
    result = pair_recall(images, texts, study, ks=(1, 2, 3))
    # image->report: i0 -> t1 (s1, not its own pair t0, still a hit); i1 -> t1; i2 -> t3, t2;
    # i3 -> t0, t1, t3.
    assert result.image_to_report == (0.5, 0.75, 1.0)
    # report->image: t0 -> i3, i0; t1 -> i0/i1; t2 -> i2; t3 -> i2, i3.
    assert result.report_to_image == (0.5, 1.0, 1.0)
    assert result.num_pairs == 4
    own_pair_only = pair_recall(images, texts, ["a", "b", "c", "d"], ks=(1,))
    assert own_pair_only.image_to_report == (0.25,)  # only i1 -> t1
    assert result.rows()[0] == {"k": 1, "image_to_report": 0.5, "report_to_image": 0.5}


@pytest.mark.parametrize("seed", range(4))
def test_pair_recall_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 17
    study = rng.integers(0, 9, size=n)  # several images per study
    images = tied_embeddings(rng, n)
    texts = tied_embeddings(rng, 9)[study]  # one report per study, repeated per image
    got = pair_recall(images, texts, study, ks=(1, 5, 10), query_chunk=5)
    assert got.image_to_report == pytest.approx(brute_recall(images, texts, study, (1, 5, 10)))
    assert got.report_to_image == pytest.approx(brute_recall(texts, images, study, (1, 5, 10)))
    with pytest.raises(ValueError, match="one study id per pair"):
        pair_recall(images, texts, study[:-1])
