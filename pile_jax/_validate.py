"""Eager input checks shared by :mod:`pile_jax.losses`, :mod:`pile_jax.metrics` and
:mod:`pile_jax.ensemble`.

Every check raises :class:`ValueError` whose message starts with the name of the offending
argument, e.g.::

    teacher_scores: expected shape [T, ..., n] with [..., n] == labels.shape (3, 10); got (10, 3)

Two kinds of checks run:

* **Shape and dtype checks** only look at static metadata (``.shape``, ``.dtype``), so they run
  everywhere: eagerly, and at trace time under ``jax.jit`` / ``jax.vmap`` / ``jax.pmap``
  (where they see the per-example shapes of the traced arrays).
* **Value checks** (NaN/Inf, value ranges) need concrete values. They run only when every array
  involved is concrete (not a :class:`jax.core.Tracer`), i.e. in eager calls. Inside ``jit``,
  ``vmap``, ``grad`` etc. they are skipped silently: a traced function cannot raise on data.
  Value checks only look at *valid* items (``where`` True); padded entries may hold anything
  (including NaN or -inf) and are ignored by every function of the library.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np

__all__ = [
    "is_concrete",
    "check_lists",
    "check_teacher_lists",
    "check_mask",
    "check_finite",
    "check_range",
    "check_positive",
    "check_nonnegative",
    "check_choice",
]


def is_concrete(*xs: Any) -> bool:
  """True when none of ``xs`` is a JAX tracer (``None`` entries are ignored)."""
  return not any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


def _shape(x: Any) -> tuple:
  return tuple(np.shape(x))


def _fmt(shape: Sequence[int]) -> str:
  return str(tuple(int(d) for d in shape))


def _dtype(x: Any):
  dt = getattr(x, "dtype", None)
  return np.dtype(dt) if dt is not None else np.asarray(x).dtype


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
  try:
    return tuple(np.broadcast_shapes(shape, target)) == tuple(target)
  except ValueError:
    return False


def check_mask(name: str, mask: Any, shape: Sequence[int]) -> None:
  """``mask`` must be boolean and broadcastable to ``shape`` (the list shape ``[..., n]``)."""
  if mask is None:
    return
  dt = _dtype(mask)
  if dt != np.bool_:
    raise ValueError(
        f"{name}: expected a boolean mask (True = valid item); got dtype {dt}. "
        f"Convert with `{name}.astype(bool)`."
    )
  if not _broadcasts_to(_shape(mask), tuple(shape)):
    raise ValueError(
        f"{name}: expected a shape broadcastable to {_fmt(shape)} ([..., n]); "
        f"got {_fmt(_shape(mask))}"
    )


def _valid_values(x: Any, where: Any) -> np.ndarray:
  a = np.asarray(x)
  if where is None:
    return a
  w = np.broadcast_to(np.asarray(where, dtype=bool), a.shape)
  return a[w]


def check_finite(name: str, x: Any, where: Any = None) -> None:
  """Raises when a valid entry of ``x`` is NaN or +-Inf (only for concrete arrays)."""
  if x is None or not is_concrete(x, where):
    return
  vals = _valid_values(x, where)
  if not np.issubdtype(vals.dtype, np.floating) and not np.issubdtype(vals.dtype, np.complexfloating):
    return
  bad = ~np.isfinite(vals)
  if bad.any():
    n_nan = int(np.isnan(vals).sum())
    n_inf = int(bad.sum()) - n_nan
    raise ValueError(
        f"{name}: found non-finite values at valid (unmasked) positions "
        f"({n_nan} NaN, {n_inf} Inf); mask them out with `where` or fix the input"
    )


def check_range(name: str, x: Any, lo: Optional[float] = None, hi: Optional[float] = None,
                where: Any = None) -> None:
  """Raises when a valid entry of ``x`` lies outside ``[lo, hi]`` (concrete arrays only)."""
  if x is None or not is_concrete(x, where):
    return
  vals = _valid_values(x, where)
  if vals.size == 0:
    return
  if lo is not None and (vals < lo).any():
    raise ValueError(f"{name}: expected values >= {lo}; got min {float(vals.min())}")
  if hi is not None and (vals > hi).any():
    raise ValueError(f"{name}: expected values <= {hi}; got max {float(vals.max())}")


def check_positive(name: str, value: Any) -> None:
  """A Python/NumPy scalar hyper-parameter must be > 0 (tracers are not checked)."""
  if value is None or not is_concrete(value):
    return
  v = np.asarray(value)
  if v.size and not (np.all(np.isfinite(v)) and np.all(v > 0)):
    raise ValueError(f"{name}: expected a finite value > 0; got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
  """A Python/NumPy scalar hyper-parameter must be >= 0 (tracers are not checked)."""
  if value is None or not is_concrete(value):
    return
  v = np.asarray(value)
  if v.size and not (np.all(np.isfinite(v)) and np.all(v >= 0)):
    raise ValueError(f"{name}: expected a finite value >= 0; got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"{name}: expected one of {list(choices)}; got {value!r}")


def check_lists(
    scores: Any,
    labels: Any = None,
    *,
    where: Any = None,
    weights: Any = None,
    names: Sequence[str] = ("scores", "labels"),
    finite_labels: bool = True,
) -> tuple:
  """Checks a ``(scores, labels)`` pair of lists ``[..., n]``.

  * ``scores`` has at least one axis; ``labels`` (if given) has exactly the same shape;
  * ``where`` is boolean and broadcastable to that shape; ``weights`` is broadcastable to it;
  * valid entries of ``scores`` / ``labels`` / ``weights`` are finite (concrete arrays only).

  Returns:
    The list shape ``[..., n]``.
  """
  s_name, l_name = names
  shape = _shape(scores)
  if len(shape) < 1:
    raise ValueError(f"{s_name}: expected shape [..., n] with at least one axis; got {_fmt(shape)}")
  if labels is not None and _shape(labels) != shape:
    raise ValueError(
        f"{l_name}: expected shape {_fmt(shape)} == {s_name}.shape ([..., n]); "
        f"got {_fmt(_shape(labels))}"
    )
  check_mask("where", where, shape)
  if weights is not None and not _broadcasts_to(_shape(weights), shape):
    raise ValueError(
        f"weights: expected a shape broadcastable to {_fmt(shape)} ([..., n]); "
        f"got {_fmt(_shape(weights))}"
    )
  check_finite(s_name, scores, where)
  if labels is not None and finite_labels:
    check_finite(l_name, labels, where)
  if weights is not None:
    check_finite("weights", weights, None if where is None or _shape(weights) != shape else where)
  return shape


def check_teacher_lists(
    teacher_scores: Any,
    labels: Any = None,
    *,
    where: Any = None,
    require_labels: bool = False,
    teacher_where: Any = None,
) -> tuple:
  """Checks multi-teacher logits ``[T, ..., n]`` against ``labels`` ``[..., n]``.

  The teacher axis comes first. ``where`` (boolean) must broadcast to ``[..., n]``,
  ``teacher_where`` (boolean, which teacher scores are present) to ``[T, ..., n]``; only valid,
  present scores must be finite (an absent score is never read).

  Returns:
    The list shape ``[..., n]`` (i.e. ``teacher_scores.shape[1:]``).
  """
  ts = _shape(teacher_scores)
  if labels is None and require_labels:
    raise ValueError("labels: this ensemble needs graded labels [..., n]; got None")
  if labels is not None:
    ls = _shape(labels)
    if len(ls) < 1:
      raise ValueError(f"labels: expected shape [..., n] with at least one axis; got {_fmt(ls)}")
    if len(ts) != len(ls) + 1 or ts[1:] != ls:
      hint = ""
      if len(ts) == len(ls) + 1:
        axes = [a for a in range(1, len(ts)) if ts[:a] + ts[a + 1:] == ls]
        if axes:
          hint = (f" (the teacher axis must come first; it looks like axis {axes[0]}: use "
                  f"jnp.moveaxis(teacher_scores, {axes[0]}, 0), e.g. [B, T, n] -> [T, B, n])")
      raise ValueError(
          f"teacher_scores: expected shape [T, ..., n] with [..., n] == labels.shape "
          f"{_fmt(ls)}; got {_fmt(ts)}{hint}"
      )
    list_shape = ls
  else:
    if len(ts) < 2:
      raise ValueError(
          f"teacher_scores: expected shape [T, ..., n] (teacher axis first, at least 2 axes); "
          f"got {_fmt(ts)}"
      )
    list_shape = ts[1:]
  if ts[0] < 1:
    raise ValueError(f"teacher_scores: expected at least one teacher (T >= 1); got shape {_fmt(ts)}")
  check_mask("where", where, list_shape)
  if teacher_where is not None:
    check_mask("teacher_where", teacher_where, ts)
  if teacher_where is not None and is_concrete(teacher_scores, where, teacher_where):
    w = np.ones(ts, bool) if where is None else np.broadcast_to(np.asarray(where, bool), list_shape)[None]
    check_finite("teacher_scores", teacher_scores, np.broadcast_to(w & np.asarray(teacher_where, bool), ts))
  elif where is not None and is_concrete(teacher_scores, where):
    w = np.broadcast_to(np.asarray(where), list_shape)
    w = np.broadcast_to(w[None], ts)
    check_finite("teacher_scores", teacher_scores, w)
  else:
    check_finite("teacher_scores", teacher_scores, None if where is None else where)
  if labels is not None:
    check_finite("labels", labels, where)
  return list_shape
