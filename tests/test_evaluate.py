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
