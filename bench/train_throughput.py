#!/usr/bin/env python
"""Cross-encoder train-step and scoring throughput of pile_jax (random weights, fixed shapes),
model FLOP utilisation, the in-step PILE ensemble's share of the step, and, when PyTorch is
importable, the Hugging Face peer (``AutoModelForSequenceClassification``, bf16 autocast,
``torch.compile``, AdamW) on the same batches.

Full settings (the defaults) are meant for one accelerator (H100 targets: see bench/README.md)::

    python bench/train_throughput.py --json train_throughput.json

CPU check of every code path at a tiny scale (2 layers, seq 64, a few iterations)::

    python bench/train_throughput.py --smoke --json smoke.json

The PyTorch peer runs first, in a child process (so JAX's GPU memory pool and torch's never
share the device); then pile_jax runs in this process.
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

# Per-model full-scale batch: (groups per train step, pairs per scoring call).
FULL_BATCH = {"minilm-l6": (32, 1024), "bert-base": (16, 512), "bert-large": (8, 256)}
# Settings that --smoke changes (an explicit flag still wins).
FULL = dict(seq=256, list_size=8, groups=None, score_batch=None, max_layers=None, warmup=5, iters=20,
            ensemble_repeats=64, vocab=30522, ensemble_delta="all")
SMOKE = dict(seq=32, list_size=4, groups=2, score_batch=8, max_layers=1, warmup=1, iters=2,
             ensemble_repeats=4, vocab=2048, ensemble_delta="off")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm-l6,bert-base,bert-large",
                   help=f"comma-separated, from {sorted(C.SHAPES)}")
    p.add_argument("--seq", type=int, default=None, help="tokens per (query, doc) pair (256; smoke 32)")
    p.add_argument("--list-size", type=int, default=None, help="n: candidates per ranking group (8; smoke 4)")
    p.add_argument("--teachers", type=int, default=4, help="T: teachers fed to the in-step PILE ensemble")
    p.add_argument("--groups", type=int, default=None,
                   help="B: ranking groups per train step (default per model: 32 / 16 / 8)")
    p.add_argument("--score-batch", type=int, default=None,
                   help="pairs per scoring call (default per model: 1024 / 512 / 256)")
    p.add_argument("--max-layers", type=int, default=None, help="cap every model's layer count (smoke: 1)")
    p.add_argument("--vocab", type=int, default=None,
                   help="vocabulary size (BERT's 30522; smoke 2048, so CPU steps are not all optimizer)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype")
    p.add_argument("--remat", action="store_true", help="rematerialise each layer in the train step")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (5; smoke 1)")
    p.add_argument("--iters", type=int, default=None, help="timed calls, median reported (20; smoke 2)")
    p.add_argument("--ensemble-repeats", type=int, default=None,
                   help="ensemble calls per timed jit call when timing the ensemble alone (64; smoke 4)")
    p.add_argument("--ensemble-delta", choices=("all", "first", "off"), default=None,
                   help="also time the step with a precomputed target (one more compilation per model): "
                        "for all models (default), the first only, or off (smoke)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU (default: from the device kind, e.g. H100 989 bf16 dense)")
    p.add_argument("--peer", choices=("auto", "on", "off"), default="auto",
                   help="Hugging Face PyTorch peer: auto = when torch + transformers import")
    p.add_argument("--peer-autocast", choices=("bfloat16", "float32"), default=None,
                   help="peer compute dtype (default: --dtype; float32 for --smoke without CUDA, where "
                        "CPU bf16 autocast is very slow)")
    p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the peer (default: on, off with --smoke)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-score", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU check: 1 layer, seq 32, 2 groups x 4, few iterations")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    C.fill_defaults(args, smoke=SMOKE, full=FULL)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in C.SHAPES:
            p.error(f"unknown model {m!r}; known: {sorted(C.SHAPES)}")
    return args


def model_shape(args, name):
    layers, hidden, heads, inter = C.SHAPES[name]
    if args.max_layers:
        layers = min(layers, args.max_layers)
    return layers, hidden, heads, inter


def batch_sizes(args, name):
    groups, score_batch = FULL_BATCH[name]
    return (args.groups or groups), (args.score_batch or score_batch)


def make_batch(seed: int, groups: int, n: int, seq: int, teachers: int, vocab: int, query_len: int = 32) -> dict:
    """A synthetic train batch in pile_jax's layout (numpy): every pair has ``seq`` real tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 2), vocab, size=(groups, n, seq), dtype=np.int32)
    ids[..., 0] = 101                                     # [CLS]
    q = min(query_len, seq // 2)
    ids[..., q] = 102                                     # [SEP] after the query
    ids[..., -1] = 102
    types = np.zeros((groups, n, seq), np.int32)
    types[..., q + 1:] = 1
    labels = rng.integers(0, 3, size=(groups, n)).astype(np.float32)
    # noisy teachers (the mean mis-orders some labelled pairs, so PILE has work to do)
    teacher_scores = (labels[:, None, :] + rng.normal(0.0, 2.0, size=(groups, teachers, n))).astype(np.float32)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((groups, n, seq), np.int32),
        "token_type_ids": types,
        "labels": labels,
        "label_mask": np.ones((groups, n), bool),
        "mask": np.ones((groups, n), bool),
        "teacher_scores": teacher_scores,
        "target": teacher_scores.mean(1),
    }


def score_batch_of(batch: dict, pairs: int) -> dict:
    """``pairs`` single pairs ``[pairs, L]`` (rows of the train batch, repeated as needed)."""
    ids = batch["input_ids"].reshape(-1, batch["input_ids"].shape[-1])
    reps = -(-pairs // ids.shape[0])
    take = lambda k: np.tile(batch[k].reshape(ids.shape), (reps, 1))[:pairs]
    return {k: take(k) for k in ("input_ids", "attention_mask", "token_type_ids")}


# ------------------------------------------------------------------ PyTorch peer (child process)


def run_peer_worker(args) -> dict:
    """Runs in the child process: the HF model per shape; prints nothing but progress."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(args.seed)
    if args.peer_autocast is None:
        args.peer_autocast = "float32" if (args.smoke and not torch.cuda.is_available()) else args.dtype
    out = {"torch": torch.__version__, "device": str(C.torch_device()), "compile": args.torch_compile,
           "autocast": args.peer_autocast,
           "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "models": {}}
    for name in args.models:
        layers, hidden, heads, inter = model_shape(args, name)
        groups, score_pairs = batch_sizes(args, name)
        cfg = C.hf_bert_config(layers, hidden, heads, inter, max_position=max(512, args.seq), vocab=args.vocab)
        model = AutoModelForSequenceClassification.from_config(cfg)
        peer = C.TorchPeer(model, compile=args.torch_compile, autocast_dtype=args.peer_autocast)
        res = {}
        batch = make_batch(args.seed, groups, args.list_size, args.seq, args.teachers, args.vocab)
        dev = peer.to_device({k: v for k, v in batch.items() if k != "teacher_scores"})
        pairs = groups * args.list_size
        if not args.skip_train:
            t = C.time_calls(lambda: peer.train_step(dev), warmup=args.warmup, iters=args.iters,
                             sync=lambda loss: (peer.sync(None), float(loss.detach())))
            res["train_step_s"] = t["median"]
            res["train_pairs_per_s"] = pairs / t["median"]
            res["train_first_s"] = t["first"]
            print(f"[peer] {name} train: {res['train_pairs_per_s']:,.1f} pairs/s", file=sys.stderr, flush=True)
        if not args.skip_score:
            sb = peer.to_device(score_batch_of(batch, score_pairs))
            t = C.time_calls(lambda: peer.score(sb), warmup=args.warmup, iters=args.iters, sync=peer.sync)
            res["score_call_s"] = t["median"]
            res["score_pairs_per_s"] = score_pairs / t["median"]
            print(f"[peer] {name} score: {res['score_pairs_per_s']:,.1f} pairs/s", file=sys.stderr, flush=True)
        out["models"][name] = res
        del peer, model, dev
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def run_peer(args, argv) -> dict | None:
    """Starts this script as the peer worker; returns its results (None when skipped/failed)."""
    if args.peer == "off" or (args.peer == "auto" and not C.torch_available()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "peer.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--peer-worker", "--json", path]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            msg = f"PyTorch peer failed (exit {proc.returncode})"
            if args.peer == "on":
                raise SystemExit(msg)
            print(msg + "; continuing without it", file=sys.stderr)
            return None
        with open(path) as f:
            res = json.load(f)
        res["wall_s"] = time.perf_counter() - t0
        return res


# ------------------------------------------------------------------ pile_jax


def run_pile_jax(args) -> dict:
    import jax
    import jax.numpy as jnp

    from pile_jax.models import CrossEncoder, EncoderConfig
    from pile_jax.train.objective import Objective, resolve_target
    from pile_jax.train.optim import make_optimizer
    from pile_jax.train.step import create_train_state, eval_scores_fn, make_train_step

    env = C.jax_env()
    peak = args.peak_tflops if args.peak_tflops else C.default_peak_tflops(env["device_kind"])
    objectives = {
        "ensemble": Objective.from_config({
            "label_losses": {"pairwise_logistic": 1.0}, "distill_losses": {"margin_mse": 1.0},
            "target": "ensemble", "ensemble": {"name": "pile"}}),
        "precomputed": Objective.from_config({
            "label_losses": {"pairwise_logistic": 1.0}, "distill_losses": {"margin_mse": 1.0},
            "target": "precomputed"}),
    }
    out = {"env": env, "peak_tflops": peak, "models": {}}
    for name in args.models:
        layers, hidden, heads, inter = model_shape(args, name)
        groups, score_pairs = batch_sizes(args, name)
        pairs = groups * args.list_size
        cfg = EncoderConfig(family="bert", vocab_size=args.vocab, hidden_size=hidden, num_layers=layers,
                            num_heads=heads, intermediate_size=inter,
                            max_position_embeddings=max(512, args.seq), dtype=args.dtype, remat=args.remat)
        model = CrossEncoder(cfg)

        def score_fn(params, batch, *, rng=None, train=False):
            ids = batch["input_ids"]
            B, n, L = ids.shape
            flat = lambda x: x.reshape(B * n, L)
            rngs = {"dropout": rng} if (train and rng is not None) else {}
            s = model.apply({"params": params}, flat(ids), flat(batch["attention_mask"]),
                            flat(batch["token_type_ids"]), deterministic=not train, rngs=rngs)
            return jnp.asarray(s, jnp.float32).reshape(B, n)

        dummy = jnp.ones((1, args.seq), jnp.int32)
        params = jax.jit(lambda k: model.init(k, dummy, dummy, jnp.zeros_like(dummy))["params"])(
            jax.random.key(args.seed))
        n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
        n_layer_params = sum(int(x.size) for k, v in params["encoder"].items() if k.startswith("layer_")
                             for x in jax.tree_util.tree_leaves(v))
        tx = make_optimizer(learning_rate=3e-5, warmup_steps=100, total_steps=100_000)
        host_batch = make_batch(args.seed, groups, args.list_size, args.seq, args.teachers, args.vocab)
        batch = jax.device_put(host_batch)
        res = {"layers": layers, "hidden": hidden, "heads": heads, "intermediate": inter, "params": n_params,
               "layer_params": n_layer_params, "groups": groups, "list_size": args.list_size,
               "pairs_per_step": pairs, "score_batch": score_pairs, "seq": args.seq}
        f_train = C.flops_per_pair(layers, hidden, inter, args.seq, train=True)
        f_score = C.flops_per_pair(layers, hidden, inter, args.seq, train=False)
        res["flops_per_pair_train"], res["flops_per_pair_score"] = f_train, f_score

        if not args.skip_train:
            steps = {}
            delta = args.ensemble_delta == "all" or (args.ensemble_delta == "first" and name == args.models[0])
            for key, obj in objectives.items():
                if key == "precomputed" and not delta:
                    continue
                step = make_train_step("none", score_fn=score_fn, objective=obj, tx=tx)
                # a private copy: the step donates the state, and create_train_state keeps
                # float32 leaves as they are
                fresh = jax.tree_util.tree_map(jnp.copy, params)
                holder = {"state": create_train_state(fresh, tx, jax.random.key(args.seed + 1))}

                def call(step=step, holder=holder):
                    holder["state"], metrics = step(holder["state"], batch)
                    return metrics

                t = C.time_calls(call, warmup=args.warmup, iters=args.iters, sync=jax.block_until_ready)
                loss = float(call()["loss"])
                steps[key] = t
                res[f"step_{key}_s"] = t["median"]
                res[f"step_{key}_compile_s"] = t["first"]
                res[f"loss_{key}"] = loss
                del holder
            t_step = steps["ensemble"]["median"]
            res["train_pairs_per_s"] = pairs / t_step
            res["train_mfu"] = C.mfu(res["train_pairs_per_s"], f_train, peak)
            res["train_tflops"] = res["train_pairs_per_s"] * f_train / 1e12
            # PILE's share, (a): step with the ensemble target vs the precomputed target.
            if "precomputed" in steps:
                res["ensemble_delta_pct"] = 100.0 * (t_step - steps["precomputed"]["median"]) / t_step
            # (b): the ensemble alone under jit at the step's shapes, R calls per jit call.
            R = max(args.ensemble_repeats, 1)
            obj = objectives["ensemble"]
            rng = np.random.default_rng(args.seed + 2)
            reps = {"teacher_scores": jnp.asarray(host_batch["teacher_scores"][None]
                                                  + rng.normal(0, 0.1, (R,) + host_batch["teacher_scores"].shape)
                                                  .astype(np.float32)),
                    "labels": batch["labels"], "mask": batch["mask"]}

            @jax.jit
            def ensemble_only(b):
                return jax.lax.map(lambda ts: resolve_target({"teacher_scores": ts, "labels": b["labels"],
                                                              "mask": b["mask"]}, obj), b["teacher_scores"])

            t = C.time_calls(lambda: ensemble_only(reps), warmup=args.warmup, iters=args.iters,
                             sync=jax.block_until_ready)
            res["ensemble_alone_s"] = t["median"] / R
            res["ensemble_share_pct"] = 100.0 * res["ensemble_alone_s"] / t_step
            print(f"[pile_jax] {name} train: {res['train_pairs_per_s']:,.1f} pairs/s "
                  f"(step {1e3 * t_step:.1f} ms, PILE alone {1e6 * res['ensemble_alone_s']:.1f} us = "
                  f"{res['ensemble_share_pct']:.3f}%)", file=sys.stderr, flush=True)

        if not args.skip_score:
            scorer = eval_scores_fn(score_fn)
            sb = score_batch_of(host_batch, score_pairs)
            sb = jax.device_put({k: v[:, None, :] for k, v in sb.items()})
            t = C.time_calls(lambda: scorer(params, sb), warmup=args.warmup, iters=args.iters,
                             sync=jax.block_until_ready)
            res["score_call_s"] = t["median"]
            res["score_compile_s"] = t["first"]
            res["score_pairs_per_s"] = score_pairs / t["median"]
            res["score_mfu"] = C.mfu(res["score_pairs_per_s"], f_score, peak)
            print(f"[pile_jax] {name} score: {res['score_pairs_per_s']:,.1f} pairs/s", file=sys.stderr, flush=True)
        out["models"][name] = res
        del params, batch
    return out


# ------------------------------------------------------------------ report


def report(args, jx: dict, peer: dict | None) -> str:
    env = jx["env"]
    lines = [f"## pile_jax cross-encoder throughput ({'SMOKE, ' if args.smoke else ''}"
             f"{env['device_kind']}, {env['backend']})", "",
             f"seq {args.seq}, compute {args.dtype} (float32 master weights), groups of n={args.list_size}, "
             f"{args.teachers} teachers -> in-step PILE; objective pairwise_logistic + margin_mse; "
             f"median of {args.iters} iterations after {args.warmup} warm-up; peak "
             f"{C.fmt(jx['peak_tflops'])} TFLOP/s"
             + (f"; peer: HF PyTorch {peer['torch']} on {peer['device_name']}"
                f"{' + torch.compile' if peer['compile'] else ' (eager)'}, {peer['autocast']}"
                if peer else "; peer: not run"), ""]
    headers = ["model", "layers x hidden", "pairs/step", "train pairs/s", "train MFU", "HF train pairs/s",
               "train ratio", "PILE share (alone)", "PILE share (delta)", "score pairs/s", "score MFU",
               "HF score pairs/s", "score ratio"]
    rows = []
    for name, r in jx["models"].items():
        pr = (peer or {}).get("models", {}).get(name, {})
        tr = r.get("train_pairs_per_s")
        sc = r.get("score_pairs_per_s")
        ptr, psc = pr.get("train_pairs_per_s"), pr.get("score_pairs_per_s")
        pct = lambda x: None if x is None else f"{x:.1f}%"
        rows.append([
            name, f"{r['layers']}x{r['hidden']}", r["pairs_per_step"], tr,
            pct(None if r.get("train_mfu") is None else 100 * r["train_mfu"]), ptr,
            None if not (tr and ptr) else f"{tr / ptr:.2f}x",
            None if r.get("ensemble_share_pct") is None else f"{r['ensemble_share_pct']:.3f}%",
            None if r.get("ensemble_delta_pct") is None else f"{r['ensemble_delta_pct']:.2f}%",
            sc, pct(None if r.get("score_mfu") is None else 100 * r["score_mfu"]), psc,
            None if not (sc and psc) else f"{sc / psc:.2f}x",
        ])
    lines.append(C.markdown_table(headers, rows))
    if not args.smoke and args.seq == 256 and args.dtype == "bfloat16" and not args.max_layers:
        lines += ["", "Against the H100 reference (HF PyTorch + torch.compile):", ""]
        rows = []
        for name, r in jx["models"].items():
            ref, tgt = C.HF_H100_REFERENCE[name], C.TARGET_RATIO[name]
            for kind in ("train", "score"):
                v = r.get(f"{kind}_pairs_per_s")
                if v is None:
                    continue
                ratio = v / ref[kind]
                rows.append([name, kind, v, ref[kind], f"{ratio:.2f}x", f">= {tgt[kind]}x",
                             "yes" if ratio >= tgt[kind] else "NO"])
        lines.append(C.markdown_table(["model", "kind", "pile_jax pairs/s", "HF H100 ref", "ratio", "target",
                                       "met"], rows))
    return "\n".join(lines)


def main(argv=None):
    C.bench_main(argv, parse_args=parse_args, run_peer_worker=run_peer_worker, run_peer=run_peer,
                 run_pile_jax=run_pile_jax, report=report)

if __name__ == "__main__":
    main()
