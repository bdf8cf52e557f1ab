"""The train loop, top to bottom: data -> placed step -> logging -> dev eval -> checkpoints.

What is trained is a :class:`Ranker`: float32 params, a score function
``score_fn(params, batch, *, rng, train) -> scores [B, n]`` (or ``(scores, aux_losses)``) and a
``featurize(queries [B], docs [B][n]) -> token arrays`` that turns text into the model's inputs
(padded to a length bucket, so few shapes are compiled).  Any architecture plugs in that way.

Training reads ranking groups (``query_id``, ``doc_ids [n]``, ``labels``, ``label_mask``,
``mask``, ``teacher_scores [T, n]``) from any random-access source (the TFDS ArrayRecord data
source, or a list of examples) through the deterministic, resumable, prefetching loader of
:mod:`pile_jax.data.loader`. Checkpoints hold the train state, the loader position, the history
the best dev score and the best params (every host resumes with the same ones), so
``resume=True`` continues exactly where a killed run stopped: same batches, same dropout keys,
same result.

The loop::

    placement = make_placement(cfg.parallel)        # pmap | shard_map | none, chosen once
    state = placement.init(create_train_state(...) or restore(...))
    batches = DevicePrefetch(loader, placement.put)      # two batches already on device
    for step in range(start, total):
        state, metrics = placement step(state, batches.next_batch())
        read metrics / evaluate / checkpoint / stop on preemption, on their intervals

Metrics stay on device until a log, eval or checkpoint step reads them (no per-step host sync);
skip counters live in the train state (see :mod:`pile_jax.train.step`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import types
import typing
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from pile_jax.data.loader import DevicePrefetch, make_train_loader, source_doc_ids
from pile_jax.caches import BoundedCache
from pile_jax.config import Checker, ConfigError
from pile_jax.io import as_path, barrier, is_primary, is_url, write_json
from pile_jax.params import load_params, save_params
from pile_jax.train.checkpoint import Checkpointer, install_sigterm_handler
from pile_jax.train.objective import Objective
from pile_jax.train.optim import learning_rate_schedule, make_optimizer
from pile_jax.train.step import create_train_state, make_placement


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` config section (all optional)."""

    batch_size: int = 8            # global batch, in ranking groups
    epochs: float = 1.0            # used when steps is None
    steps: int | None = None
    learning_rate: float = 3e-5
    lr_multipliers: dict[str, float] | None = None  # {path regex: factor}, e.g. {"head": 20.0} for a new score head
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
        """A TrainConfig from a ``train:`` mapping, each value converted to its field's real type.

        The field types come from ``typing.get_type_hints`` (not annotation strings); each value goes
        through :func:`_convert`. Missing keys keep the dataclass default (the one home of each
        default). Raises ``ConfigError("train.<key>: expected <type>, got <value> (<why>)")``."""
        from pile_jax.config import ConfigError

        cfg = dict(cfg or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"train: unknown key(s) {unknown} (known: {sorted(known)})")
        hints = typing.get_type_hints(cls)
        out = {}
        for key, value in cfg.items():
            tp = hints[key]
            try:
                out[key] = _convert(tp, value)
            except (TypeError, ValueError, OverflowError, re.error) as e:
                raise ConfigError(f"train.{key}: expected {_type_name(tp)}, got {value!r} ({e})") from e
        return cls(**out)


#: train-config ranges: key -> (lowest allowed value, null allowed, integer)
TRAIN_RANGES = {"batch_size": (1, False, True), "accum_steps": (1, False, True), "checkpoint_every": (1, False, True),
                "log_every": (1, False, True), "eval_every": (1, True, True), "keep_checkpoints": (1, False, True),
                "max_nonfinite_steps": (1, False, True), "steps": (1, True, True), "seed": (0, False, True),
                "learning_rate": (0, False, False), "weight_decay": (0, False, False), "clip_norm": (0, True, False),
                "warmup_steps": (0, False, False)}
def train_keys() -> tuple[str, ...]:
    """The keys of a ``train:`` section: the fields of :class:`TrainConfig`."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def check_train_section(node: Any, path: str, source: str = "config") -> dict:
    """The schema fragment of a ``train:`` section: :class:`TrainConfig` keys, ranges, parallel /
    schedule names, ``lr_multipliers`` regexes, ``accum_steps`` dividing ``batch_size``."""
    from pile_jax.train.optim import SCHEDULES
    from pile_jax.train.step import PARALLEL_MODES

    c = Checker(source)
    node = c.section(node, path, train_keys())
    for key, (low, nullable, integer) in TRAIN_RANGES.items():
        c.number(node, key, path, integer=integer, low=low, nullable=nullable)
    c.number(node, "epochs", path, low=0, low_open=True, nullable=False)
    c.choice(node, "parallel", path, PARALLEL_MODES)
    c.choice(node, "schedule", path, SCHEDULES)
    if "progress" in node and not isinstance(node["progress"], bool):
        c.fail(f"{path}.progress", f"must be true or false, got {node['progress']!r}")
    lrm = node.get("lr_multipliers")
    if lrm is not None:
        if not isinstance(lrm, Mapping):
            c.fail(f"{path}.lr_multipliers", f"must map a parameter-path regex to a factor, got {lrm!r}")
        for pattern in lrm:
            try:
                re.compile(str(pattern))
            except re.error as e:
                c.fail(f"{path}.lr_multipliers", f"{pattern!r} is not a valid regex ({e})")
            c.number(lrm, pattern, f"{path}.lr_multipliers", low=0, nullable=False)
    bs, acc = node.get("batch_size"), node.get("accum_steps")
    if isinstance(bs, int) and isinstance(acc, int) and bs % acc:
        c.fail(f"{path}.accum_steps", f"{acc} does not divide batch_size {bs}")
    return node


def _train_sections(cfg: Mapping[str, Any], job: str) -> list[tuple[str, dict]]:
    """``(key path, merged train mapping)`` of every training the job will run: the fine-tuned
    (``cross_encoder``, ``fine_tuned``) teachers (``teacher_train`` + their own ``train``), then the
    job's students (``train`` | ``students.train`` | ``study.train``). The key path names the
    section that set ``batch_size`` (so the error points at the key to change)."""
    out = []
    base = dict(cfg.get("teacher_train") or {})
    for i, spec in enumerate(cfg.get("teachers") or []):
        if isinstance(spec, Mapping) and spec.get("kind") in ("cross_encoder", "fine_tuned"):
            own = dict(spec.get("train") or {})
            path = f"teachers[{i}] ({spec.get('name')}).train" if "batch_size" in own else "teacher_train"
            out.append((path, {**base, **own}))
    if job == "train":
        out.append(("train", dict(cfg.get("train") or {})))
    elif job == "run":
        out.append(("students.train", dict((cfg.get("students") or {}).get("train") or {})))
    elif job == "study":
        out.append(("study.train", dict((cfg.get("study") or {}).get("train") or {})))
    return out


def check_device_counts(cfg: Mapping[str, Any], *, job: str, process_count: int | None = None,
                        local_device_count: int | None = None) -> None:
    """Checks every device-count condition of the job's trainings against the real process and
    local device counts (default: ``jax.process_count()`` / ``jax.local_device_count()``, so on a
    pod call it after ``jax.distributed.initialize``), before any work:

    * ``parallel: none`` runs on one process (``pmap`` / ``shard_map`` otherwise);
    * ``batch_size`` divisible by ``processes x local devices x accum_steps`` (``parallel: none``:
      1 device), the condition :func:`pile_jax.train.loop.train` needs.

    Raises ``ConfigError("<file>: <section>.batch_size: 4 is not divisible by ... ; use 8")``
    naming the smallest batch size >= the configured one that works."""
    if process_count is None or local_device_count is None:
        import jax

        process_count = jax.process_count() if process_count is None else process_count
        local_device_count = jax.local_device_count() if local_device_count is None else local_device_count
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    c = Checker(str(cfg.get("_source", "config")))
    for path, node in _train_sections(cfg, job):
        parallel = node.get("parallel", defaults["parallel"])
        if parallel == "none" and process_count > 1:
            c.fail(f"{path}.parallel", f"none runs on one device of one process, but this job has {process_count} "
                                       "processes; use pmap or shard_map")
        devices = 1 if parallel == "none" else int(local_device_count)
        bs, acc = int(node.get("batch_size", defaults["batch_size"])), int(node.get("accum_steps", defaults["accum_steps"]))
        unit = int(process_count) * devices * acc
        if bs % unit:
            c.fail(f"{path}.batch_size", f"{bs} is not divisible by processes ({process_count}) x local devices "
                                         f"({devices}) x accum_steps ({acc}) = {unit}; use {-(-bs // unit) * unit}")


def check_shared_folder(folder: "str | os.PathLike") -> None:
    """On several processes: ``folder`` must be one folder every process sees (a ``gs://`` path on
    a pod slice). Process 0 writes a marker named by a token it broadcasts, a barrier, and every
    process looks for it; if any process cannot see it, every process raises
    ``ConfigError("<folder>: not shared by all processes ...")`` (all together, so none is left
    waiting in a collective). No-op on one process. Every process must call."""
    import secrets

    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(np.asarray(secrets.randbits(31), np.int32)))
    marker = as_path(folder) / f".pile_jax_shared_{token}"
    if is_primary():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by process 0; every process must see it\n")
    barrier(f"pile_jax.shared.{token}.written")
    seen = np.asarray(multihost_utils.process_allgather(np.asarray(int(marker.exists()), np.int32))).reshape(-1)
    if is_primary():
        marker.unlink(missing_ok=True)
    if not seen.all():
        blind = [int(i) for i in np.flatnonzero(seen == 0)]
        raise ConfigError(f"{folder}: not shared by all processes: process(es) {blind} cannot see the file process 0 "
                          "wrote there; on several hosts the work folder must be one shared folder (a gs:// path)")


def _type_name(tp) -> str:
    """``int``, ``int | None``, ``dict[str, float] | None``: the type as it is written in the class."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if args:
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _bad(value):
    raise ValueError(f"invalid value {value!r}")


def _to_bool(value) -> bool:
    """Only a YAML boolean (true/false): a number or a string is an error, not a truth value."""
    return value if isinstance(value, bool) else _bad(value)


def _to_float(value) -> float:
    """A number, or a numeric string (YAML reads ``1e-4``, without a dot, as a string); not a bool."""
    return float(value) if not isinstance(value, bool) else _bad(value)


def _to_int(value) -> int:
    """An integral number (``2``, ``2.0``, ``"2"``, ``"1e3"``); ``2.5`` and booleans are errors."""
    f = _to_float(value)
    return int(f) if f == int(f) else _bad(value)


def _to_int_or_float(value) -> int | float:
    """An int stays an int; anything else numeric becomes a float."""
    return value if isinstance(value, int) and not isinstance(value, bool) else _to_float(value)


def _to_str(value) -> str:
    return str(value)


_CONVERTERS: dict = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _convert(tp, value):
    """``value`` as type ``tp``: one converter per real type; ``X | None`` also takes null;
    ``dict[str, float]`` needs a mapping, its keys are parameter-path regexes (compiled to check)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError("must not be null")
        rest = tuple(a for a in args if a is not type(None))
        if set(rest) == {int, float}:
            return _to_int_or_float(value)
        if len(rest) == 1:
            return _convert(rest[0], value)
        raise TypeError(f"no converter for {_type_name(tp)}")
    if value is None:
        raise ValueError("must not be null")
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            _bad(value)
        key_type, value_type = args or (str, float)
        out = {_convert(key_type, k): _convert(value_type, v) for k, v in value.items()}
        for pattern in out:
            re.compile(pattern)
        return out
    if tp in _CONVERTERS:
        return _CONVERTERS[tp](value)
    raise TypeError(f"no converter for {_type_name(tp)}")


@dataclasses.dataclass
class TrainResult:
    params: Any                    # best dev params (final params when no dev eval)
    final_params: Any
    history: list                  # one dict per logged step / eval
    best_step: int | None
    best_metric: float | None
    steps: int


# Preempted / PREEMPTED_EXIT_CODE live in pile_jax.data.errors (a store build stopped by SIGTERM
# raises it too); re-exported here for existing imports.
from pile_jax.data.errors import PREEMPTED_EXIT_CODE, Preempted  # noqa: E402,F401


# The Ranker, the collate and the scorers live in pile_jax.scoring (tokenise once, assemble from
# ids, data-parallel scoring); re-exported here for existing imports.
from pile_jax.scoring import (  # noqa: E402
    Featurize,
    Ranker,
    cached_scorer,
    features_of,
    lookup_texts,
    make_collate,
    score_candidates,
    score_pairs,
)

#: one compiled train step per (score function, objective, placement, optimizer settings): runs
#: that differ only in seed or data reuse it; owned here, at most 32 per process
STEPS = BoundedCache("pile_jax.train.loop", "train_steps", maxsize=32)


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
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Trains ``ranker`` on the ranking groups in ``source``; see the module docstring.

    ``workdir`` is a local path or a URL (``gs://bucket/run``); it holds ``checkpoints/``,
    ``best_params.npz``, ``final_params.npz``, ``history.json`` and ``tensorboard/``. Shared files
    are written by process 0 only. ``evaluate(params) -> {metric: value}`` runs every
    ``eval_every`` steps and at the end; the params with the best ``select_metric`` are returned
    (best-checkpoint selection). With a workdir, SIGTERM saves a checkpoint and raises
    :class:`Preempted` (several processes: at orbax's preemption sync point, every process).
    On one process without a workdir, or off the main thread, SIGTERM keeps its default
    behaviour (after ``jax.distributed.initialize`` JAX's preemption service owns SIGTERM).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_config(config)
    obj = Objective.from_config(objective)
    log = log or (lambda s: None)
    placement = make_placement(cfg.parallel)  # pmap | shard_map | none, chosen once
    loader = _make_loader(ranker, source, queries, docs, cfg, placement, workdir)
    total = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * loader.steps_per_epoch)))
    warmup = int(cfg.warmup_steps * total) if cfg.warmup_steps < 1 else int(cfg.warmup_steps)
    schedule = learning_rate_schedule(learning_rate=cfg.learning_rate, warmup_steps=warmup,
                                      total_steps=total, schedule=cfg.schedule)
    tx = make_optimizer(learning_rate=cfg.learning_rate, warmup_steps=warmup, total_steps=total,
                        schedule=cfg.schedule, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm,
                        lr_multipliers=cfg.lr_multipliers)
    run = _Training(cfg, placement, loader, total, workdir, evaluate, log)
    state = run.open(create_train_state(ranker.params, tx, jax.random.PRNGKey(cfg.seed)), resume)
    # --- the step: runs that differ only in seed/data reuse one compiled step
    key = (ranker.score_fn, repr(obj), placement.mode, placement.devices_per_process, jax.process_count(),
           cfg.accum_steps, cfg.learning_rate, warmup, total, cfg.schedule, cfg.weight_decay, cfg.clip_norm,
           repr(cfg.lr_multipliers))
    step_fn = STEPS.get_or_make(key, lambda: placement.make_step(score_fn=ranker.score_fn, objective=obj, tx=tx,
                                                                 accum_steps=cfg.accum_steps, lr_schedule=schedule))
    run.steps(step_fn, placement.init(state), int(state.step))
    return run.finish()


def _make_loader(ranker, source, queries, docs, cfg: TrainConfig, placement, workdir):
    """The deterministic loader of this host's slice of every global batch (the batch size must
    divide over processes x local devices x accumulation steps). Every text is tokenised once;
    with a workdir the token ids are kept in ``workdir/tokens/`` (process 0 writes them) and a
    resumed run reads them back; a frozen document index (query_encoder student) encodes the
    documents the source reads, once."""
    pc, pi = jax.process_count(), jax.process_index()
    if cfg.batch_size % (pc * placement.devices_per_process * cfg.accum_steps):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} must be divisible by processes ({pc}) x local "
            f"devices ({placement.devices_per_process}) x accum_steps ({cfg.accum_steps})")
    index_ids = source_doc_ids(source) if hasattr(features_of(ranker), "index_documents") else None
    collate = make_collate(ranker, queries, docs, store_dir=as_path(workdir) / "tokens" if workdir else None,
                           index_doc_ids=index_ids)
    # a source that samples its groups on the fly (TableGroupSource) says length_aware = False:
    # reading every group once for its length would cost O(dataset) before the first step
    return make_train_loader(source, global_batch_size=cfg.batch_size, seed=cfg.seed, process_index=pi,
                             process_count=pc, collate=collate, drop_remainder=len(source) >= cfg.batch_size,
                             length_aware=getattr(source, "length_aware", True))


class _Training:
    """One run of :func:`train` after its setup: the workdir (checkpoints, resume, best params),
    the step loop with its intervals (metrics, dev evaluation, checkpoints, preemption), the
    history and the result."""

    def __init__(self, cfg: TrainConfig, placement, loader, total: int, workdir, evaluate, log):
        self.cfg, self.placement, self.loader, self.total = cfg, placement, loader, total
        self.evaluate, self.log = evaluate, log
        self.wd = as_path(workdir) if workdir else None
        self.history: list[dict] = []
        self.best = {"step": None, "metric": None}
        self.best_params = None
        self.ckpt = None
        self.pc = jax.process_count()
        self.pending: list[tuple[int, dict]] = []   # per-step metrics still on device
        self.clock = {"t0": time.perf_counter(), "pairs": 0}
        self.writer = self.pbar = self.batches = self.dstate = None

    def open(self, state, resume: bool):
        """The workdir (local or URL) and, with ``resume``, the latest checkpoint: state, loader
        position, history, best dev score and params. Returns the state to start from."""
        wd, cfg = self.wd, self.cfg
        if wd is None:
            return state
        if is_primary():
            wd.mkdir(parents=True, exist_ok=True)
        check_shared_folder(wd)   # several processes: one folder all of them see, or a ConfigError
        self.ckpt = Checkpointer(wd / "checkpoints", max_to_keep=cfg.keep_checkpoints,
                                 save_interval_steps=cfg.checkpoint_every)
        restored = self.ckpt.restore_latest(state) if resume else None
        if restored is not None:
            state, extra = restored
            self.loader.load_state_dict(extra["sampler"])
            self.history = list(extra.get("history", []))
            self.best = dict(extra.get("best", self.best))
            if self.best["step"] is not None:   # kept in the checkpoint: every host, this very step
                best = self.ckpt.restore_best(int(state.step), state.params)
                if best is None and (wd / "best_params.npz").exists():   # checkpoints made before issue 19
                    best = load_params(wd / "best_params.npz", state.params)
                self.best_params = None if best is None else _host(best)
            self.log(f"resumed from step {int(state.step)} (epoch {self.loader.state_dict()['epoch']})")
        return state

    def extra(self) -> dict:
        return {"sampler": self.batches.state_dict(), "history": self.history, "best": self.best}

    def run_eval(self, step: int) -> None:
        """Dev evaluation at ``step``; the best ``select_metric`` keeps its params (and
        ``best_params.npz``)."""
        params = self.placement.host(self.dstate).params
        metrics = dict(self.evaluate(params))
        self.history.append({"step": step, "eval": metrics})
        value = metrics.get(self.cfg.select_metric)
        self.log(f"step {step}: dev " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if self.writer:
            for k, v in metrics.items():
                self.writer.add_scalar(f"dev/{k}", v, step)
        if value is not None and (self.best["metric"] is None or value > self.best["metric"]):
            self.best.update(step=step, metric=float(value))
            self.best_params = _host(params)
            if self.wd is not None and is_primary():
                save_params(self.wd / "best_params.npz", self.best_params)

    def read_metrics(self) -> None:
        """Reads the pending steps' metrics: reports every skipped step, aborts after
        ``max_nonfinite_steps`` consecutive ones (at the exact step), logs the log steps."""
        cfg = self.cfg
        rows = [(s, {k: self.placement.scalar(v) for k, v in m.items()}) for s, m in self.pending]
        self.pending.clear()
        for s, m in rows:
            if m["nonfinite"]:
                self.log(f"step {s}: non-finite loss or gradients; update skipped "
                         f"({m['nonfinite_run']} in a row, {m['skipped']} in total)")
                if m["nonfinite_run"] >= cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"step {s}: {m['nonfinite_run']} consecutive steps with non-finite loss or "
                        f"gradients (train.max_nonfinite_steps={cfg.max_nonfinite_steps}); their "
                        "updates were skipped. Check the inputs and the learning rate.")
            if s % cfg.log_every == 0 or s == self.total:
                dt = time.perf_counter() - self.clock["t0"]
                m["pairs_per_s"] = self.clock["pairs"] / dt if dt > 0 else 0.0
                self.clock.update(t0=time.perf_counter(), pairs=0)
                self.history.append({"step": s, **m})
                if self.writer:
                    for k, v in m.items():
                        self.writer.add_scalar(f"train/{k}", v, s)
                if self.pbar:
                    self.pbar.set_postfix(loss=f"{m['loss']:.4f}")

    def steps(self, step_fn, dstate, start: int) -> None:
        """The step loop from ``start`` to the total, then the final metrics, dev evaluation and
        checkpoint. Metrics stay on device until an interval (log, eval, checkpoint, stop) reads
        them. SIGTERM -> checkpoint and :class:`Preempted`, only where a checkpoint can be written
        (one process: our flag; several: JAX's preemption service + orbax's sync point)."""
        cfg, ckpt, placement, total = self.cfg, self.ckpt, self.placement, self.total
        self.dstate = dstate
        # Device prefetch: two batches already placed on device (device_put is asynchronous, so the
        # copy of the next batch overlaps the running step); its state is that of the next batch
        # returned, so checkpoints stay exact. The pair count is taken on the host, before the copy.
        self.batches = DevicePrefetch(self.loader, lambda b: (int(np.asarray(b["mask"]).sum()) * self.pc,
                                                              placement.put(b)), size=2)
        flag = install_sigterm_handler() if (ckpt is not None and self.pc == 1) else None
        self.writer = _summary_writer(self.wd)
        if cfg.progress:
            from pile_jax.logs import progress as progress_bar

            self.pbar = progress_bar(total=total, initial=start, desc="train", unit="step")
        try:
            for step in range(start, total):
                pairs, batch = self.batches.next_batch()
                self.clock["pairs"] += pairs
                self.dstate, metrics = step_fn(self.dstate, batch)
                done = step + 1
                self.pending.append((done, metrics))
                if self.pbar:
                    self.pbar.update(1)
                eval_now = bool(self.evaluate and cfg.eval_every and done % cfg.eval_every == 0 and done != total)
                stop = ckpt is not None and ckpt.should_stop(done, flag)
                save_now = ckpt is not None and done % cfg.checkpoint_every == 0
                if done % cfg.log_every == 0 or done == total or eval_now or stop or save_now:
                    self.read_metrics()
                if eval_now:
                    self.run_eval(done)
                if stop:
                    ckpt.save(done, placement.host(self.dstate), self.extra(), force=True, best=self.best_params)
                    ckpt.wait()
                    raise Preempted(f"preempted (SIGTERM): saved a checkpoint at step {done} in "
                                    f"{ckpt.directory}; rerun with --resume to continue")
                if save_now:
                    ckpt.save(done, placement.host(self.dstate), self.extra(), best=self.best_params)
            self.read_metrics()
            if self.evaluate and not any(h.get("step") == total and "eval" in h for h in self.history):
                self.run_eval(total)
            if ckpt:
                ckpt.save(total, placement.host(self.dstate), self.extra(), force=True, best=self.best_params)
                ckpt.wait()
        finally:
            self.close(flag)

    def close(self, flag) -> None:
        self.batches.close()
        if self.pbar:
            self.pbar.close()
        if flag is not None:
            flag.uninstall()
        if self.writer:
            self.writer.close()
        if self.ckpt:
            self.ckpt.close()

    def finish(self) -> TrainResult:
        """``final_params.npz`` and ``history.json`` (process 0); the best (or final) params."""
        final = _host(self.placement.host(self.dstate).params)
        if self.wd is not None:
            if is_primary():
                save_params(self.wd / "final_params.npz", final)
                write_json(self.wd / "history.json", self.history)
            barrier("pile_jax.train.final")
        return TrainResult(params=self.best_params if self.best_params is not None else final, final_params=final,
                           history=self.history, best_step=self.best["step"], best_metric=self.best["metric"],
                           steps=self.total)


def _summary_writer(wd):
    """TensorBoard writer on process 0 (``wd/tensorboard``, local or URL), or None."""
    if wd is None or not is_primary():
        return None
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX import record_writer
    except ImportError:  # pragma: no cover - declared dependency
        return None
    logdir = str(wd / "tensorboard")
    if is_url(logdir):  # event files through epath (tensorboardX's own gs writer needs another client)
        record_writer.register_writer_factory(logdir.split(":")[0], _EpathRecordWriterFactory())
    return SummaryWriter(logdir)


class _EpathRecordWriterFactory:
    """tensorboardX writer factory for URL log dirs: event files written through etils.epath
    (on object stores an event file appears when the writer is closed)."""

    def directory_check(self, path):
        as_path(path).mkdir(parents=True, exist_ok=True)

    def open(self, path):
        return _EventFile(as_path(path).open("wb"))


class _EventFile:
    """write / flush / close only (tensorboardX fsyncs anything with a ``fileno``)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data)

    def flush(self):
        self._f.flush()

    def close(self):
        self._f.close()
