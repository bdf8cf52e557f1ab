"""Shared helpers of the benchmark scripts: timing, device peaks, FLOP counts, output, and the
Hugging Face PyTorch peer (objective in torch, a train step and a scorer).

Benchmarks only; nothing here is imported by the library or by the tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

# ------------------------------------------------------------------ model shapes

# name -> (num_layers, hidden, heads, intermediate); BERT vocabulary (30522), 512 positions.
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "minilm-l6": (6, 384, 12, 1536),
    "bert-base": (12, 768, 12, 3072),
    "bert-large": (24, 1024, 16, 4096),
}

# Hugging Face PyTorch + torch.compile on one H100 (seq 256, bf16): pairs/s, the peer the
# targets are stated against (train, score).
HF_H100_REFERENCE = {
    "minilm-l6": {"train": 9055.0, "score": 37165.0},
    "bert-base": {"train": 2337.0, "score": 8181.0},
    "bert-large": {"train": 788.0, "score": 2649.0},
}
# pile_jax must reach these multiples of the reference.
TARGET_RATIO = {
    "minilm-l6": {"train": 1.6, "score": 1.25},
    "bert-base": {"train": 1.3, "score": 1.25},
    "bert-large": {"train": 1.25, "score": 1.25},
}
ENSEMBLE_SHARE_TARGET_PCT = 1.0
# Real Cranfield pairs (all-MiniLM-L6-v2 weights, max_length 512, HF pads to 512).
HF_H100_CRANFIELD = {"train": 3835.0, "score": 10911.0}
CRANFIELD_TARGET_RATIO = 2.0

# ------------------------------------------------------------------ device peaks

# Dense bf16 peak TFLOP/s by device kind (substring match on ``jax.devices()[0].device_kind``,
# lower-cased; first match wins, so the more specific names come first).
PEAK_BF16_TFLOPS: Sequence[tuple[str, float]] = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("gh200", 989.0),
    ("b200", 2250.0),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l4", 121.0),
    ("a10g", 70.0),
    ("v100", 125.0),   # fp16 tensor cores (no bf16)
    ("tpu v6", 918.0),
    ("tpu v5p", 459.0),
    ("tpu v5 lite", 197.0),
    ("tpu v5e", 197.0),
    ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("tpu v3", 123.0),
)


def default_peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of a known accelerator, or None (e.g. CPU: no MFU reported)."""
    kind = device_kind.lower()
    for key, peak in PEAK_BF16_TFLOPS:
        if key in kind:
            return peak
    return None


# ------------------------------------------------------------------ FLOPs


def layer_params(hidden: int, intermediate: int) -> int:
    """Parameters of one post-LN BERT layer (Q, K, V, O, FFN in/out, two LayerNorms)."""
    h, f = hidden, intermediate
    return 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h


def flops_per_pair(num_layers: int, hidden: int, intermediate: int, seq: int, *, train: bool) -> float:
    """Analytic FLOPs of one (query, doc) pair of ``seq`` tokens.

    Dense part: ``2 * N * seq`` forward (``N`` = non-embedding encoder parameters; the score
    head runs on one token per pair and is left out), attention scores and the weighted sum:
    ``4 * layers * seq^2 * hidden`` forward. Training (forward + backward) is 3x forward:
    ``6 * N * seq + 12 * layers * seq^2 * hidden``.
    """
    n = num_layers * layer_params(hidden, intermediate)
    fwd = 2.0 * n * seq + 4.0 * num_layers * seq * seq * hidden
    return 3.0 * fwd if train else fwd


def mfu(pairs_per_s: float, flops_pair: float, peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return pairs_per_s * flops_pair / (peak_tflops * 1e12)


def fill_defaults(args, *, smoke: Mapping[str, Any], full: Mapping[str, Any]):
    """Sets every ``None`` argument from the ``smoke`` or ``full`` settings (by ``args.smoke``), and
    ``torch_compile`` (when not given) to "on except in smoke runs". Returns ``args``."""
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.torch_compile is None:
        args.torch_compile = not args.smoke
    return args


# ------------------------------------------------------------------ timing


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[Any], Any]) -> dict:
    """Runs ``fn`` ``warmup`` times, then ``iters`` timed times (each waited on with ``sync``).

    Returns seconds: ``median``, ``min``, ``mean``, ``times`` (list), ``first`` (the first warm-up
    call, compilation included when there is one)."""
    first = None
    for i in range(max(warmup, 0)):
        t0 = time.perf_counter()
        sync(fn())
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "mean": statistics.fmean(times),
            "times": times, "first": first}


def jax_env() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "platform": platform.platform(),
            "python": platform.python_version()}


# ------------------------------------------------------------------ output


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    print(f"wrote {path}")


# ------------------------------------------------------------------ PyTorch peer


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device) -> Callable[[Any], Any]:
    import torch

    if device.type == "cuda":
        return lambda _: torch.cuda.synchronize()
    return lambda _: None


def torch_objective(scores, labels, label_mask, target, mask):
    """Pairwise-logistic (labels) + Margin-MSE (target) with pile_jax's reduction: per-list means
    over valid pairs, then a mean over lists. All inputs ``[B, n]``; computed in float32."""
    import torch

    s = scores.float()
    valid = mask.bool()
    lm = valid & label_mask.bool()
    ds = s[:, :, None] - s[:, None, :]                                    # s_i - s_j
    eye = torch.eye(s.shape[1], dtype=torch.bool, device=s.device)[None]
    # pairwise logistic on hard labels: pairs with y_i > y_j, both label-valid
    lp = (labels[:, :, None] > labels[:, None, :]) & lm[:, :, None] & lm[:, None, :]
    per = torch.nn.functional.softplus(-ds) * lp
    cnt = lp.sum((1, 2))
    has = cnt > 0
    label_term = (per.sum((1, 2)) / cnt.clamp(min=1))[has].sum() / has.sum().clamp(min=1)
    # Margin-MSE over all ordered pairs of valid items
    vp = valid[:, :, None] & valid[:, None, :] & ~eye
    dt = target[:, :, None] - target[:, None, :]
    per = (ds - dt).square() * vp
    cnt = vp.sum((1, 2))
    has = valid.any(-1)
    distill_term = (per.sum((1, 2)) / cnt.clamp(min=1))[has].sum() / has.sum().clamp(min=1)
    return label_term + distill_term


def hf_bert_config(num_layers: int, hidden: int, heads: int, intermediate: int, *, max_position: int = 512,
                   vocab: int = 30522):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers,
                      num_attention_heads=heads, intermediate_size=intermediate,
                      max_position_embeddings=max_position, num_labels=1)


class TorchPeer:
    """Hugging Face ``AutoModelForSequenceClassification`` trained/scored the usual way:
    bf16 autocast (float32 master weights), AdamW (fused on CUDA), global-norm clipping 1.0,
    optional ``torch.compile``. Train batches are ``[B, n, L]`` groups as in pile_jax."""

    def __init__(self, model, *, compile: bool, autocast_dtype: str = "bfloat16", lr: float = 3e-5,
                 threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch_device()
        self.model = model.to(self.device)
        self.amp_dtype = torch.bfloat16 if autocast_dtype == "bfloat16" else None
        fused = self.device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01, fused=fused)
        self.fwd = torch.compile(self.model) if compile else self.model
        self.sync = torch_sync(self.device)

    def _autocast(self):
        import contextlib

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Mapping[str, Any]) -> dict:
        t = self.torch
        out = {}
        for k, v in batch.items():
            x = t.from_numpy(__import__("numpy").ascontiguousarray(v))
            out[k] = x.to(self.device, non_blocking=True)
        return out

    def train_step(self, batch: Mapping[str, Any]):
        """One optimizer step on a device batch (from :meth:`to_device`); returns the loss tensor."""
        t = self.torch
        self.model.train()
        B, n, L = batch["input_ids"].shape
        flat = lambda x: x.reshape(B * n, L)
        with self._autocast():
            logits = self.fwd(input_ids=flat(batch["input_ids"]), attention_mask=flat(batch["attention_mask"]),
                              token_type_ids=flat(batch["token_type_ids"])).logits
        scores = logits.float().reshape(B, n)
        loss = torch_objective(scores, batch["labels"], batch["label_mask"], batch["target"], batch["mask"])
        loss.backward()
        t.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def score(self, batch: Mapping[str, Any]):
        """Scores ``[N]`` of a device batch of ``[N, L]`` token arrays (inference mode)."""
        t = self.torch
        self.model.eval()
        with t.inference_mode(), self._autocast():
            logits = self.fwd(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"]).logits
        return logits.float()[:, 0]


def bench_main(argv, *, parse_args, run_peer_worker, run_peer, run_pile_jax, report):
    """Shared driver of the benchmarks: the Hugging Face peer runs first, in its own process,
    before this process touches an accelerator; then pile_jax; prints and writes the report."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.peer_worker:
        write_json(args.json, run_peer_worker(args))
        return
    child_argv = [a for i, a in enumerate(argv)
                  if a != "--json" and not (i > 0 and argv[i - 1] == "--json") and not a.startswith("--json=")]
    peer = run_peer(args, child_argv)
    jx = run_pile_jax(args)
    text = report(args, jx, peer)
    print(text)
    write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "peer_worker"},
                           "pile_jax": jx, "peer": peer, "markdown": text})
