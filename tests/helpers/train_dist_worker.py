"""One process of the two-process CPU training test (see tests/test_train_distributed.py).

Usage: python train_dist_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Trains a few steps with the pmap step and with the shard_map step on the same global batches,
each process feeding only its rows, and writes its final params to OUT_DIR/p{ID}_{mode}.npz.
"""

import os
import sys

if __name__ == "__main__":  # as a worker: 2 CPU devices per process (the test sets it too)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import numpy as np  # noqa: E402

from helpers.train_tiny import TinyScorer, init_params, make_batch, make_score_fn  # noqa: E402
from pile_jax.train import (  # noqa: E402
    create_train_state, make_mesh, make_optimizer, make_pmap_step, make_shard_map_step,
    maybe_initialize_distributed, process_batch_slice, put_batch, put_replicated, replicate,
    shard_batch, unreplicate,
)

OBJECTIVE = {"label_losses": {"pointwise_mse": 0.5, "pairwise_logistic": 1.0},
             "distill_losses": {"margin_mse": 0.5}, "ensemble": {"name": "mean"}}
OPT = dict(learning_rate=1e-2, warmup_steps=1, total_steps=20)
STEPS = 3
GLOBAL_BATCH = 8


def global_batch(i):
    return make_batch(300 + i, GLOBAL_BATCH, ragged=True)


def flat(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def main():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    assert maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60)
    assert jax.process_count() == nproc and jax.device_count() == 2 * nproc
    model = TinyScorer()
    params = init_params(model, make_batch(0, 2), seed=0)
    tx = make_optimizer(**OPT)
    kw = dict(score_fn=make_score_fn(model), objective=OBJECTIVE, tx=tx)

    # pmap over the local devices; psum spans both processes
    pstep = make_pmap_step(**kw)
    state = replicate(create_train_state(params, tx, jax.random.PRNGKey(0)))
    losses = []
    for i in range(STEPS):
        local = process_batch_slice(global_batch(i))
        state, m = pstep(state, shard_batch(local, jax.local_device_count()))
        losses.append(float(np.asarray(m["loss"])[0]))
    np.savez(os.path.join(out, f"p{pid}_pmap.npz"), loss=np.asarray(losses),
             **flat(unreplicate(state).params))

    # jit(shard_map) over the global mesh; each process supplies its rows
    mesh = make_mesh()
    mstep = make_shard_map_step(mesh, **kw)
    state = put_replicated(create_train_state(params, tx, jax.random.PRNGKey(0)), mesh)
    losses = []
    for i in range(STEPS):
        state, m = mstep(state, put_batch(process_batch_slice(global_batch(i)), mesh))
        losses.append(float(np.asarray(m["loss"].addressable_data(0))))
    host = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    np.savez(os.path.join(out, f"p{pid}_shard_map.npz"), loss=np.asarray(losses), **flat(host))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
