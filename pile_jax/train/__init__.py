"""Training: optimizer, configured objective, parallel train step, checkpoints."""

from pile_jax.train.checkpoint import Checkpointer, PreemptionFlag, install_sigterm_handler
from pile_jax.train.objective import Objective, compute_loss, resolve_target
from pile_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask
from pile_jax.train.step import (
    Placement,
    TrainState,
    create_train_state,
    eval_scores_fn,
    make_jit_step,
    make_mesh,
    make_placement,
    make_pmap_step,
    make_shard_map_step,
    make_train_step,
    maybe_initialize_distributed,
    process_batch_slice,
    put_batch,
    put_replicated,
    replicate,
    shard_batch,
    train_step,
    unreplicate,
)

__all__ = [
    "Checkpointer", "PreemptionFlag", "install_sigterm_handler",
    "Objective", "compute_loss", "resolve_target",
    "learning_rate_schedule", "make_optimizer", "weight_decay_mask",
    "Placement", "make_placement", "TrainState", "create_train_state", "eval_scores_fn", "make_jit_step", "make_mesh",
    "make_pmap_step", "make_shard_map_step", "make_train_step", "maybe_initialize_distributed",
    "process_batch_slice", "put_batch", "put_replicated", "replicate", "shard_batch",
    "train_step", "unreplicate",
]
