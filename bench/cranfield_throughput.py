#!/usr/bin/env python
"""Throughput on real data: Cranfield (query, doc) pairs (BM25 top-k of every query), real
all-MiniLM-L6-v2 weights, max_length 512.

pile_jax pads each batch only to the smallest length bucket that fits it (pairs sorted by
length): scoring through ``pile_jax.train.loop.score_pairs`` (text in, scores out) and training
(the jit'd train step with the in-step PILE ensemble) on length-bucketed batches of ranking
groups. The Hugging Face PyTorch peer (``AutoModelForSequenceClassification``, bf16 autocast,
``torch.compile``, AdamW) pads every batch to max_length, as its usual pipeline does.

Reported: pairs/s for scoring end to end (tokenisation included) and on pre-tokenised batches
(device only), train pairs/s on pre-tokenised batches (one epoch over every group), the average
token length of a pair and the average padded length each side computes on.

    python bench/cranfield_throughput.py --json cranfield_throughput.json     # accelerator
    python bench/cranfield_throughput.py --smoke --json smoke.json             # CPU check

The peer runs first, in a child process (separate GPU memory pools).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FULL = dict(queries=None, depth=100, max_length=512, num_layers=None, score_batch=256, groups=32,
            list_size=8, repeats=3, epochs=1)
SMOKE = dict(queries=4, depth=8, max_length=512, num_layers=1, score_batch=16, groups=4, list_size=4,
             repeats=1, epochs=1)
MODEL = "all-MiniLM-L6-v2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", default="cranfield")
    p.add_argument("--queries", type=int, default=None, help="use the first N queries (all; smoke 4)")
    p.add_argument("--depth", type=int, default=None, help="BM25 candidates per query (100; smoke 8)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per pair (512)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="keep the first k layers of the model (all 6; smoke 1)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--score-batch", type=int, default=None, help="pairs per scoring batch (256; smoke 16)")
    p.add_argument("--groups", type=int, default=None, help="ranking groups per train step (32; smoke 4)")
    p.add_argument("--list-size", type=int, default=None, help="candidates per group (8; smoke 4)")
    p.add_argument("--teachers", type=int, default=4, help="synthetic teachers for the in-step PILE")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed passes over all pairs after a warm-up pass; median (3; smoke 1)")
    p.add_argument("--epochs", type=int, default=None, help="timed train epochs after a warm-up (1)")
    p.add_argument("--peer", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--peer-autocast", choices=("bfloat16", "float32"), default=None,
                   help="peer compute dtype (default: --dtype; float32 for --smoke without CUDA)")
    p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the peer (default: on, off with --smoke)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-score", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny CPU check (4 queries x 8 candidates, first layer only)")
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    C.fill_defaults(args, smoke=SMOKE, full=FULL)
    return args


# ------------------------------------------------------------------ data (shared by both sides)


def load_data(args) -> dict:
    """Queries, BM25 candidates, (query, doc) pairs and ranking groups, deterministic."""
    import logging

    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection

    logging.getLogger("bm25s").setLevel(logging.WARNING)

    coll = load_collection(args.collection)
    qids = list(coll.queries)[: args.queries] if args.queries else list(coll.queries)
    t0 = time.perf_counter()
    run = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=args.depth)
    bm25_s = time.perf_counter() - t0
    pairs, groups = [], []
    rng = np.random.default_rng(args.seed)
    n, T = args.list_size, args.teachers
    for q in qids:
        cands = list(run.get(q, {}))
        for i, d in enumerate(cands):
            pairs.append((coll.queries[q], coll.docs[d]))
        for start in range(0, len(cands), n):
            chunk = cands[start:start + n]
            k = len(chunk)
            grades = np.zeros(n, np.float32)
            grades[:k] = [coll.qrels.get(q, {}).get(d, 0) for d in chunk]
            bm = np.zeros(n, np.float32)
            bm[:k] = [run[q][d] for d in chunk]
            bm = (bm - bm[:k].mean()) / (bm[:k].std() + 1e-6)
            teachers = bm[None] + grades[None] + rng.normal(0.0, 1.5, (T, n)).astype(np.float32)
            mask = np.arange(n) < k
            groups.append({"query": coll.queries[q], "docs": [coll.docs[d] for d in chunk] + [""] * (n - k),
                           "labels": grades, "mask": mask, "teacher_scores": teachers.astype(np.float32)})
    return {"qids": qids, "pairs": pairs, "groups": groups, "bm25_s": bm25_s}


def batch_groups(groups, B: int, lengths, seed: int):
    """Groups sorted by their longest pair, cut into full batches of ``B`` (the remainder is
    dropped), batch order shuffled (seeded): what a length-bucketed train loader yields."""
    order = np.argsort([max(lengths[i]) for i in range(len(groups))], kind="stable")
    batches = [order[i:i + B] for i in range(0, len(order) - B + 1, B)]
    np.random.default_rng(seed).shuffle(batches)
    return batches


def group_arrays(groups, idx) -> dict:
    g = [groups[i] for i in idx]
    teachers = np.stack([x["teacher_scores"] for x in g])
    mask = np.stack([x["mask"] for x in g])
    return {"labels": np.stack([x["labels"] for x in g]), "mask": mask, "label_mask": mask,
            "teacher_scores": teachers, "target": teachers.mean(1)}


# ------------------------------------------------------------------ PyTorch peer


def run_peer_worker(args) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the truncated checkpoint's load report

    from pile_jax.models import resolve_model_path

    if args.peer_autocast is None:
        args.peer_autocast = "float32" if (args.smoke and not torch.cuda.is_available()) else args.dtype
    torch.manual_seed(args.seed)
    path = str(resolve_model_path(MODEL))
    tok = AutoTokenizer.from_pretrained(path)
    kwargs = {"num_hidden_layers": args.num_layers} if args.num_layers else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    peer = C.TorchPeer(model, compile=args.torch_compile, autocast_dtype=args.peer_autocast)
    data = load_data(args)
    L = args.max_length

    def encode(qs, ds):
        enc = tok(list(qs), list(ds), padding="max_length", truncation="longest_first", max_length=L,
                  return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}

    out = {"torch": torch.__version__, "device": str(C.torch_device()), "compile": args.torch_compile,
           "autocast": args.peer_autocast,
           "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    pairs = data["pairs"]
    S = args.score_batch
    if not args.skip_score:
        chunks = [pairs[i:i + S] for i in range(0, len(pairs), S)]

        def pad_rows(enc, rows):  # the last batch padded to S rows (one compiled shape)
            return {k: np.concatenate([v, np.zeros((rows - len(v),) + v.shape[1:], v.dtype)]) for k, v in enc.items()}

        def e2e():
            res = []
            for c in chunks:
                enc = pad_rows(encode([q for q, _ in c], [d for _, d in c]), S)
                res.append(peer.score(peer.to_device(enc))[: len(c)])
            return torch.cat(res).cpu()

        t = C.time_calls(e2e, warmup=1, iters=args.repeats, sync=peer.sync)
        out["score_e2e_pairs_per_s"] = len(pairs) / t["median"]
        pre = [peer.to_device(pad_rows(encode([q for q, _ in c], [d for _, d in c]), S)) for c in chunks]

        def dev():
            return [peer.score(b) for b in pre][-1]

        t = C.time_calls(dev, warmup=1, iters=args.repeats, sync=peer.sync)
        out["score_device_pairs_per_s"] = len(pairs) / t["median"]
        print(f"[peer] score: {out['score_e2e_pairs_per_s']:,.1f} pairs/s end to end, "
              f"{out['score_device_pairs_per_s']:,.1f} on device", file=sys.stderr, flush=True)
    if not args.skip_train:
        groups = data["groups"]
        lengths = [[L] * args.list_size for _ in groups]
        batches = batch_groups(groups, args.groups, lengths, args.seed)
        dev_batches, real = [], 0
        for idx in batches:
            g = group_arrays(groups, idx)
            qs = [groups[i]["query"] for i in idx for _ in range(args.list_size)]
            ds = [d for i in idx for d in groups[i]["docs"]]
            enc = encode(qs, ds)
            B, n = len(idx), args.list_size
            g.update({k: v.reshape(B, n, L) for k, v in enc.items()})
            g.pop("teacher_scores")
            real += int(g["mask"].sum())
            dev_batches.append(peer.to_device(g))

        def epoch():
            loss = None
            for b in dev_batches:
                loss = peer.train_step(b)
            return loss

        epoch()  # warm-up (compilation)
        t = C.time_calls(epoch, warmup=0, iters=args.epochs, sync=lambda loss: (peer.sync(None), float(loss.detach())))
        out["train_pairs_per_s"] = real / t["median"]
        out["train_real_pairs"] = real
        print(f"[peer] train: {out['train_pairs_per_s']:,.1f} pairs/s", file=sys.stderr, flush=True)
    return out


def run_peer(args, argv) -> dict | None:
    if args.peer == "off" or (args.peer == "auto" and not C.torch_available()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "peer.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--peer-worker", "--json", path])
        if proc.returncode != 0:
            msg = f"PyTorch peer failed (exit {proc.returncode})"
            if args.peer == "on":
                raise SystemExit(msg)
            print(msg + "; continuing without it", file=sys.stderr)
            return None
        with open(path) as f:
            return json.load(f)


# ------------------------------------------------------------------ pile_jax


def run_pile_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from pile_jax import rankers
    from pile_jax.scoring import cached_scorer, pair_batches, score_pairs
    from pile_jax.train.objective import Objective
    from pile_jax.train.optim import make_optimizer
    from pile_jax.train.step import create_train_state, make_train_step

    data = load_data(args)
    ranker = rankers.cross_encoder(MODEL, num_layers=args.num_layers, max_length=args.max_length,
                                   dtype=args.dtype)
    tokenizer = ranker.meta["tokenizer"]
    pairs = data["pairs"]
    t0 = time.perf_counter()
    lengths, make_batch = pair_batches(ranker.meta["features"], pairs)   # what score_pairs does: tokenise each unique text once
    tokenize_s = time.perf_counter() - t0
    out = {"env": C.jax_env(), "queries": len(data["qids"]), "pairs": len(pairs), "groups": len(data["groups"]),
           "bm25_s": data["bm25_s"], "avg_tokens": float(lengths.mean()), "median_tokens": float(np.median(lengths)),
           "max_tokens": int(lengths.max()), "truncated_frac": float((lengths >= args.max_length).mean()),
           "tokenize_pairs_per_s": len(pairs) / tokenize_s, "buckets": list(tokenizer.buckets)}
    S = args.score_batch

    if not args.skip_score:
        # the padded length each score_pairs batch computes on (pairs sorted by token length)
        order = np.argsort(lengths, kind="stable")
        padded = [tokenizer.bucket_for(int(lengths[order[i:i + S]].max())) for i in range(0, len(pairs), S)]
        out["score_avg_padded_tokens"] = float(np.mean(padded))
        out["score_bucket_counts"] = {int(b): padded.count(b) for b in sorted(set(padded))}
        scorer = cached_scorer(ranker.score_fn)
        params = ranker.params
        t = C.time_calls(lambda: score_pairs(ranker, params, pairs, batch_size=S, scorer=scorer),
                         warmup=1, iters=args.repeats, sync=lambda x: x)
        out["score_e2e_pairs_per_s"] = len(pairs) / t["median"]
        out["score_first_pass_s"] = t["first"]
        # device only: the same batches, tokenised up front
        feats = []
        for i in range(0, len(pairs), S):
            feats.append(jax.device_put(make_batch(order[i:i + S], S)))

        def dev():
            return [scorer(params, f) for f in feats]

        t = C.time_calls(dev, warmup=1, iters=args.repeats, sync=jax.block_until_ready)
        out["score_device_pairs_per_s"] = len(pairs) / t["median"]
        print(f"[pile_jax] score: {out['score_e2e_pairs_per_s']:,.1f} pairs/s end to end, "
              f"{out['score_device_pairs_per_s']:,.1f} on device", file=sys.stderr, flush=True)

    if not args.skip_train:
        groups = data["groups"]
        n = args.list_size
        enc = tokenizer.tokenize([g["query"] for g in groups for _ in range(n)], [d for g in groups for d in g["docs"]])
        glen = [[len(enc[i * n + j][0]) for j in range(n)] for i in range(len(groups))]
        batches = batch_groups(groups, args.groups, glen, args.seed)
        objective = Objective.from_config({
            "label_losses": {"pairwise_logistic": 1.0}, "distill_losses": {"margin_mse": 1.0},
            "target": "ensemble", "ensemble": {"name": "pile"}})
        tx = make_optimizer(learning_rate=3e-5, warmup_steps=100, total_steps=100_000)
        step = make_train_step("none", score_fn=ranker.score_fn, objective=objective, tx=tx)
        dev_batches, real, padded = [], 0, []
        for idx in batches:
            b = group_arrays(groups, idx)
            b.pop("target")
            rows = [enc[i * n + j] for i in idx for j in range(n)]
            tok = tokenizer.pad(rows)
            Lb = tok["input_ids"].shape[1]
            padded.append(Lb)
            b.update({k: v.reshape(len(idx), n, Lb) for k, v in tok.items()})
            real += int(b["mask"].sum())
            dev_batches.append(jax.device_put(b))
        out["train_avg_padded_tokens"] = float(np.mean(padded))
        out["train_bucket_counts"] = {int(x): padded.count(x) for x in sorted(set(padded))}
        out["train_real_pairs"] = real
        state = {"s": create_train_state(jax.tree_util.tree_map(jnp.copy, ranker.params), tx, jax.random.key(args.seed))}

        def epoch():
            m = None
            for b in dev_batches:
                state["s"], m = step(state["s"], b)
            return m

        # warm-up: one batch per distinct shape compiles every bucket
        t0 = time.perf_counter()
        seen = set()
        for b in dev_batches:
            if b["input_ids"].shape not in seen:
                seen.add(b["input_ids"].shape)
                state["s"], m = step(state["s"], b)
                jax.block_until_ready(m)
        out["train_compile_s"] = time.perf_counter() - t0
        t = C.time_calls(epoch, warmup=0, iters=args.epochs, sync=jax.block_until_ready)
        out["train_pairs_per_s"] = real / t["median"]
        print(f"[pile_jax] train: {out['train_pairs_per_s']:,.1f} pairs/s", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------ report


def report(args, jx: dict, peer: dict | None) -> str:
    env = jx["env"]
    head = (f"## Cranfield throughput ({'SMOKE, ' if args.smoke else ''}{env['device_kind']}, {env['backend']})\n\n"
            f"{jx['queries']} queries x BM25 top-{args.depth} = {jx['pairs']} pairs, {MODEL}"
            f"{'' if not args.num_layers else f' (first {args.num_layers} layer(s))'}, max_length {args.max_length}, "
            f"{args.dtype}; avg {jx['avg_tokens']:.1f} tokens/pair (median {jx['median_tokens']:.0f}, "
            f"{100 * jx['truncated_frac']:.1f}% truncated); pile_jax buckets {jx['buckets']}; "
            f"train: {args.groups} groups x {args.list_size}, pairwise_logistic + margin_mse to in-step PILE of "
            f"{args.teachers} teachers"
            + (f"; peer: HF PyTorch {peer['torch']} on {peer['device_name']}"
               f"{' + torch.compile' if peer['compile'] else ' (eager)'}, {peer['autocast']}, padded to "
               f"{args.max_length}" if peer else "; peer: not run") + "\n")
    p = peer or {}
    ratio = lambda a, b: None if not (a and b) else f"{a / b:.2f}x"
    rows = []
    for key, label, padded in (("score_e2e_pairs_per_s", "score, end to end (text in)", "score_avg_padded_tokens"),
                               ("score_device_pairs_per_s", "score, pre-tokenised", "score_avg_padded_tokens"),
                               ("train_pairs_per_s", "train step, pre-tokenised", "train_avg_padded_tokens")):
        if key not in jx:
            continue
        rows.append([label, jx[key], jx.get(padded), p.get(key), args.max_length if peer else None,
                     ratio(jx[key], p.get(key))])
    table = C.markdown_table(["what", "pile_jax pairs/s", "pile_jax avg padded len", "HF pairs/s",
                              "HF padded len", "ratio"], rows)
    text = head + "\n" + table
    if not args.smoke and args.max_length == 512 and not args.num_layers and args.dtype == "bfloat16":
        rows = []
        for kind, key in (("train", "train_pairs_per_s"), ("score", "score_e2e_pairs_per_s")):
            if key in jx:
                r = jx[key] / C.HF_H100_CRANFIELD[kind]
                rows.append([kind, jx[key], C.HF_H100_CRANFIELD[kind], f"{r:.2f}x",
                             f">= {C.CRANFIELD_TARGET_RATIO}x", "yes" if r >= C.CRANFIELD_TARGET_RATIO else "NO"])
        text += "\n\nAgainst the H100 reference (HF PyTorch pads to 512):\n\n" + C.markdown_table(
            ["kind", "pile_jax pairs/s", "HF H100 ref", "ratio", "target", "met"], rows)
    return text


def main(argv=None):
    C.bench_main(argv, parse_args=parse_args, run_peer_worker=run_peer_worker, run_peer=run_peer,
                 run_pile_jax=run_pile_jax, report=report)

if __name__ == "__main__":
    main()
