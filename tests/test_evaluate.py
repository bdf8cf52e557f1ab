"""`run_metrics` (built on the core metrics) equals trec_eval (pytrec_eval) on real BM25 runs of
any depth, including runs shorter than the NDCG cut-off and runs with tied scores."""

import numpy as np
import pytest

from pile_jax.bm25 import bm25_search
from pile_jax.data import load_collection
from pile_jax.train.evaluate import run_metrics

pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.mark.parametrize("depth", [3, 8, 20])
@pytest.mark.parametrize("ties", [False, True])
def test_run_metrics_equal_trec_eval(depth, ties):
    coll = load_collection("cranfield")
    qids = coll.split_qids("test")
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=depth)
    if ties:
        run = {q: {d: float(np.round(s)) for d, s in r.items()} for q, r in run.items()}
    ours = run_metrics(run, coll.qrels, qids=qids)
    ref = pytrec_eval.RelevanceEvaluator({q: coll.qrels[q] for q in qids},
                                         {"ndcg_cut_10", "recip_rank", "map"}).evaluate(run)
    for q in qids:
        for m in ("ndcg_cut_10", "recip_rank", "map"):
            assert ours[q][m] == pytest.approx(ref[q][m], abs=1e-6), (q, m)


def test_written_rank_column_is_the_rank_trec_eval_evaluates(tmp_path):
    """One tie convention: the rank column of a written run, the order read_run returns and the
    rank run_metrics evaluates are all trec_eval's rank (score desc, then doc id desc), shown
    with pytrec_eval's reciprocal rank of a single relevant document in tied groups."""
    from pile_jax.data.trec import read_run, write_run

    scores = {"d1": 1.0, "d2": 1.0, "d10": 1.0, "D3": 1.0, "a": 2.0, "é": 1.0, "e": 1.0, "x9": 0.5, "x10": 0.5}
    run = {f"q_{d}": dict(scores) for d in scores}  # query q_d: only d is relevant
    qrels = {f"q_{d}": {d: 1} for d in scores}
    path = tmp_path / "run.trec"
    write_run(str(path), run)
    written = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        q, _, d, rank, _, _ = line.split()
        written[(q, d)] = int(rank)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    ours = run_metrics(run, qrels)
    back = read_run(str(path))
    for d in scores:
        q = f"q_{d}"
        assert ref[q]["recip_rank"] == pytest.approx(1.0 / written[(q, d)]), d
        assert ours[q]["recip_rank"] == pytest.approx(1.0 / written[(q, d)]), d
        assert [doc for doc, _ in back[q]].index(d) + 1 == written[(q, d)]
    # hand-derived: score 2.0 first, the 1.0 ties by descending code point, then the 0.5 ties
    assert [doc for doc, _ in back["q_a"]] == ["a", "é", "e", "d2", "d10", "d1", "D3", "x9", "x10"]


def _pairs_loop(run_q, judged):
    """Concordant / discordant pairs of the evaluated ranking: score desc, ties by doc id desc."""
    order = sorted(run_q, key=lambda d: (run_q[d], d), reverse=True)
    pos = {d: r for r, d in enumerate(order)}
    conc = disc = 0.0
    for a in order:
        for b in order:
            ga, gb = max(judged.get(a, 0), 0), max(judged.get(b, 0), 0)
            if ga > gb:
                conc += pos[a] < pos[b]
                disc += pos[a] > pos[b]
    return conc, disc


def test_pnr_pooled_and_per_query_mean_against_float64_loop():
    """pnr (per query, then averaged) and pnr_pooled (all pairs of all queries) of a BM25 run
    with score ties (broken by the tie convention, as evaluated), against a float64 loop."""
    from pile_jax.train.evaluate import mean_metrics

    coll = load_collection("cranfield")
    qids = coll.split_qids("test")[:12]
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=15)
    run = {q: {d: float(np.round(s)) for d, s in r.items()} for q, r in run.items()}
    got = mean_metrics(run_metrics(run, coll.qrels, qids=qids))
    per_q, tot_c, tot_d = [], 0.0, 0.0
    for q in qids:
        c, d = _pairs_loop(run[q], coll.qrels[q])
        per_q.append(c / max(d, 1.0) if c + d > 0 else 0.0)
        tot_c, tot_d = tot_c + c, tot_d + d
    assert got["pnr"] == pytest.approx(np.mean(per_q), rel=1e-6)
    assert got["pnr_pooled"] == pytest.approx(tot_c / tot_d, rel=1e-6)
    assert got["pnr_pooled"] != pytest.approx(got["pnr"], rel=1e-3)  # they measure different things
    assert "pnr_concordant" not in got and "pnr_discordant" not in got
