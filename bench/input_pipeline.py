#!/usr/bin/env python
"""Input-pipeline throughput: pairs/s from the on-disk dataset to device-ready int32 batches.

Cranfield, BM25 top-``depth`` of every query (``pile_jax.bm25``, as the pipeline does), the
all-MiniLM-L6-v2 tokenizer (cross-encoder pairs), ``max_length`` 256. No model runs: this is the
host side that must keep an accelerator fed.

- **tokenise once**: building the train collate tokenises every query and document of the
  collection (the Rust batch path, all cores); reported apart, as texts/s and as the pairs/s
  it amounts to for the candidate pairs.
- **(a) training groups** (n = ``list_size``, ``groups`` per batch): the candidate lists cut into
  groups, written as the TFDS ArrayRecord dataset the pipeline trains from; pairs/s of
  ``make_collate`` on read records (assembly from ids), and through the grain loader (the records
  read from disk once into columns -- reported apart -- then batches built and prefetched in a
  background thread), and with ``jax.device_put`` of every batch.
- **(b) scoring pairs**: ``score_pairs``' host side: the pairs' unique texts tokenised, sorted by
  token length, every batch assembled from ids (pre-tokenised: assembly only; and text in:
  tokenisation included), plus ``score_pairs`` end to end with a trivial device scorer.

Pairs are slots of the assembled batches (B x n, padding items of short lists included).

    python bench/input_pipeline.py --json input_pipeline.json --md input_pipeline.md
    python bench/input_pipeline.py --smoke          # tiny, for the test suite (no timing asserted)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FULL = dict(queries=None, depth=100, max_length=256, max_query_length=64, list_size=8, groups=32,
            score_batch=256, repeats=3)
SMOKE = dict(queries=4, depth=10, max_length=64, max_query_length=16, list_size=4, groups=2, score_batch=8,
             repeats=1)
MODEL = "all-MiniLM-L6-v2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", default="cranfield")
    p.add_argument("--queries", type=int, default=None, help="first N queries (all; smoke 4)")
    p.add_argument("--depth", type=int, default=None, help="BM25 candidates per query (100; smoke 10)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per pair (256)")
    p.add_argument("--max-query-length", type=int, default=None, help="query token budget (64)")
    p.add_argument("--list-size", type=int, default=None, help="n, documents per training group (8)")
    p.add_argument("--groups", type=int, default=None, help="groups per training batch (32)")
    p.add_argument("--score-batch", type=int, default=None, help="pairs per scoring batch (256)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes; median (3)")
    p.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None, help="write the Markdown summary here too")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.torch_compile = False   # fill_defaults' peer option; no peer here
    return C.fill_defaults(args, smoke=SMOKE, full=FULL)


def _grain_loader(source, collate, batch_size: int, seed: int):
    from pile_jax.data.loader import make_train_loader

    return make_train_loader(source, global_batch_size=batch_size, seed=seed, collate=collate)


# The loader under test: anything with next_batch() -> batch.
make_loader = _grain_loader


def candidate_groups(coll, run, qids, n: int) -> dict:
    """Every query's candidate list cut into groups of ``n`` (the last padded with ""): the
    groups layout of :mod:`pile_jax.data.groups`, BM25 and a noisy copy as two teachers."""
    rng = np.random.default_rng(0)
    out = {"query_id": [], "doc_ids": [], "labels": [], "label_mask": [], "mask": [], "teacher_scores": []}
    for q in qids:
        cands = list(run.get(q, {}))
        for start in range(0, len(cands), n):
            chunk = cands[start:start + n]
            k = len(chunk)
            bm = np.zeros(n, np.float32)
            bm[:k] = [run[q][d] for d in chunk]
            out["query_id"].append(q)
            out["doc_ids"].append(chunk + [""] * (n - k))
            out["labels"].append(np.asarray([coll.qrels.get(q, {}).get(d, 0) for d in chunk] + [0] * (n - k), np.float32))
            out["mask"].append(np.arange(n) < k)
            out["label_mask"].append(np.arange(n) < k)
            out["teacher_scores"].append(np.stack([bm, bm + rng.normal(0, 1, n).astype(np.float32) * (np.arange(n) < k)]))
    G = len(out["query_id"])
    groups = {k: (np.stack(v) if k not in ("query_id", "doc_ids") else v) for k, v in out.items()}
    groups["doc_ids"] = np.asarray(out["doc_ids"], dtype=np.str_).reshape(G, n)
    groups["teacher_names"] = ["bm25", "bm25_noisy"]
    return groups


def main(argv=None) -> dict:
    args = parse_args(argv)
    import logging

    import jax

    from pile_jax import rankers
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection
    from pile_jax.data.tfds_builder import build_ranking_groups_dataset
    from pile_jax.scoring import make_collate, pair_batches, score_pairs
    from pile_jax.train.loop import Ranker

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    coll = load_collection(args.collection)
    qids = list(coll.queries)[: args.queries] if args.queries else list(coll.queries)
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=args.depth)
    pairs = [(coll.queries[q], coll.docs[d]) for q in qids for d in run.get(q, {})]
    cross = rankers.cross_encoder(MODEL, num_layers=1, max_length=args.max_length,
                                  max_query_length=args.max_query_length)
    feats = cross.meta["features"]
    # a ranker with the same featuriser and a trivial device scorer: the host side in isolation
    ranker = Ranker(params={"w": np.ones((), np.float32)}, kind="cross_encoder", featurize=feats.featurize,
                    meta={"features": feats},
                    score_fn=lambda p, b, rng=None, train=False: p["w"] * b["attention_mask"].sum(-1).astype(np.float32))
    out = {"env": C.jax_env(), "args": {k: v for k, v in vars(args).items() if k not in ("json", "md")},
           "queries": len(qids), "pairs": len(pairs), "cpu_count": os.cpu_count()}

    # ---- tokenise once (the whole collection's queries and documents)
    t0 = time.perf_counter()
    collate = make_collate(ranker, coll.queries, coll.docs)
    tok_s = time.perf_counter() - t0
    texts = len(coll.queries) + len(coll.docs)
    out.update(tokenize_s=tok_s, tokenize_texts_per_s=texts / tok_s, tokenize_pairs_per_s=len(pairs) / tok_s,
               tokens_stored=int(len(collate.query_store.tokens) + len(collate.doc_store.tokens)))

    # ---- (a) training groups from the on-disk ArrayRecord dataset
    groups = candidate_groups(coll, run, qids, args.list_size)
    B, n = args.groups, args.list_size
    with tempfile.TemporaryDirectory() as tmp:
        builder = build_ranking_groups_dataset({"train": groups}, tmp, name="bench_input_pipeline", overwrite=True)
        source = builder.as_data_source()["train"]
        G = len(source)
        steps = G // B
        records = list(source.__getitems__(list(range(G))))
        batches = [records[i * B:(i + 1) * B] for i in range(steps)]
        t = C.time_calls(lambda: [collate(b) for b in batches], warmup=1, iters=args.repeats, sync=lambda x: x)
        out["train_collate_pairs_per_s"] = steps * B * n / t["median"]
        lengths = collate.group_lengths([r["query_id"] for r in records], np.stack([r["doc_ids"] for r in records]))
        out["train_avg_group_tokens"] = float(lengths.mean())

        from pile_jax.data.loader import ColumnarSource

        t0 = time.perf_counter()
        source = ColumnarSource(source)       # the loader's one-time read of the on-disk records
        out["read_dataset_s"] = time.perf_counter() - t0
        out["read_dataset_pairs_per_s"] = G * n / out["read_dataset_s"]
        loader = make_loader(source, collate, B, args.seed)

        def through_loader(put=False):
            last = None
            for _ in range(steps):
                b = loader.next_batch()
                last = jax.device_put(b) if put else b
            return last

        t = C.time_calls(through_loader, warmup=1, iters=args.repeats, sync=lambda x: x)
        out["train_loader_pairs_per_s"] = steps * B * n / t["median"]
        t = C.time_calls(lambda: through_loader(True), warmup=1, iters=args.repeats, sync=jax.block_until_ready)
        out["train_loader_device_put_pairs_per_s"] = steps * B * n / t["median"]
        loader.close()
        example = collate(batches[0])
        assert all(example[k].dtype == np.int32 for k in ("input_ids", "attention_mask", "token_type_ids"))

    # ---- (b) scoring pairs: score_pairs' host side
    S = args.score_batch

    def assemble_all(lengths, make_batch):
        order = np.argsort(lengths, kind="stable")
        return [make_batch(order[i:i + S], S) for i in range(0, len(order), S)]

    lengths, make_batch = pair_batches(ranker.meta["features"], pairs)
    t = C.time_calls(lambda: assemble_all(lengths, make_batch), warmup=1, iters=args.repeats, sync=lambda x: x)
    out["score_assemble_pairs_per_s"] = len(pairs) / t["median"]
    padded = [b["input_ids"].shape[-1] for b in assemble_all(lengths, make_batch)]
    out["score_avg_padded_tokens"] = float(np.mean(padded))
    out["score_avg_tokens"] = float(np.mean(lengths))
    t = C.time_calls(lambda: assemble_all(*pair_batches(ranker.meta["features"], pairs)), warmup=1, iters=args.repeats,
                     sync=lambda x: x)
    out["score_text_in_host_pairs_per_s"] = len(pairs) / t["median"]
    t = C.time_calls(lambda: score_pairs(ranker, ranker.params, pairs, batch_size=S), warmup=1,
                     iters=args.repeats, sync=lambda x: x)
    out["score_pairs_e2e_trivial_model_pairs_per_s"] = len(pairs) / t["median"]

    md = (f"input pipeline ({'SMOKE, ' if args.smoke else ''}{args.collection} BM25 top-{args.depth}, "
          f"{len(qids)} queries, {len(pairs)} pairs, max_length {args.max_length}, {os.cpu_count()} CPUs, "
          f"{out['env']['device_kind']}): tokenise once {out['tokenize_texts_per_s']:,.0f} texts/s "
          f"(= {out['tokenize_pairs_per_s']:,.0f} pairs/s); train groups n={n} x {B}: collate "
          f"{out['train_collate_pairs_per_s']:,.0f} pairs/s, grain loader (ArrayRecord read once: "
          f"{out['read_dataset_pairs_per_s']:,.0f} pairs/s) {out['train_loader_pairs_per_s']:,.0f}, + device_put {out['train_loader_device_put_pairs_per_s']:,.0f}; "
          f"scoring batches of {S}: assembly {out['score_assemble_pairs_per_s']:,.0f} pairs/s, text in "
          f"{out['score_text_in_host_pairs_per_s']:,.0f}, score_pairs end to end (trivial model) "
          f"{out['score_pairs_e2e_trivial_model_pairs_per_s']:,.0f}")
    print(md)
    out["markdown"] = md
    C.write_json(args.json, out)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    return out


if __name__ == "__main__":
    main()
