"""The train step: one per-device function, run under ``jax.pmap`` or ``jit(shard_map)``.

``train_step`` sees the per-device batch. It computes the distillation target once on that
batch (``stop_gradient``), splits it into ``accum_steps`` micro-batches (``lax.scan``), sums the
gradients, reduces gradients and metrics over ``axis_name`` (all devices, all hosts), and
applies the optimizer update unless the loss or gradients are non-finite.

A non-finite step is *skipped*, not undone: ``state.step`` still advances (it counts steps
taken, so the data position, the checkpoints and the learning-rate schedule stay in step with
the loop), params and optimizer moments stay unchanged, and the on-device counters
``state.skipped`` (total) and ``state.nonfinite_run`` (consecutive; 0 after an applied update)
go up. The host reads them at its own intervals, never per step.

The parallel mode is chosen once, as a :class:`Placement` (:func:`make_placement`): ``pmap``
over local devices, ``shard_map`` (``jit`` of a ``shard_map`` over a ``("batch",)`` mesh from
``jax.experimental.mesh_utils``, batches as ``NamedSharding`` global arrays) or ``none`` (one
device, one process). It owns the four things that differ between modes: placing the state,
placing a batch, the compiled step, and reading state/metrics back to the host.

Terms are normalised by *global* list counts, so one step on D devices x k micro-batches is
the same update as one step on the whole global batch on one device.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pile_jax.parallel import eval_scores_fn, split_output as _split_output  # noqa: F401 (re-exported)
from pile_jax.train.objective import Objective, as_objective, compute_loss, resolve_target, term_denominators

__all__ = [
    "TrainState", "create_train_state", "train_step", "make_jit_step", "make_pmap_step",
    "make_shard_map_step", "make_train_step", "make_mesh", "shard_batch", "replicate",
    "unreplicate", "put_replicated", "put_batch", "put_sharded_batch", "process_batch_slice", "eval_scores_fn",
    "maybe_initialize_distributed", "PARALLEL_MODES", "Placement", "make_placement",
]

PARALLEL_MODES = ("pmap", "shard_map", "none")

ScoreFn = Callable[..., Any]  # (params, batch, *, rng, train) -> scores | (scores, aux dict)


@flax.struct.dataclass
class TrainState:
    """Step (steps taken, skipped ones included), float32 params, optimizer state, base PRNG key
    (raw uint32), and the skip counters: ``skipped`` (non-finite steps so far) and
    ``nonfinite_run`` (consecutive non-finite steps up to now; 0 after an applied update)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array
    nonfinite_run: jax.Array


def _raw_key(rng) -> jax.Array:
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return rng


def create_train_state(params: Any, tx: optax.GradientTransformation, rng) -> TrainState:
    """Fresh state: float32 master params (floating leaves cast), ``tx.init``, step 0."""
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x),
        params)
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers (the step donates the state)
    return TrainState(step=zero(), params=params, opt_state=tx.init(params), rng=_raw_key(rng),
                      skipped=zero(), nonfinite_run=zero())


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    score_fn: ScoreFn,
    objective: Objective | Mapping[str, Any],
    tx: optax.GradientTransformation,
    axis_name: str | None = "batch",
    accum_steps: int = 1,
    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the per-device ``batch``; ``axis_name=None`` means one device.

    Metrics (identical on every device): ``loss``, each term (``label/<loss>``,
    ``distill/<loss>``, ``aux/<name>``), ``grad_norm`` (before clipping), ``learning_rate``
    (if ``lr_schedule``; ``lr_schedule(state.step)``), ``nonfinite`` (int32 0/1: this step was
    skipped), ``nonfinite_run`` and ``skipped`` (int32: the state's counters after this step).

    Skipped step (loss or gradient norm non-finite): ``step + 1``, ``skipped + 1``,
    ``nonfinite_run + 1``; params and optimizer state unchanged except the optimizer's schedule
    counters (``optax.ScaleByScheduleState``), which advance with ``step`` so the schedule's
    position is always ``state.step`` (Adam's own count, used for bias correction, counts applied
    updates only).
    """
    obj = as_objective(objective)
    batch = dict(batch)
    bsz = jax.tree_util.tree_leaves(batch)[0].shape[0]
    if accum_steps < 1 or bsz % accum_steps:
        raise ValueError(f"per-device batch {bsz} is not divisible by accum_steps={accum_steps}")
    micro = bsz // accum_steps

    key = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        num_shards = jax.lax.psum(1, axis_name)
    else:
        num_shards = 1

    target = resolve_target(batch, obj)
    dens = _psum(term_denominators(batch, obj), axis_name)
    aux_scale = 1.0 / (accum_steps * num_shards)

    def micro_loss(params, mb, mt, mkey):
        scores, aux = _split_output(score_fn(params, mb, rng=mkey, train=True))
        aux = {k: jnp.asarray(v, jnp.float32) * aux_scale for k, v in aux.items()}
        return compute_loss(scores, mb, obj, aux_losses=aux, target=mt, denominators=dens)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def one(i, mb, mt):
        (loss, terms), grads = grad_fn(state.params, mb, mt, jax.random.fold_in(key, i))
        return grads, dict(terms, loss=loss)

    if accum_steps == 1:
        grads, sums = one(0, batch, target)
    else:
        split = lambda x: x.reshape((accum_steps, micro) + x.shape[1:])
        mbs = jax.tree_util.tree_map(split, batch)
        mts = None if target is None else split(target)
        first = jax.tree_util.tree_map(lambda x: x[0], (mbs, mts))
        rest = jax.tree_util.tree_map(lambda x: x[1:], (mbs, mts))
        carry0 = one(0, *first)

        def body(carry, xs):
            i, mb, mt = xs
            g, m = one(i, mb, mt)
            return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

        idx = jnp.arange(1, accum_steps)
        (grads, sums), _ = jax.lax.scan(body, carry0, (idx,) + rest)

    grads, sums = _psum((grads, sums), axis_name)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)

    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    applied = state.replace(step=state.step + 1, params=new_params, opt_state=new_opt_state,
                            nonfinite_run=jnp.zeros_like(state.nonfinite_run))
    skipped = state.replace(step=state.step + 1, opt_state=_advance_schedules(state.opt_state, new_opt_state),
                            skipped=state.skipped + 1, nonfinite_run=state.nonfinite_run + 1)
    new_state = jax.tree_util.tree_map(lambda a, s: jnp.where(ok, a, s), applied, skipped)

    metrics = dict(sums)
    metrics["grad_norm"] = grad_norm
    if lr_schedule is not None:
        metrics["learning_rate"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    metrics["nonfinite"] = (~ok).astype(jnp.int32)
    metrics["nonfinite_run"] = new_state.nonfinite_run
    metrics["skipped"] = new_state.skipped
    return new_state, metrics


def _advance_schedules(old_opt_state, new_opt_state):
    """``old_opt_state`` with every ``optax.ScaleByScheduleState`` taken from ``new_opt_state``."""
    is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
    return jax.tree_util.tree_map(lambda o, n: n if is_sched(o) else o, old_opt_state, new_opt_state,
                                  is_leaf=is_sched)


def _bind(score_fn, objective, tx, axis_name, accum_steps, lr_schedule):
    return functools.partial(
        train_step, score_fn=score_fn, objective=as_objective(objective), tx=tx,
        axis_name=axis_name, accum_steps=accum_steps, lr_schedule=lr_schedule)


def make_jit_step(*, score_fn, objective, tx, accum_steps=1, lr_schedule=None, donate=True):
    """Single-device step: ``jit(train_step(axis_name=None))``; batch ``[B, ...]``."""
    fn = _bind(score_fn, objective, tx, None, accum_steps, lr_schedule)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def make_pmap_step(*, score_fn, objective, tx, accum_steps=1, lr_schedule=None,
                   axis_name="batch", donate=True):
    """``jax.pmap`` step over local devices: state from :func:`replicate`, batch from
    :func:`shard_batch` (``[D, B/D, ...]``); metrics come back ``[D]`` (all equal).
    Multi-host: each host passes its own slice; the reductions span all hosts."""
    fn = _bind(score_fn, objective, tx, axis_name, accum_steps, lr_schedule)
    return jax.pmap(fn, axis_name=axis_name, donate_argnums=(0,) if donate else ())


def make_mesh(devices=None, axis_name: str = "batch") -> Mesh:
    """1-D data-parallel mesh over all (global) devices, laid out by
    ``jax.experimental.mesh_utils.create_device_mesh`` (topology-aware on TPU slices)."""
    if devices is None:
        return Mesh(mesh_utils.create_device_mesh((jax.device_count(),)), (axis_name,))
    return Mesh(np.asarray(devices), (axis_name,))


def make_shard_map_step(mesh: Mesh | None = None, *, score_fn, objective, tx, accum_steps=1,
                        lr_schedule=None, axis_name="batch", donate=True):
    """``jit(shard_map(train_step))`` over a ``(axis_name,)`` mesh: state replicated
    (:func:`put_replicated`), batch ``[B_global, ...]`` sharded on axis 0 (:func:`put_batch`);
    returns unreplicated state and scalar metrics."""
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    if axis_name not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} do not include {axis_name!r}")
    fn = _bind(score_fn, objective, tx, axis_name, accum_steps, lr_schedule)
    # check_vma=False: gradients w.r.t. the replicated params stay per-device (as under pmap)
    # and are reduced by the explicit psum in train_step; with check_vma=True autodiff would
    # already psum them and the step would double-count.
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P()),
                            check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def make_train_step(parallel: str = "pmap", *, mesh=None, **kwargs):
    """Dispatch on the config key ``parallel``: "pmap" | "shard_map" | "none" (single device)."""
    if parallel == "pmap":
        return make_pmap_step(**kwargs)
    if parallel == "shard_map":
        return make_shard_map_step(mesh, **kwargs)
    if parallel == "none":
        kwargs.pop("axis_name", None)
        return make_jit_step(**kwargs)
    raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")


# ---------------------------------------------------------------- data placement helpers


def shard_batch(batch: Mapping[str, Any], num_devices: int | None = None) -> dict[str, np.ndarray]:
    """``[B, ...] -> [D, B/D, ...]`` for :func:`make_pmap_step` (D = local devices)."""
    d = jax.local_device_count() if num_devices is None else num_devices

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % d:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {d} devices")
        return x.reshape((d, x.shape[0] // d) + x.shape[1:])

    return {k: split(v) for k, v in batch.items()}


def put_sharded_batch(batch: Mapping[str, Any], devices=None) -> dict[str, jax.Array]:
    """``[B, ...]`` -> ``[D, B/D, ...]`` ``jax.Array``s already on the local devices, row block ``i``
    on ``devices[i]`` (default ``jax.local_devices()``, the order ``jax.pmap`` uses), as the
    pmap step takes them (the layout of :func:`replicate`: a ``NamedSharding`` split on the leading
    axis over a 1-D mesh of ``devices``): ``jax.device_put`` is asynchronous, so the copy of a
    prefetched batch overlaps the running step and the step reads device-resident buffers."""
    devices = jax.local_devices() if devices is None else list(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("d",)), P("d"))
    return {k: jax.device_put(v, sharding) for k, v in shard_batch(batch, len(devices)).items()}


def replicate(tree: Any, devices=None) -> Any:
    """Stack a copy per local device (leading axis D), placed one copy per device, for pmap."""
    devices = jax.local_devices() if devices is None else list(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("d",)), P("d"))
    d = len(devices)
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (d,) + np.shape(x)), sharding),
        tree)


def unreplicate(tree: Any) -> Any:
    """First local copy of a replicated (pmap) tree."""
    def first(x):
        if isinstance(x, jax.Array):
            return x.addressable_data(0)[0]
        return x[0]
    return jax.tree_util.tree_map(first, tree)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Place a host-local tree (same on every host) replicated over ``mesh`` (shard_map state)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def put_batch(local_batch: Mapping[str, Any], mesh: Mesh, axis_name: str = "batch") -> dict[str, jax.Array]:
    """Global batch array from this host's rows (``[B/num_hosts, ...]``), sharded on axis 0."""
    sharding = NamedSharding(mesh, P(axis_name))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def process_batch_slice(global_batch: Mapping[str, Any], process_index: int | None = None,
                        process_count: int | None = None) -> dict[str, np.ndarray]:
    """This host's contiguous rows of a global batch (host p gets rows ``p*B/P:(p+1)*B/P``)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count

    def rows(x):
        x = np.asarray(x)
        if x.shape[0] % pc:
            raise ValueError(f"global batch {x.shape[0]} is not divisible by {pc} processes")
        n = x.shape[0] // pc
        return x[pi * n:(pi + 1) * n]

    return {k: rows(v) for k, v in global_batch.items()}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the train state and batches live for one parallel mode (see :func:`make_placement`).

    * ``init(state)``: host state -> device state (replicated per local device for ``pmap``,
      a replicated global array for ``shard_map``, a copy for ``none``: the step donates it).
    * ``put(batch)``: this process's rows ``[B/P, ...]`` -> the step's input, as ``jax.Array``s
      already placed on the devices that read them (``pmap``: ``[D, B/(P D), ...]`` split over
      the local devices, :func:`put_sharded_batch`; ``shard_map``: a global ``NamedSharding``
      array), so device prefetch overlaps the copies with the running step in both modes.
    * ``make_step(**kw)``: the compiled step (``make_train_step`` for this mode).
    * ``host(tree)``: a device state -> host-local state (one copy; what is checkpointed and
      evaluated). ``scalar(x)``: one metric -> a Python number (metrics are equal everywhere).
    * ``devices_per_process``: the local batch must divide by it (times ``accum_steps``).
    """

    mode: str
    devices_per_process: int
    mesh: Mesh | None = None

    def make_step(self, **kwargs):
        return make_train_step(self.mode, mesh=self.mesh, **kwargs)

    def init(self, state):
        if self.mode == "pmap":
            return replicate(state)
        if self.mode == "shard_map":
            return put_replicated(state, self.mesh)
        # none: own buffers, since the step donates the state (the caller's params, e.g.
        # ranker.params, would otherwise be deleted by the first step)
        return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)

    def put(self, batch):
        if self.mode == "pmap":   # on device now (asynchronous copy), not host arrays for pmap to copy
            return put_sharded_batch(batch, jax.local_devices()[:self.devices_per_process])
        if self.mode == "shard_map":
            return put_batch(batch, self.mesh)
        return batch

    def host(self, tree):
        if self.mode == "pmap":
            return unreplicate(tree)
        if self.mode == "shard_map":
            return jax.tree_util.tree_map(_local_copy, tree)
        return tree

    def scalar(self, x) -> float | int:
        x = np.asarray(_local_copy(x))
        return x.reshape(-1)[0].item()


def _local_copy(x):
    """A replicated global array's local copy (works when other processes hold the rest)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x


def make_placement(parallel: str = "pmap") -> Placement:
    """The :class:`Placement` for the config key ``train.parallel``, chosen once per run.

    ``none`` on more than one process is an error: each process would train its own shard with
    no gradient reduction, and process 0 would save params that saw 1/P of the data.
    """
    if parallel not in PARALLEL_MODES:
        from pile_jax.config import ConfigError

        raise ConfigError(f"train.parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
    if parallel == "none":
        if jax.process_count() > 1:
            from pile_jax.config import ConfigError

            raise ConfigError(
                f"train.parallel: none runs on one device of one process, but this job has "
                f"{jax.process_count()} processes (each would train its own shard without gradient "
                "reduction); use train.parallel: pmap or shard_map")
        return Placement("none", 1)
    if parallel == "pmap":
        return Placement("pmap", jax.local_device_count())
    return Placement("shard_map", jax.local_device_count(), make_mesh())


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, *, auto: bool = False,
                                 **kwargs) -> bool:
    """Call ``jax.distributed.initialize`` when configured; returns whether it is initialised.

    Arguments win over the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``). ``auto=True`` lets JAX detect the cluster (TPU pods, SLURM) with no
    arguments. Does nothing for a single-process run. Must run before any other JAX call.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if coordinator_address is None and not auto:
        return False
    if num_processes == 1 and not auto:
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
    return True
