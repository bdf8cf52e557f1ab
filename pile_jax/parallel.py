"""Data-parallel helpers shared by models, scoring and training (a leaf below them: imports only
JAX, NumPy and the leaf modules :mod:`pile_jax.caches` / :mod:`pile_jax.logs`).

* :func:`data_parallel`: ``fn(params, batch)`` with params replicated over the local devices and
  the batch split on its leading axis under ``jit`` shardings.
* :func:`map_sorted`: the one length-sorted batching loop (scoring pairs, encoding texts), dealt
  round-robin to processes and all-gathered.
* :func:`eval_scores_fn` / :func:`cached_scorer`: the jit-compiled eval step ``(params, batch) ->
  float32 [B, n]`` of a score function (``train=False``, no RNG), one per score function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax.caches import BoundedCache
from pile_jax.numerics import score_precision

__all__ = ["data_parallel", "map_sorted", "split_output", "eval_scores_fn", "cached_scorer",
           "scorer_first_column", "SCORERS"]


def split_output(out) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A score function returns ``scores`` or ``(scores, aux)``: ``(scores, aux dict)``."""
    if isinstance(out, tuple):
        scores, aux = out
        return scores, dict(aux or {})
    return out, {}


def eval_scores_fn(score_fn: Callable) -> Callable[[Any, Mapping[str, Any]], jax.Array]:
    """jit-compiled ``(params, batch) -> float32 scores [B, n]`` (``train=False``, no RNG)."""
    def fn(params, batch):
        scores, _ = split_output(score_fn(params, batch, rng=None, train=False))
        return jnp.asarray(scores, jnp.float32)
    return jax.jit(fn)


#: one compiled eval step per score function (the key holds the function itself, so compiled
#: shapes are reused across rankers that share it); 64 score functions at most per process
SCORERS = BoundedCache("pile_jax.parallel", "scorers", maxsize=64)


def cached_scorer(score_fn: Callable) -> Callable:
    """One jit-compiled ``(params, batch) -> float32 [B, n]`` scorer per score function (so
    compiled shapes are reused): :func:`eval_scores_fn` kept in :data:`SCORERS`."""
    return SCORERS.get_or_make(score_fn, lambda: eval_scores_fn(score_fn))


@jax.jit
def scorer_first_column(scores):
    return scores[:, 0]


def data_parallel(fn: Callable, params: Any, devices: Sequence | None = None):
    """``(run(batch) -> device array, rows multiple)``: ``fn(params, batch)`` with ``params``
    replicated on ``devices`` (default: all local devices) and ``batch`` split on its leading
    axis (whose size must be a multiple of ``len(devices)``) under ``jit`` shardings, at the
    score precision (:func:`pile_jax.numerics.score_precision`: HIGHEST matmuls)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = list(devices or jax.local_devices())
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = jax.device_put(jax.tree_util.tree_map(_addressable, params), NamedSharding(mesh, PartitionSpec()))
    split = NamedSharding(mesh, PartitionSpec("data"))

    def run(batch):
        with score_precision():   # what is scored, encoded or cached: HIGHEST (pile_jax.numerics)
            return fn(replicated, jax.device_put(batch, split))

    return run, len(devices)


def _addressable(x):
    """A value this process can place on its own devices: params of a multi-process
    ``jit`` + sharding run (global arrays) are read from the local replica, or gathered."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return x.addressable_data(0)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def map_sorted(lengths, batch_size: int, make_batch: Callable, run: Callable, *, tail: tuple = (),
               progress: str | None = None, distributed: bool | None = None) -> np.ndarray:
    """``out [N, *tail]`` float32: item ``i``'s row of ``run(make_batch(idx, rows))``.

    Items are stably sorted by ``lengths`` and cut into batches of ``batch_size``;
    ``make_batch(idx, rows)`` builds the batch of items ``idx`` padded to ``rows = batch_size``
    rows, ``run`` returns ``[rows, *tail]`` (a device array: the next batch is assembled while
    it computes). ``distributed`` (default: more than one process): process ``p`` of ``P`` runs
    batches ``p, p + P, ...`` and the results are all-gathered (every process must call).
    """
    n = len(lengths)
    out = np.zeros((n, *tail), np.float32)
    order = np.argsort(np.asarray(lengths, np.int64), kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    pc, pi = jax.process_count(), jax.process_index()
    distributed = pc > 1 if distributed is None else bool(distributed)
    mine = chunks[pi::pc] if distributed else chunks
    local = np.zeros((len(mine), batch_size, *tail), np.float32)
    it = range(len(mine))
    if progress:
        from pile_jax.logs import progress as progress_bar

        it = progress_bar(it, desc=progress, unit="batch")
    pending = None
    for k in it:
        res = run(make_batch(mine[k], batch_size))
        if pending is not None:
            local[pending[0]] = np.asarray(pending[1])
        pending = (k, res)
    if pending is not None:
        local[pending[0]] = np.asarray(pending[1])
    if not distributed:
        for idx, res in zip(mine, local):
            out[idx] = res[:len(idx)]
        return out
    from jax.experimental import multihost_utils

    per = -(-len(chunks) // pc)
    padded = np.zeros((per, batch_size, *tail), np.float32)
    padded[:len(local)] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))      # [P, per, rows, *tail]
    for c, idx in enumerate(chunks):
        out[idx] = gathered[c % pc, c // pc, :len(idx)]
    return out
