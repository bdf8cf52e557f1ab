#!/usr/bin/env python
"""The cost of the precision policy (pile_jax/numerics.py): scoring at HIGHEST matmul precision
against the device's default, on real Cranfield pairs with the real all-MiniLM-L6-v2 weights.

For each compute dtype (float32, bfloat16) and each ``jax.default_matmul_precision`` setting
(``default``: TF32 on A100/H100, bf16 passes on TPU, exact float32 on CPU; ``highest``: float32),
the jit'd cross-encoder forward (all 6 layers, ``max_length`` tokens, ``--batch`` pairs a call)
scores the same length-bucketed batches: pairs/s (median of ``--repeats`` passes after a
warm-up pass that compiles) and the largest score difference from the ``float32 / highest`` run
(what a float32 reference gives). The policy runs every scoring call at ``highest``; training
keeps the encoder body at ``default`` (only the score op itself is HIGHEST).

    python bench/precision_cost.py [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="256 pairs, max_length 64, 1 repeat")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.smoke:
        args.pairs, args.max_length, args.repeats, args.batch = 256, 64, 1, 64

    import jax
    import numpy as np

    from pile_jax import rankers
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection
    from pile_jax.scoring import pair_batches
    from pile_jax.train.step import eval_scores_fn

    coll = load_collection("cranfield")
    qids = list(coll.queries)[:max(1, args.pairs // 100 + 1)]
    ranked = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=100)
    pairs = [(coll.queries[q], coll.docs[d]) for q in qids for d in ranked[q]][:args.pairs]
    device = jax.devices()[0]
    rows = []
    ref = None
    for dtype in ("float32", "bfloat16"):
        ranker = rankers.cross_encoder("all-MiniLM-L6-v2", max_length=args.max_length, max_query_length=32,
                                       dtype=dtype, new_head=True, seed=0)
        lengths, make_batch = pair_batches(ranker.meta["features"], pairs)
        order = np.argsort(lengths, kind="stable")
        batches = [make_batch(order[i:i + args.batch], args.batch) for i in range(0, len(pairs), args.batch)]
        params = jax.device_put(ranker.params)
        for precision in ("highest", "default"):
            fn = eval_scores_fn(ranker.score_fn)
            with jax.default_matmul_precision(precision):
                def one_pass():
                    outs = [fn(params, b) for b in batches]
                    return np.concatenate([np.asarray(o)[:, 0] for o in outs])
                scores = one_pass()   # compiles every bucket
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    scores = one_pass()
                    times.append(time.perf_counter() - t0)
            full = np.zeros(len(pairs), np.float32)
            for k, i in enumerate(range(0, len(pairs), args.batch)):
                idx = order[i:i + args.batch]
                full[idx] = scores[k * args.batch:k * args.batch + len(idx)]
            if ref is None:
                ref = full
            rows.append({"dtype": dtype, "precision": precision, "pairs_per_s": len(pairs) / statistics.median(times),
                         "max_abs_diff_vs_f32_highest": float(np.max(np.abs(full - ref)))})
    head = (f"precision cost, {device.platform} ({getattr(device, 'device_kind', '?')}), {len(pairs)} Cranfield pairs, "
            f"all-MiniLM-L6-v2 cross-encoder, max_length {args.max_length}, batch {args.batch}")
    lines = [head, "", "| compute dtype | matmul precision | pairs/s | max abs score diff vs float32/highest |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['precision']} | {r['pairs_per_s']:.1f} | {r['max_abs_diff_vs_f32_highest']:.2e} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "rows": rows, "table": "\n".join(lines)}, f, indent=1)


if __name__ == "__main__":
    main()
