"""The train loop, top to bottom: data -> pmap'd step -> logging -> dev eval -> checkpoints.

What is trained is a :class:`Ranker`: float32 params, a score function
``score_fn(params, batch, *, rng, train) -> scores [B, n]`` (or ``(scores, aux_losses)``) and a
``featurize(queries [B], docs [B][n]) -> token arrays`` that turns text into the model's inputs
(padded to a length bucket, so few shapes are compiled).  Any architecture plugs in that way.

Training reads ranking groups (``query_id``, ``doc_ids [n]``, ``labels``, ``label_mask``,
``mask``, ``teacher_scores [T, n]``) from any random-access source (the TFDS ArrayRecord data
source, or a list of examples) through the deterministic, resumable, prefetching loader of
:mod:`pile_jax.data.loader`. Checkpoints hold the train state, the loader position, the history
and the best dev score, so
``resume=True`` continues exactly where a killed run stopped: same batches, same dropout keys,
same result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from pile_jax.data.loader import make_train_loader
from pile_jax.data.sampler import stack_records
from pile_jax.train.checkpoint import Checkpointer, install_sigterm_handler
from pile_jax.train.objective import Objective
from pile_jax.train.optim import learning_rate_schedule, make_optimizer
from pile_jax.train.step import (
    create_train_state,
    eval_scores_fn,
    make_mesh,
    make_train_step,
    put_batch,
    put_replicated,
    replicate,
    shard_batch,
    unreplicate,
)

Featurize = Callable[[Sequence[str], Sequence[Sequence[str]]], dict]


@dataclasses.dataclass
class Ranker:
    """A trainable ranker: params + score function + text featuriser (+ optional metadata)."""

    params: Any
    score_fn: Callable
    featurize: Featurize
    kind: str = "cross_encoder"
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` config section (all optional)."""

    batch_size: int = 8            # global batch, in ranking groups
    epochs: float = 1.0            # used when steps is None
    steps: int | None = None
    learning_rate: float = 3e-5
    lr_multipliers: dict | None = None  # {path regex: factor}, e.g. {"head": 20.0} for a new score head
    warmup_steps: int | float = 0.1  # < 1: fraction of the total steps
    schedule: str = "linear"
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    accum_steps: int = 1
    parallel: str = "pmap"         # pmap | shard_map | none
    seed: int = 0
    log_every: int = 10
    eval_every: int | None = None  # steps; None = at the end only
    select_metric: str = "ndcg_cut_10"
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 5
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "TrainConfig":
        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            from pile_jax.config import ConfigError

            raise ConfigError(f"train: unknown key(s) {unknown} (known: {sorted(known)})")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        out = {}
        for key, value in cfg.items():
            kind = types[key]
            try:
                if value is None:
                    if "None" not in kind:
                        raise ValueError("must not be null")
                    out[key] = None
                elif kind.startswith("int | float") or kind.startswith("float"):
                    out[key] = float(value)  # YAML reads 1e-4 (no dot) as a string
                elif kind.startswith("int"):
                    out[key] = int(value) if float(value) == int(float(value)) else _bad(value)
                elif kind.startswith("dict"):
                    if not isinstance(value, Mapping):
                        _bad(value)
                    out[key] = {str(k): float(v) for k, v in value.items()}
                    for pattern in out[key]:
                        re.compile(pattern)
                elif kind == "bool":
                    out[key] = value if isinstance(value, bool) else _bad(value)
                else:
                    out[key] = str(value)
            except (TypeError, ValueError, re.error) as e:
                from pile_jax.config import ConfigError

                raise ConfigError(f"train.{key}: expected {kind}, got {value!r} ({e})") from e
        return cls(**out)


def _bad(value):
    raise ValueError(f"invalid value {value!r}")


@dataclasses.dataclass
class TrainResult:
    params: Any                    # best dev params (final params when no dev eval)
    final_params: Any
    history: list                  # one dict per logged step / eval
    best_step: int | None
    best_metric: float | None
    steps: int


class Preempted(RuntimeError):
    """Raised after a SIGTERM-triggered checkpoint; rerun with resume to continue."""


def lookup_texts(queries: Mapping[str, str], docs: Mapping[str, str], qids: Sequence[str], doc_ids) -> tuple[list[str], list[list[str]]]:
    """Texts for a batch of groups; padding doc ids ("") map to ""."""
    q_texts = [queries[q] if q else "" for q in qids]
    d_texts = [[docs[d] if d else "" for d in row] for row in np.asarray(doc_ids).tolist()]
    return q_texts, d_texts


def make_collate(ranker: Ranker, queries: Mapping[str, str], docs: Mapping[str, str]):
    """Records -> train batch: the group arrays plus the ranker's token arrays."""

    def collate(records):
        groups = stack_records(records)
        q_texts, d_texts = lookup_texts(queries, docs, groups["query_id"], groups["doc_ids"])
        batch = {k: np.asarray(groups[k]) for k in ("labels", "label_mask", "mask", "teacher_scores")}
        if "target" in groups:
            batch["target"] = np.asarray(groups["target"], np.float32)
        batch.update(ranker.featurize(q_texts, d_texts))
        return batch

    return collate


_SCORERS: dict = {}
_STEPS: dict = {}


def cached_scorer(score_fn: Callable) -> Callable:
    """One jit-compiled scorer per score function (so compiled shapes are reused)."""
    if score_fn not in _SCORERS:
        _SCORERS[score_fn] = eval_scores_fn(score_fn)
    return _SCORERS[score_fn]


def score_pairs(
    ranker: Ranker,
    params: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    scorer: Callable | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Scores (query text, doc text) pairs; float32 [N] in input order.

    Pairs are sorted by length and cut into batches of ``batch_size`` (the last one padded), so
    each batch pads to a small length bucket: on real collections this is most of the speed.
    The length is the token count when the ranker's ``meta["tokenizer"]`` has ``pair_lengths``
    (cross-encoders), otherwise the character count.
    """
    scorer = scorer or cached_scorer(ranker.score_fn)
    n = len(pairs)
    out = np.zeros(n, np.float32)
    if n == 0:
        return out
    tokenizer = (ranker.meta or {}).get("tokenizer")
    if hasattr(tokenizer, "pair_lengths"):
        lengths = tokenizer.pair_lengths([q for q, _ in pairs], [d for _, d in pairs])
    else:
        lengths = [len(q) + len(d) for q, d in pairs]
    order = np.argsort(lengths, kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    it = chunks
    if progress:
        from pile_jax.logs import progress as progress_bar

        it = progress_bar(chunks, desc=progress, unit="batch")
    for idx in it:
        qs = [pairs[i][0] for i in idx]
        ds = [[pairs[i][1]] for i in idx]
        pad = batch_size - len(idx)
        if pad:
            qs += [""] * pad
            ds += [[""]] * pad
        feats = ranker.featurize(qs, ds)
        feats["mask"] = np.ones((batch_size, 1), bool)
        scores = np.asarray(scorer(params, feats))[:, 0]
        out[idx] = scores[: len(idx)]
    return out


def score_candidates(
    ranker: Ranker,
    params: Any,
    candidates: Mapping[str, Sequence[str]],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    *,
    batch_size: int = 64,
    scorer: Callable | None = None,
    progress: str | None = None,
) -> dict[str, dict[str, float]]:
    """``{qid: {doc_id: score}}`` for every candidate of every query."""
    keys = [(q, d) for q, ds in candidates.items() for d in ds]
    scores = score_pairs(ranker, params, [(queries[q], docs[d]) for q, d in keys],
                         batch_size=batch_size, scorer=scorer, progress=progress)
    out: dict[str, dict[str, float]] = {q: {} for q in candidates}
    for (q, d), s in zip(keys, scores):
        out[q][d] = float(s)
    return out


def _host(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def train(
    ranker: Ranker,
    *,
    source,
    objective: Objective | Mapping[str, Any],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    config: TrainConfig | Mapping[str, Any] | None = None,
    workdir: str | None = None,
    resume: bool = False,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains ``ranker`` on the ranking groups in ``source``; see the module docstring.

    ``evaluate(params) -> {metric: value}`` runs every ``eval_every`` steps and at the end; the
    params with the best ``select_metric`` are returned (best-checkpoint selection).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_config(config)
    obj = Objective.from_config(objective)
    log = log or (lambda s: None)

    # --- data: deterministic sampler, this host's slice of every global batch
    pc, pi = jax.process_count(), jax.process_index()
    n_local = jax.local_device_count() if cfg.parallel == "pmap" else 1
    if cfg.parallel == "shard_map":
        n_local = jax.local_device_count()
    if cfg.batch_size % (pc * n_local * cfg.accum_steps):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} must be divisible by processes ({pc}) x local "
            f"devices ({n_local}) x accum_steps ({cfg.accum_steps})")
    loader = make_train_loader(source, global_batch_size=cfg.batch_size, seed=cfg.seed, process_index=pi,
                               process_count=pc, collate=make_collate(ranker, queries, docs),
                               drop_remainder=len(source) >= cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * loader.steps_per_epoch)))
    warmup = int(cfg.warmup_steps * total) if cfg.warmup_steps < 1 else int(cfg.warmup_steps)
    schedule = learning_rate_schedule(learning_rate=cfg.learning_rate, warmup_steps=warmup,
                                      total_steps=total, schedule=cfg.schedule)
    tx = make_optimizer(learning_rate=cfg.learning_rate, warmup_steps=warmup, total_steps=total,
                        schedule=cfg.schedule, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm,
                        lr_multipliers=cfg.lr_multipliers)
    state = create_train_state(ranker.params, tx, jax.random.PRNGKey(cfg.seed))

    # --- resume
    history: list[dict] = []
    best = {"step": None, "metric": None}
    best_params = None
    ckpt = None
    best_path = None
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints,
                            save_interval_steps=cfg.checkpoint_every)
        best_path = os.path.join(workdir, "best_params.npz")
        if resume:
            restored = ckpt.restore_latest(state)
            if restored is not None:
                state, extra = restored
                loader.load_state_dict(extra["sampler"])
                history = list(extra.get("history", []))
                best = dict(extra.get("best", best))
                if best["step"] is not None and os.path.exists(best_path):
                    best_params = _load_params(best_path, state.params)
                log(f"resumed from step {int(state.step)} (epoch {loader.state_dict()['epoch']})")
    start = int(state.step)

    # --- parallel step
    mesh = make_mesh() if cfg.parallel == "shard_map" else None
    # Runs that differ only in seed/data reuse one compiled step (same shapes, same function).
    key = (ranker.score_fn, repr(obj), cfg.parallel, cfg.accum_steps, cfg.learning_rate, warmup, total,
           cfg.schedule, cfg.weight_decay, cfg.clip_norm, repr(cfg.lr_multipliers), n_local, pc)
    if key not in _STEPS:
        _STEPS[key] = make_train_step(cfg.parallel, mesh=mesh, score_fn=ranker.score_fn, objective=obj,
                                      tx=tx, accum_steps=cfg.accum_steps, lr_schedule=schedule)
    step_fn = _STEPS[key]
    if cfg.parallel == "pmap":
        dstate = replicate(state)
    elif cfg.parallel == "shard_map":
        dstate = put_replicated(state, mesh)
    else:
        dstate = state

    def place(batch):
        if cfg.parallel == "pmap":
            return shard_batch(batch, n_local)
        if cfg.parallel == "shard_map":
            return put_batch(batch, mesh)
        return batch

    def host_state():
        return unreplicate(dstate) if cfg.parallel == "pmap" else dstate

    def extra():
        return {"sampler": loader.state_dict(), "history": history, "best": best}

    def run_eval(step):
        nonlocal best_params
        metrics = dict(evaluate(host_state().params))
        history.append({"step": step, "eval": metrics})
        value = metrics.get(cfg.select_metric)
        log(f"step {step}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"dev/{k}", v, step)
        if value is not None and (best["metric"] is None or value > best["metric"]):
            best.update(step=step, metric=float(value))
            best_params = _host(host_state().params)
            if best_path:
                _save_params(best_path, best_params)

    flag = install_sigterm_handler()
    writer = _summary_writer(workdir)
    pbar = None
    if cfg.progress:
        from pile_jax.logs import progress as progress_bar

        pbar = progress_bar(total=total, initial=start, desc="train", unit="step")
    nonfinite = 0
    t0, pairs_seen = time.perf_counter(), 0
    try:
        for step in range(start, total):
            batch = loader.next_batch()
            pairs_seen += int(np.asarray(batch["mask"]).sum()) * pc
            dstate, metrics = step_fn(dstate, place(batch))
            done = step + 1
            if pbar:
                pbar.update(1)
            if done % cfg.log_every == 0 or done == total:
                m = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}
                dt = time.perf_counter() - t0
                m["pairs_per_s"] = pairs_seen / dt if dt > 0 else 0.0
                t0, pairs_seen = time.perf_counter(), 0
                nonfinite = nonfinite + 1 if m["nonfinite"] else 0
                history.append({"step": done, **m})
                if writer:
                    for k, v in m.items():
                        writer.add_scalar(f"train/{k}", v, done)
                if pbar:
                    pbar.set_postfix(loss=f"{m['loss']:.4f}")
                if nonfinite >= cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"non-finite loss or gradients at {nonfinite} consecutive logged steps "
                        f"(up to step {done}); updates were skipped. Check inputs and learning rate.")
            if evaluate and cfg.eval_every and done % cfg.eval_every == 0 and done != total:
                run_eval(done)
            if ckpt and ckpt.should_stop(flag):
                ckpt.save(done, host_state(), extra(), force=True)
                ckpt.wait()
                raise Preempted(f"SIGTERM: saved a checkpoint at step {done} in {ckpt.directory}; "
                                "rerun with --resume to continue")
            if ckpt and done % cfg.checkpoint_every == 0:
                ckpt.save(done, host_state(), extra())
        if evaluate and not any(h.get("step") == total and "eval" in h for h in history):
            run_eval(total)
        if ckpt:
            ckpt.save(total, host_state(), extra(), force=True)
            ckpt.wait()
    finally:
        loader.close()
        if pbar:
            pbar.close()
        flag.uninstall()
        if writer:
            writer.close()
        if ckpt:
            ckpt.close()
    final = _host(host_state().params)
    if workdir and jax.process_index() == 0:
        _save_params(os.path.join(workdir, "final_params.npz"), final)
        with open(os.path.join(workdir, "history.json"), "w") as f:
            json.dump(history, f, indent=1)
    return TrainResult(params=best_params if best_params is not None else final, final_params=final,
                       history=history, best_step=best["step"], best_metric=best["metric"], steps=total)


def _summary_writer(workdir):
    if not workdir or jax.process_index() != 0:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - declared dependency
        return None
    return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _save_params(path: str, params) -> None:
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    tmp = path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, path)


def _load_params(path: str, template):
    with np.load(path) as data:
        leaves = [data[jax.tree_util.keystr(k)] for k, _ in jax.tree_util.tree_leaves_with_path(template)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
