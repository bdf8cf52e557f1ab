"""A tiny real training run (Cranfield + the real MiniLM weights, hard-label pairwise loss)
lowers the training loss and raises dev NDCG@10 over the same model before training."""

import numpy as np
import pytest

from pile_jax.bm25 import bm25_search
from pile_jax.data import build_groups, iter_group_examples, load_collection
from pile_jax.rankers import cross_encoder
from pile_jax.train.evaluate import mean_metrics, run_metrics
from pile_jax.train.loop import score_candidates, train


@pytest.mark.slow
def test_tiny_real_run_lowers_loss_and_raises_dev_ndcg(tmp_path):
    coll = load_collection("cranfield")
    train_q = coll.split_qids("train")[:40]
    dev_q = coll.split_qids("dev")[:20]
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in train_q + dev_q}, depth=10)
    cands = {q: list(run[q]) for q in run}
    groups, _ = build_groups(coll, cands, {}, group_size=6, qids=train_q, policy="positives_top")
    ranker = cross_encoder("all-MiniLM-L6-v2", num_layers=1, max_length=64, max_query_length=16, seed=0)
    dev = {q: cands[q] for q in dev_q}

    fit = {q: cands[q] for q in train_q}

    def ndcg(params, lists, qids):
        return mean_metrics(run_metrics(score_candidates(ranker, params, lists, coll.queries, coll.docs,
                                                         batch_size=32), coll.qrels, qids=qids))["ndcg_cut_10"]

    before_dev, before_fit = ndcg(ranker.params, dev, dev_q), ndcg(ranker.params, fit, train_q)
    result = train(ranker, source=list(iter_group_examples(groups)),
                   objective={"label_losses": {"pairwise_logistic": 1.0}}, queries=coll.queries, docs=coll.docs,
                   config={"batch_size": 4, "steps": 60, "learning_rate": 1e-3, "warmup_steps": 0.1,
                           "parallel": "none", "log_every": 1, "progress": False})
    losses = np.array([h["loss"] for h in result.history if "loss" in h])
    after_dev, after_fit = ndcg(result.final_params, dev, dev_q), ndcg(result.final_params, fit, train_q)
    assert losses[-15:].mean() < losses[:15].mean() - 0.2, losses       # measured: 0.70 -> 0.21
    assert after_fit > before_fit + 0.1, (before_fit, after_fit)         # it fits the labels it saw
    assert after_dev > before_dev, (before_dev, after_dev)               # and generalises a little (0.314 -> 0.330)
