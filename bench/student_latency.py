#!/usr/bin/env python
"""Re-ranking latency per student architecture: one query, 100 BM25 candidates (real Cranfield
test queries and documents), the students of ``configs/study_margin_mse.yaml`` (first 2 layers of
all-MiniLM-L6-v2; TK with 2 layers on its word-piece embeddings).

Two numbers per architecture, milliseconds per query (median over queries of the median of
``--repeats`` timed calls, after a warm-up call that compiles the shape):

- ``full``: the model scores the (query, 100 documents) from token ids, documents encoded too
  (what the train step and the study's evaluation run);
- ``cached``: documents encoded at index time (:func:`pile_jax.models.students.precompute_documents`),
  only the query side and the interaction timed (:func:`score_with_cache`), as the Margin-MSE
  paper's latency assumes for BERT-dot, ColBERT, PreTT and TK. A cross-encoder has no cache.

Tokenisation is timed apart (``featurize``). Latency does not depend on the trained weights, so
the students are measured at their initialisation.

    python bench/student_latency.py --json latency.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as B  # noqa: E402

STUDENTS = {
    "cross_encoder": {"kind": "cross_encoder", "num_layers": 2},
    "bert_dot": {"kind": "bert_dot", "num_layers": 2},
    "colbert": {"kind": "colbert", "num_layers": 2},
    "prett": {"kind": "prett", "num_layers": 2, "split_layer": 1},
    "tk": {"kind": "tk", "tk_layers": 2},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-length", type=int, default=64, help="cross-encoder pair tokens (study default)")
    p.add_argument("--max-query-length", type=int, default=32)
    p.add_argument("--max-doc-length", type=int, default=48, help="two-tower document tokens (study default)")
    p.add_argument("--students", default=",".join(STUDENTS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from pile_jax import rankers
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection
    from pile_jax.models import students as S
    from pile_jax.train.loop import cached_scorer

    coll = load_collection("cranfield")
    qids = coll.split_qids("test")[: args.queries]
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=args.candidates)
    queries = [coll.queries[q] for q in qids]
    docs = [[coll.docs[d] for d in run[q]] for q in qids]

    def timed(fn):
        jax.block_until_ready(fn())          # compile this shape
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    rows, out = [], {"env": B.jax_env(), "args": vars(args), "students": {}}
    for name in args.students.split(","):
        spec = dict(STUDENTS[name])
        kind = spec.pop("kind")
        ranker = rankers.student(kind, max_length=args.max_length, max_query_length=args.max_query_length,
                                 max_doc_length=args.max_doc_length, **spec)
        module, params = ranker.meta["module"], ranker.params
        scorer = cached_scorer(ranker.score_fn)
        full, cached, feat = [], [], []
        for q, ds in zip(queries, docs):
            t0 = time.perf_counter()
            feats = ranker.featurize([q], [ds])
            feat.append((time.perf_counter() - t0) * 1e3)
            feats["mask"] = np.ones((1, len(ds)), bool)
            full.append(timed(lambda: scorer(params, feats)))
            if kind != "cross_encoder":
                cache = S.precompute_documents(module, params, jnp.asarray(feats["doc_ids"][0]),
                                               jnp.asarray(feats["doc_mask"][0]),
                                               query_length=feats["query_ids"].shape[-1])
                cache = {"reps": cache["reps"], "mask": cache["mask"]}   # arrays only: a jit argument
                fn = jax.jit(lambda p, qi, qm, c: S.score_with_cache(module, p, qi, qm, c))
                qi, qm = jnp.asarray(feats["query_ids"]), jnp.asarray(feats["query_mask"])
                cached.append(timed(lambda: fn(params, qi, qm, cache)))
        res = {"full_ms": statistics.median(full), "cached_ms": statistics.median(cached) if cached else None,
               "featurize_ms": statistics.median(feat)}
        out["students"][name] = res
        rows.append([name, res["full_ms"], res["cached_ms"], res["featurize_ms"]])
        print(f"{name}: full {res['full_ms']:.1f} ms, cached {B.fmt(res['cached_ms'])} ms, "
              f"tokenisation {res['featurize_ms']:.1f} ms", flush=True)
    print()
    print(f"{args.candidates} candidates per query, {len(qids)} Cranfield test queries, {out['env']['device_kind']} "
          f"({os.cpu_count()} cores visible)")
    print(B.markdown_table(["student", "full ms/query", "cached docs ms/query", "tokenisation ms"], rows))
    B.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
