"""Optimizer: AdamW with warmup + linear/cosine/constant decay, decay mask, global-norm clipping."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

__all__ = ["learning_rate_schedule", "weight_decay_mask", "scale_by_path", "make_optimizer", "SCHEDULES"]

SCHEDULES = ("linear", "cosine", "constant")

# Path components that name a normalisation layer ("LayerNorm_0", "layer_norm", "ln_f", "ln1", ...).
_NORM_COMPONENT = re.compile(r"(layernorm|layer_norm|(^|[_./-])ln(\d*)($|[_./-]))", re.IGNORECASE)
_NO_DECAY_LEAVES = ("bias", "scale")


def learning_rate_schedule(
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "linear",
    end_learning_rate: float = 0.0,
) -> Callable[[Any], jax.Array]:
    """Return ``step -> lr``: linear warmup from 0 over ``warmup_steps``, then ``schedule``.

    ``lr(s) = learning_rate * s / warmup_steps`` for ``s < warmup_steps``; afterwards
    "linear" decays linearly to ``end_learning_rate`` at ``total_steps``, "cosine" follows a
    half cosine to ``end_learning_rate`` at ``total_steps``, "constant" stays at
    ``learning_rate``. Steps past ``total_steps`` keep ``end_learning_rate``. ``step`` counts
    applied updates (optax's count: the first update uses ``lr(0)``).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
    warmup_steps = int(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule != "constant":
        if total_steps is None:
            raise ValueError(f"total_steps is required for schedule={schedule!r}")
        total_steps = int(total_steps)
        if total_steps < warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")
    peak = float(learning_rate)
    end = float(end_learning_rate)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        if warmup_steps > 0:
            warm = peak * step / warmup_steps
        else:
            warm = jnp.asarray(peak, jnp.float32)
        if schedule == "constant":
            after = jnp.asarray(peak, jnp.float32)
        else:
            decay_len = max(total_steps - warmup_steps, 1)
            progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
            if schedule == "linear":
                after = end + (peak - end) * (1.0 - progress)
            else:
                after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, after).astype(jnp.float32)

    return fn


def _path_names(path) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return names


def _decays(path) -> bool:
    names = _path_names(path)
    if not names:
        return True
    if names[-1] in _NO_DECAY_LEAVES:
        return False
    return not any(_NORM_COMPONENT.search(n) for n in names)


def weight_decay_mask(params: Any) -> Any:
    """Boolean tree like ``params``: True where weight decay applies.

    Excluded: leaves named ``bias`` or ``scale``, and every leaf under a path component
    naming a LayerNorm ("LayerNorm", "layer_norm", "ln", "ln_f", "ln1", ...).
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: _decays(p), params)


def _path_string(path) -> str:
    return "/".join(_path_names(path))


def scale_by_path(multipliers: dict[str, float] | None) -> optax.GradientTransformation:
    """Multiplies each leaf's update by the multiplier of the first pattern that matches its path.

    ``multipliers`` maps regular expressions (``re.search`` on the "/"-joined parameter path,
    e.g. ``"head/classifier/kernel"``) to factors; unmatched leaves keep factor 1. Placed after
    AdamW, a factor ``m`` is exactly a learning rate ``m * lr(step)`` (weight decay included) for
    those leaves: the usual higher learning rate for a freshly initialised score head.
    """
    rules = [(re.compile(k), float(v)) for k, v in (multipliers or {}).items()]

    def factor(path) -> float:
        name = _path_string(path)
        for pattern, value in rules:
            if pattern.search(name):
                return value
        return 1.0

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        if not rules:
            return updates, state
        return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p) if factor(p) != 1.0 else u,
                                                updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    *,
    learning_rate: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    schedule: str = "linear",
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    end_learning_rate: float = 0.0,
    lr_multipliers: dict[str, float] | None = None,
) -> optax.GradientTransformation:
    """AdamW + warmup/decay schedule + decay mask, after global-norm clipping.

    ``clip_norm=None`` (or <= 0) disables clipping. The schedule is
    :func:`learning_rate_schedule` with the same arguments (use it to log the LR).
    ``lr_multipliers``: per-parameter learning-rate factors by path pattern (:func:`scale_by_path`).
    """
    lr = learning_rate_schedule(
        learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=total_steps,
        schedule=schedule, end_learning_rate=end_learning_rate)
    parts = []
    if clip_norm is not None and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(clip_norm)))
    parts.append(optax.adamw(
        learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
        mask=weight_decay_mask))
    if lr_multipliers:
        parts.append(scale_by_path(lr_multipliers))
    return optax.chain(*parts)
