"""The training groups drawn from a teacher table (candidates: {from: teachers}): labels from the
qrels, teacher_mask = which teacher scored each item, standardised present scores, determinism per
(seed, query, epoch), the eligibility rule, and the loader passing the epoch."""

import zlib

import numpy as np
import pytest

from pile_jax.data.table_groups import TableGroupSource, table_stats
from pile_jax.data.teacher_table import TeacherTable

QIDS = ["q0", "q1", "q2", "q3"]
DOCS = [f"d{i}" for i in range(10)]


def _table():
    # CSR by query row: q0 -> d1 d2 d3 d4 d5 ; q1 -> d2 ; q3 -> d0 d7 d9 (q2 absent)
    doc_rows = np.array([1, 2, 3, 4, 5, 2, 0, 7, 9], np.int32)
    scores = np.array([[5, 1, 2, 0, 3, 9, 4, 1, 2],
                       [0, 7, 0, 6, 5, 8, 0, 2, 0]], np.float32)
    present = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1],
                        [0, 1, 0, 1, 1, 1, 0, 1, 0]], bool)
    return TeacherTable(names=["a", "b"], query_rows=np.array([0, 1, 3], np.int32),
                        offsets=np.array([0, 5, 6, 9], np.int64), doc_rows=doc_rows, scores=scores, present=present)


QRELS = {"q0": {"d1": 2, "d3": 0, "d8": 1},   # d8: a positive no teacher scored
         "q1": {"d2": 1},                     # its only scored doc is the positive: not eligible
         "q2": {"d4": 1},                     # not in the table
         "q3": {"d5": 0}}                     # no positive


def _source(**kw):
    args = dict(qrels=QRELS, qids=QIDS, queries=QIDS, docs=DOCS, group_size=4, seed=3)
    args.update(kw)
    return TableGroupSource(_table(), **args)


def test_eligible_queries_and_record_contents():
    src = _source(mu=np.array([1.0, 2.0]), sd=np.array([2.0, 4.0]))
    assert len(src) == 1 and src.skipped == 3
    rec = src[0]
    assert rec["query_id"] == "q0"
    assert set(rec) == {"query_id", "doc_ids", "labels", "label_mask", "mask", "teacher_scores", "teacher_mask"}
    docs = rec["doc_ids"].tolist()
    assert {"d1", "d8"} <= set(docs) and len(set(docs)) == 4 and rec["mask"].all()
    table = {"d1": (5, 0, 1, 0), "d2": (1, 7, 1, 1), "d3": (2, 0, 1, 0), "d4": (0, 6, 1, 1), "d5": (3, 5, 1, 1),
             "d8": (0, 0, 0, 0)}
    grade = {"d1": 2.0, "d8": 1.0}
    for j, d in enumerate(docs):
        sa, sb, pa, pb = table[d]
        assert rec["labels"][j] == grade.get(d, 0.0)
        assert rec["teacher_mask"][:, j].tolist() == [bool(pa), bool(pb)]
        expect = [(sa - 1.0) / 2.0 if pa else 0.0, (sb - 2.0) / 4.0 if pb else 0.0]
        np.testing.assert_allclose(rec["teacher_scores"][:, j], expect, rtol=1e-6)
    assert rec["label_mask"].all()
    ign = _source(unjudged="ignore")[0]
    assert ign["label_mask"].tolist() == [d in ("d1", "d3", "d8") for d in ign["doc_ids"].tolist()]


def test_sampling_is_a_function_of_seed_query_epoch():
    src = _source(group_size=3)
    e0 = src.__getitems__([0], epoch=0)[0]["doc_ids"].tolist()
    assert src.__getitems__([0], epoch=0)[0]["doc_ids"].tolist() == e0 == _source(group_size=3)[0]["doc_ids"].tolist()
    # the reference draw: positives d1 (grade 2) and d8 (at most n - 1 = 2), then one of the others
    for epoch in range(3):
        rng = np.random.default_rng([3, zlib.crc32(b"q0"), epoch])
        rows = np.array([1, 2, 3, 4, 5, 8])
        others = np.array([1, 2, 3, 4])                    # indices of d2 d3 d4 d5
        fill = rng.choice(others, size=1, replace=False)
        expect = rows[rng.permutation(np.concatenate([[0, 5], fill]))]
        got = src.__getitems__([0], epoch=epoch)[0]["doc_ids"].tolist()
        assert got == [f"d{r}" for r in expect]
    draws = {tuple(src.__getitems__([0], epoch=e)[0]["doc_ids"].tolist()) for e in range(12)}
    assert len(draws) > 1                                   # epochs draw other negatives


def test_padding_when_the_query_has_few_documents():
    rec = _source(group_size=8)[0]
    assert rec["mask"].tolist() == [True] * 6 + [False] * 2
    assert rec["doc_ids"].tolist()[6:] == ["", ""]
    assert not rec["teacher_mask"][:, 6:].any() and not rec["label_mask"][6:].any()


def test_table_stats_over_present_scores_only():
    mu, sd = table_stats(_table())
    a = np.array([5, 1, 2, 0, 3, 9, 4, 1, 2], np.float64)
    b = np.array([7, 6, 5, 8, 2], np.float64)
    np.testing.assert_allclose(mu, [a.mean(), b.mean()])
    np.testing.assert_allclose(sd, [a.std(), b.std()])
    mu0, _ = table_stats(_table(), query_rows=np.array([0]), chunk=2)
    np.testing.assert_allclose(mu0, [a[:5].mean(), b[:3].mean()])


def test_loader_passes_the_epoch():
    from pile_jax.data.loader import make_train_loader

    src = _source(group_size=3)
    loader = make_train_loader(src, global_batch_size=1, seed=0, prefetch=0, length_aware=False)
    got = [loader.next_batch()["doc_ids"][0].tolist() for _ in range(4)]
    assert got == [src.__getitems__([0], epoch=e)[0]["doc_ids"].tolist() for e in range(4)]
