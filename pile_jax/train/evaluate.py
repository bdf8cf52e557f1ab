"""Evaluation of re-ranked candidate lists with the core metrics, in trec_eval's definitions.

``run_metrics(run, qrels)`` gives, per query, the numbers trec_eval prints for a run file:

- ``ndcg_cut_10``: linear gains (the grade), log2 discount, ideal DCG from *all* judged documents
  of the query (retrieved or not);
- ``recip_rank``: 1 / rank of the first relevant (grade > 0) retrieved document, 0 if none;
- ``map``: average precision, normalised by the number of relevant judged documents;
- ``pnr``: pairs of retrieved documents with different labels (unjudged = 0), concordant over
  discordant in the evaluated ranking (score ties already broken by doc id), *per query* (:func:`pile_jax.metrics.pnr`); :func:`mean_metrics` averages it over
  queries (every query weighs the same);
- ``pnr_concordant`` / ``pnr_discordant``: that query's concordant / discordant pair counts, from
  which :func:`mean_metrics` reports ``pnr_pooled`` = total
  concordant / total discordant over all pairs of all queries (every pair weighs the same; the
  PNR over a test set, :func:`pile_jax.metrics.pnr_pooled`).

They are computed with :mod:`pile_jax.metrics` on one padded list per query: the retrieved
documents (ranked by :func:`pile_jax.data.trec.rank_order`: score descending, ties by doc id
descending -- trec_eval's order and the rank column :func:`~pile_jax.data.trec.write_run`
writes; the positions then encode that rank, so no score tie reaches the metrics), then filler
items of grade 0 up to ``max(depth, 10)``, then the judged documents that were not retrieved, scored
below everything.  With ``topn=depth`` the unretrieved judged documents only enter the ideal
ranking, which is exactly trec_eval's definition.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

import numpy as np

from pile_jax import metrics as M
from pile_jax.data.trec import rank_order

TREC_METRICS = ("ndcg_cut_10", "recip_rank", "map")
#: Per-query pair counts that :func:`mean_metrics` pools into ``pnr_pooled``.
PNR_COUNTS = ("pnr_concordant", "pnr_discordant")


def _query_list(ranked: list[tuple[str, float]], judged: Mapping[str, int], depth: int):
    retrieved = [d for d, _ in ranked][:depth]
    seen = set(retrieved)
    missing = sorted(d for d, g in judged.items() if g > 0 and d not in seen)
    n = depth + len(missing)
    # Scores encode the rank: retrieved first (descending), fillers, then missing judged docs.
    scores = np.full(n, -3.0 * n, np.float64)
    labels = np.zeros(n, np.float64)
    retrieved_mask = np.zeros(n, bool)
    for r, d in enumerate(retrieved):
        scores[r] = float(n - r)
        labels[r] = max(judged.get(d, 0), 0)
        retrieved_mask[r] = True
    for r in range(len(retrieved), depth):
        scores[r] = -float(r)  # fillers: grade 0, above the missing judged docs
    for k, d in enumerate(missing):
        scores[depth + k] = -2.0 * n - k
        labels[depth + k] = judged[d]
    return scores, labels, retrieved_mask


def rank_run(run_q: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents of one query by score descending, ties by doc id descending (trec_eval's order;
    the same function as :func:`pile_jax.data.trec.rank_order`)."""
    return rank_order(run_q)


def run_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    qids: Iterable[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-query trec_eval metrics (+ ``pnr``) of ``run`` against ``qrels``.

    Queries are those of ``qids`` (default: every query of ``qrels`` that has a relevant
    document).  A query with no retrieved documents scores 0 everywhere, as in trec_eval with
    ``-c``. A run with no document for any query, or queries without any relevant judgment, log
    a warning (every metric is then 0).
    """
    qids = list(qids) if qids is not None else [q for q in qrels if any(g > 0 for g in qrels[q].values())]
    if not qids:
        return {}
    # all-zero metrics that are not a result: say so (they would look like a very bad system)
    if not any(g > 0 for q in qids for g in qrels.get(q, {}).values()):
        logging.getLogger(__name__).warning(
            "run_metrics: none of the %d evaluated queries has a relevant judgment: every metric is 0 "
            "(wrong split or qrels file?)", len(qids))
    if not any(run.get(q) for q in qids):
        logging.getLogger(__name__).warning(
            "run_metrics: the run has no documents for any of the %d evaluated queries: every metric is 0 "
            "(empty run file, or other query ids?)", len(qids))
    ranked = {q: rank_run(run.get(q, {})) for q in qids}
    # Fillers reach at least rank 10, so unretrieved judged documents never enter DCG@10.
    depth = max(10, max(len(r) for r in ranked.values()))
    lists = [_query_list(ranked[q], qrels.get(q, {}), depth) for q in qids]
    width = max(len(s) for s, _, _ in lists)
    S = np.full((len(qids), width), -1e9, np.float32)
    Y = np.zeros((len(qids), width), np.float32)
    W = np.zeros((len(qids), width), bool)
    R = np.zeros((len(qids), width), bool)
    for i, (s, y, r) in enumerate(lists):
        S[i, : len(s)] = s
        Y[i, : len(y)] = y
        W[i, : len(s)] = True
        R[i, : len(r)] = r
    ndcg = np.asarray(M.ndcg(S, Y, where=W, topn=10, gain="linear"))
    rr = np.asarray(M.mrr(S, Y, where=W, topn=depth))
    ap = np.asarray(M.average_precision(S, Y, where=W, topn=depth))
    pnr = np.asarray(M.pnr(S, Y, where=R))
    conc, disc, tied = (np.asarray(c, np.float64) for c in M.pnr_counts(S, Y, where=R))
    return {
        q: {"ndcg_cut_10": float(ndcg[i]), "recip_rank": float(rr[i]), "map": float(ap[i]), "pnr": float(pnr[i]),
            "pnr_concordant": conc[i] + 0.5 * tied[i], "pnr_discordant": disc[i] + 0.5 * tied[i]}
        for i, q in enumerate(qids)
    }


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over queries of each metric (PNR: mean over queries with a finite value), plus
    ``pnr_pooled``: the summed ``pnr_concordant`` over the summed ``pnr_discordant`` of all
    queries (denominator clipped at 1, as :func:`pile_jax.metrics.pnr_pooled`), which replaces
    the two count keys."""
    if not per_query:
        return {}
    names = next(iter(per_query.values())).keys()
    out = {}
    for name in names:
        if name in PNR_COUNTS:
            continue
        vals = np.array([m[name] for m in per_query.values()], np.float64)
        vals = vals[np.isfinite(vals)]
        out[name] = float(vals.mean()) if vals.size else float("nan")
    if all(k in names for k in PNR_COUNTS):
        conc, disc = (sum(float(m[k]) for m in per_query.values()) for k in PNR_COUNTS)
        out["pnr_pooled"] = conc / max(disc, 1.0)
    return out
