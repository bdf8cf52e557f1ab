"""Padding of training batches on real Cranfield groups: random batches vs length-aware batches.

Not a speed benchmark: it counts tokens. Groups are the train queries' BM25 top-``n`` candidates
(what `pile-jax train` builds); each pair's token length is the MiniLM tokenizer's count after the
query budget / truncation contract (``PairTokenizer.pair_lengths``); a group needs the bucket of
its longest pair; a batch pads every pair of every group to the bucket of its longest group.
For each setting, over ``--epochs`` epochs of :func:`pile_jax.data.sampler.epoch_batches`:

    padded tokens / real tokens,   real = sum of the pair lengths of the real (unmasked) pairs

``window=0`` is the plain shuffled order (no lengths), ``window=k`` sorts ``k * B`` groups at a time.

    python bench/length_padding.py [--collection cranfield] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def group_pair_lengths(collection: str, group_size: int, max_length: int, max_query_length: int):
    """int64 [G, n] pair token lengths (0 = padding slot) of the train groups."""
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection
    from pile_jax.models.tokenize import PairTokenizer

    coll = load_collection(collection)
    qids = coll.split_qids("train")
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=group_size)
    tok = PairTokenizer("all-MiniLM-L6-v2", max_length=max_length, max_query_length=max_query_length)
    out = np.zeros((len(qids), group_size), np.int64)
    for g, q in enumerate(qids):
        docs = list(run[q])[:group_size]
        if docs:
            out[g, :len(docs)] = tok.pair_lengths([coll.queries[q]] * len(docs), [coll.docs[d] for d in docs])
    return out, tok.buckets


def padding_ratio(pair_lengths: np.ndarray, batches: np.ndarray, buckets) -> tuple[int, int]:
    """(padded tokens, real tokens) over ``batches`` [S, B] of group indices."""
    buckets = np.asarray(buckets)
    group_len = pair_lengths.max(1)
    padded = real = 0
    n = pair_lengths.shape[1]
    for batch in batches:
        longest = group_len[batch].max()
        L = buckets[np.searchsorted(buckets, longest)]
        allocated = len(batch) * n * L
        used = int(pair_lengths[batch].sum())
        padded += allocated - used
        real += used
    return padded, real


def main(argv=None):
    from pile_jax.data.sampler import epoch_batches

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--collection", default="cranfield")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for max_length, max_query_length in ((256, 32), (512, 64)):
        for n in (8, 16):
            lengths, buckets = group_pair_lengths(args.collection, n, max_length, max_query_length)
            G = len(lengths)
            bucketed = np.asarray(buckets)[np.searchsorted(buckets, lengths.max(1))]
            for B in (b for b in (8, 32) if b <= len(lengths)):
                for window in (0, 1, 4, 16):
                    padded = real = 0
                    for epoch in range(args.epochs):
                        batches = epoch_batches(G, B, seed=0, epoch=epoch,
                                                lengths=bucketed if window else None, window=max(window, 1))
                        p, r = padding_ratio(lengths, batches, buckets)
                        padded, real = padded + p, real + r
                    rows.append({"max_length": max_length, "n": n, "groups": G, "B": B, "window": window,
                                 "padded_per_real": padded / real, "pad_fraction": padded / (padded + real)})
    print("| max_length | n | groups | B | window | padded / real tokens | padding share |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        w = "random" if r["window"] == 0 else f"{r['window']}"
        print(f"| {r['max_length']} | {r['n']} | {r['groups']} | {r['B']} | {w} | "
              f"{r['padded_per_real']:.3f} | {100 * r['pad_fraction']:.1f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
