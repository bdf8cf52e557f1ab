"""Ranking and distillation losses, Rax-style pure functions.

Every loss is ``f(scores, labels_or_teacher, *, where=None, ..., reduce_fn=jnp.mean)``:

* ``scores`` (student) and the second argument are lists ``[..., n]``; leading axes are batch
  axes. ``where`` is an optional boolean mask ``[..., n]`` (True = real item). Padded items are
  neutralised before anything else: they contribute nothing and their values (even NaN/inf)
  never reach the result or the gradient.
* ``reduce_fn`` is ``jnp.mean`` (default), ``jnp.sum``, ``None`` or another callable accepting
  ``where=``. The **unit** that is averaged depends on the family, following Rax:

  ================  =======================================  ===============================
  family            ``reduce_fn=None`` returns                ``jnp.mean`` averages over
  ================  =======================================  ===============================
  pointwise         per-item ``[..., n]``                     valid items of the whole batch
  pairwise          per-pair ``[..., n, n]`` (entry ``[i,j]``)  valid pairs of the whole batch
  listwise          per-list ``[...]``                        lists with >= 1 valid item
  ================  =======================================  ===============================

  "Valid pair" means both items valid and, for label losses, ``y_i > y_j``; for the teacher
  (distillation) pair losses every ordered pair ``i != j`` of valid items. Invalid entries of
  the unreduced output are 0. A mean over zero units is 0 (never NaN), so an empty batch or a
  list without a valid pair contributes nothing. ``weights`` scale the per-unit losses but do
  not change the denominator of the mean (Rax convention).
* Distillation losses (``margin_mse``, ``pairwise_distill_logistic``, ``listwise_kl``) treat
  the teacher scores as constants (``jax.lax.stop_gradient``): gradients flow only into
  ``scores``.
* Pairwise terms are built by broadcasting ``[..., n, 1]`` against ``[..., 1, n]`` (no Python
  loop over items).

* **Precision.** Losses compute and return float32 for bf16/fp16/integer inputs (float64 for
  float64 inputs): sums and the counts in means are never rounded to bf16.
* **Huge finite inputs** never give NaN. Means are summed in units of a power of two, and
  ``margin_mse`` forms ``(s_i - t_i) - (s_j - t_j)`` in quarters, so a loss is finite whenever
  its value fits in float32 (inputs up to ±3.4e38). When the value itself exceeds float32
  (``pointwise_mse`` / ``margin_mse`` on differences beyond ~1.8e19), an eager call raises a
  ``ValueError`` naming the arguments; under ``jit`` the value is ``inf``.
* **Jit.** Call sites jit (e.g. the train step). Eagerly, a call with the built-in options
  (``reduce_fn`` in ``jnp.mean``/``jnp.sum``/``None``, ``lambdaweight`` ``None`` or a name) runs
  one cached compiled computation per shape; a user callable runs un-jitted, so a fresh lambda
  per call never retraces a cache -- jit your own function around it, as with Rax.

Input checks (:mod:`pile_jax._validate`) run eagerly; under ``jit`` only shape checks run.
The registry :data:`LOSS_REGISTRY` holds one :class:`LossSpec` per name (function, target kind,
bound defaults); ``LOSSES`` and ``LOSS_TARGETS`` are read-only views of it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax import _validate
from pile_jax import metrics as _metrics

Array = jax.Array
ReduceFn = Optional[Callable[..., Array]]

__all__ = [
    "pointwise_mse",
    "pointwise_sigmoid_ce",
    "pairwise_logistic",
    "pairwise_hinge",
    "margin_mse",
    "pairwise_distill_logistic",
    "softmax_ce",
    "listwise_kl",
    "listmle",
    "ndcg_lambdaweight",
    "LossSpec",
    "LOSS_REGISTRY",
    "LOSSES",
    "LOSS_TARGETS",
    "get_loss",
    "get_loss_spec",
]


# ----------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*xs) -> jnp.dtype:
  """float32, or float64 when an input is float64 (bf16/fp16/int inputs are computed in f32)."""
  dtype = jnp.result_type(*(x.dtype for x in xs), jnp.float32)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _prepare(scores, other, where, weights=None, *, names=("scores", "labels"),
             check: bool = True):
  if check:
    _validate.check_lists(scores, other, where=where, weights=weights, names=names)
  scores = jnp.asarray(scores)
  other = jnp.asarray(other)
  dtype = _compute_dtype(scores, other)
  scores = scores.astype(dtype)
  other = other.astype(dtype)
  if where is None:
    where = jnp.ones(scores.shape, dtype=bool)
  else:
    where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)
  scores = jnp.where(where, scores, 0.0)
  other = jnp.where(where, other, 0.0)
  if weights is not None:
    weights = jnp.where(where, jnp.broadcast_to(jnp.asarray(weights).astype(dtype), scores.shape),
                        0.0)
  return scores, other, where, weights


def _reduce(values: Array, valid: Array, reduce_fn: ReduceFn) -> Array:
  """Masked reduction: zeros where invalid; the mean over zero valid entries is 0."""
  values = jnp.where(valid, values, 0.0)
  if reduce_fn is None:
    return values
  if reduce_fn is jnp.sum:
    return jnp.sum(values)
  if reduce_fn is jnp.mean:
    count = jnp.sum(valid).astype(values.dtype)  # exact integer count, in float32 or wider
    # The sum is taken in units of a power of two c (1 unless the largest value exceeds 2^100):
    # it cannot overflow when the mean itself is representable, and c = 1 changes no bit.
    c = _pow2_scale(jax.lax.stop_gradient(jnp.max(jnp.abs(values), initial=0.0)), 100)
    return jnp.sum(values / c) / jnp.maximum(count, 1.0) * c
  out = reduce_fn(values, where=valid)
  return jnp.where(jnp.isnan(out), 0.0, out)


def _pow2_scale(max_abs: Array, max_exp: int) -> Array:
  """The power of two ``2^k`` (k >= 0) with ``max_abs / 2^k <= 2^max_exp``; 1 for inf/NaN."""
  _, e = jnp.frexp(jnp.where(jnp.isfinite(max_abs), max_abs, 0.0))
  return jnp.ldexp(jnp.ones((), max_abs.dtype), jnp.maximum(e - max_exp, 0))


def _max_abs_diff(a, b, where, pairwise: bool = False) -> float:
  """Largest |a - b| (or |(a_i - a_j) - (b_i - b_j)|) over valid entries, in float64."""
  e = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  m = np.ones(e.shape, bool) if where is None else np.broadcast_to(np.asarray(where, bool), e.shape)
  e = np.where(m, e, np.nan)
  if pairwise:
    e = e[..., :, None] - e[..., None, :]
  return float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 0.0


def _check_no_overflow(loss_name: str, value: Array, names: str, detail: str) -> Array:
  """Eager calls: a non-finite loss from validated finite inputs is a float32 overflow."""
  if _validate.is_concrete(value) and not bool(jnp.all(jnp.isfinite(value))):
    raise ValueError(
        f"{names}: {loss_name} overflows {jnp.asarray(value).dtype} ({detail}); the squared "
        f"differences exceed its largest value (~3.4e38 for float32): rescale both inputs")
  return value


def _pairs(x: Array, op) -> Array:
  """``[..., n, n]`` with entry ``[i, j] = op(x_i, x_j)``."""
  return op(x[..., :, None], x[..., None, :])


def _masked_logsumexp(x: Array, mask: Array, axis: int = -1) -> Array:
  """log sum_{mask} exp(x) along ``axis``; 0 (not -inf) where the mask is empty. NaN-safe."""
  any_valid = jnp.any(mask, axis=axis, keepdims=True)
  xm = jnp.where(mask, x, -jnp.inf)
  mx = jax.lax.stop_gradient(jnp.max(xm, axis=axis, keepdims=True))
  mx = jnp.where(any_valid, mx, 0.0)
  e = jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0) - mx), 0.0)
  tot = jnp.sum(e, axis=axis, keepdims=True)
  out = mx + jnp.log(jnp.where(any_valid, tot, 1.0))
  return jnp.squeeze(out, axis=axis)


def _masked_log_softmax(x: Array, mask: Array) -> Array:
  return jnp.where(mask, x - _masked_logsumexp(x, mask)[..., None], 0.0)


def _softplus(x: Array) -> Array:
  # log(1 + e^x), stable for large |x|.
  return jax.nn.relu(x) + jnp.log1p(jnp.exp(-jnp.abs(x)))



# The built-in options are jitted once per shape; a user callable (``reduce_fn``,
# ``lambdaweight``) runs un-jitted (jit it in your own code, as with Rax), so a fresh lambda per
# call never fills a cache with retraced copies.
_BUILTIN_CALLABLES = (jnp.mean, jnp.sum)


def _is_builtin(value) -> bool:
  return value is None or isinstance(value, str) or any(value is b for b in _BUILTIN_CALLABLES)


def _jit_builtin_statics(*static_argnames: str):
  """``jax.jit`` with ``static_argnames`` when every one of them is a built-in option (None, a
  string, ``jnp.mean``/``jnp.sum``); the plain function otherwise."""
  def wrap(impl):
    jitted = jax.jit(impl, static_argnames=static_argnames)

    @functools.wraps(impl)
    def call(*args, **kwargs):
      builtin = all(_is_builtin(kwargs.get(k)) for k in static_argnames)
      return (jitted if builtin else impl)(*args, **kwargs)
    return call
  return wrap


def _check_reduce_fn(reduce_fn):
  if reduce_fn is not None and not callable(reduce_fn):
    raise ValueError(f"reduce_fn: expected jnp.mean, jnp.sum, None or a callable; got {reduce_fn!r}")


# ----------------------------------------------------------------------------------------------
# pointwise


def pointwise_mse(scores: Array, targets: Array, *, where: Optional[Array] = None,
                  weights: Optional[Array] = None, reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Pointwise squared error to a target score (e.g. a teacher or an ensemble logit).

  .. math:: \ell_i = w_i\,(s_i - t_i)^2

  ``jnp.mean`` averages over the valid items of the batch (``rax.pointwise_mse_loss``).
  In KD it forces the student onto the teacher's absolute score scale (Hofstätter et al. 2020,
  "pointwise MSE" baseline; not shift-invariant, unlike :func:`margin_mse`).

  Returns:
    Scalar, or ``[..., n]`` per-item values when ``reduce_fn=None`` (0 at padded items).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> teacher = jnp.array([4.0, 1.0, 2.0, -1.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pointwise_mse(scores, teacher):.4f}")  # (4 + 0 + 2.25 + 1) / 4
    1.8125
    >>> print(f"{pj.pointwise_mse(scores, teacher, where=mask):.4f}")  # (4 + 0 + 2.25) / 3
    2.0833
    >>> S, T = jnp.stack([scores, teacher]), jnp.stack([teacher, teacher])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pointwise_mse)(S, T), float), 4))  # one loss per list
    [1.8125 0.    ]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, targets, where=where, weights=weights, names=("scores", "targets"))
  out = _pointwise_mse(scores, targets, where, weights, reduce_fn=reduce_fn)
  if _validate.is_concrete(out) and not bool(jnp.all(jnp.isfinite(out))):
    d = _max_abs_diff(scores, targets, where)
    _check_no_overflow("pointwise_mse", out, "scores, targets", f"max |scores - targets| = {d:.3g}")
  return out


@_jit_builtin_statics('reduce_fn')
def _pointwise_mse(scores, targets, where, weights, *, reduce_fn):
  s, t, m, w = _prepare(scores, targets, where, weights, check=False)
  loss = jnp.square(s - t)
  if w is not None:
    loss = loss * w
  return _reduce(loss, m, reduce_fn)


def pointwise_sigmoid_ce(scores: Array, labels: Array, *, where: Optional[Array] = None,
                         weights: Optional[Array] = None,
                         reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Sigmoid cross-entropy of each item's score against a probability target in ``[0, 1]``.

  .. math:: \ell_i = -w_i\,[\,y_i \log\sigma(s_i) + (1-y_i)\log(1-\sigma(s_i))\,]
            = w_i\,[\,\mathrm{softplus}(s_i) - y_i s_i\,]

  ``labels`` are binary relevance labels or teacher probabilities ``σ(t)`` (Qin et al. 2023,
  pointwise family). Eagerly, labels outside ``[0, 1]`` raise; under ``jit`` they are clipped
  (as ``rax.pointwise_sigmoid_loss`` does). Mean over valid items of the batch.

  Returns:
    Scalar, or ``[..., n]`` per-item values when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pointwise_sigmoid_ce(scores, labels / 3.0):.4f}")
    0.7352
    >>> print(f"{pj.pointwise_sigmoid_ce(scores, labels / 3.0, where=mask):.4f}")
    0.7492
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pointwise_sigmoid_ce)(S, Y / 3.0), float), 4))
    [0.7352 0.9435]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where, weights=weights)
  _validate.check_range("labels", labels, 0.0, 1.0, where)
  return _pointwise_sigmoid_ce(scores, labels, where, weights, reduce_fn=reduce_fn)


@_jit_builtin_statics('reduce_fn')
def _pointwise_sigmoid_ce(scores, labels, where, weights, *, reduce_fn):
  s, y, m, w = _prepare(scores, labels, where, weights, check=False)
  y = jnp.clip(y, 0.0, 1.0)
  loss = _softplus(s) - y * s
  if w is not None:
    loss = loss * w
  return _reduce(loss, m, reduce_fn)


# ----------------------------------------------------------------------------------------------
# pairwise, hard labels


def ndcg_lambdaweight(scores: Array, labels: Array, *, where: Optional[Array] = None) -> Array:
  r"""LambdaRank pair weights :math:`|\Delta\mathrm{NDCG}_{ij}|` (Burges et al. 2006).

  .. math::
     \lambda_{ij} = \frac{|g(y_i) - g(y_j)|\;|D(r_i) - D(r_j)|}{\mathrm{IDCG}},\quad
     g(y) = 2^y - 1,\ D(r) = 1/\log_2(1 + r)

  the absolute change of NDCG when items ``i`` and ``j`` swap positions in the ranking by
  ``scores`` (ranks ``r`` via :func:`pile_jax.metrics.ranks`: ties by index; no gradient flows
  through the weights). IDCG is over the valid items (no cut-off); lists with IDCG 0 get 0
  weights. (Rax's ``dcg_lambdaweight(normalize=True)`` is this times the padded list size.)

  Returns:
    ``[..., n, n]`` weights, 0 for pairs involving padded items.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores, labels = jnp.array([2.0, 1.0, 0.0]), jnp.array([0.0, 1.0, 0.0])
    >>> print(np.round(np.asarray(pj.losses.ndcg_lambdaweight(scores, labels), float), 4))  # |ΔNDCG| of swapping i and j
    [[0.     0.3691 0.    ]
     [0.3691 0.     0.1309]
     [0.     0.1309 0.    ]]
    >>> print(np.round(np.asarray(pj.losses.ndcg_lambdaweight(scores, labels, where=jnp.array([True, True, False])), float), 4))
    [[0.     0.3691 0.    ]
     [0.3691 0.     0.    ]
     [0.     0.     0.    ]]
  """
  return _ndcg_lambdaweight(scores, labels, where)


@jax.jit
def _ndcg_lambdaweight(scores, labels, where):
  s = jax.lax.stop_gradient(jnp.asarray(scores))
  y = jnp.asarray(labels)
  dtype = _compute_dtype(s, y)
  s, y = s.astype(dtype), y.astype(dtype)
  if where is None:
    where = jnp.ones(s.shape, dtype=bool)
  where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), s.shape)
  s = jnp.where(where, s, 0.0)
  y = jnp.where(where, y, 0.0)
  r = _metrics.ranks(s, where=where).astype(s.dtype)
  disc = jnp.where(where, 1.0 / jnp.log2(1.0 + r), 0.0)
  # Gains relative to the list's largest label (pile_jax.metrics.ndcg): the common factor
  # cancels in lambda_ij, and labels >= 128 do not overflow float32.
  g = _metrics._gain(y, "exp2", where, relative=True)  # pylint: disable=protected-access
  g_sorted, w_sorted = _metrics._sorted_by_score(g, g, where)  # pylint: disable=protected-access
  idcg = _metrics._dcg_sorted(g_sorted, w_sorted, None)  # pylint: disable=protected-access
  idcg = jnp.where(idcg > 0, idcg, 1.0)
  lw = jnp.abs(_pairs(g, jnp.subtract)) * jnp.abs(_pairs(disc, jnp.subtract))
  lw = lw / idcg[..., None, None]
  return jnp.where(_pairs(where, jnp.logical_and), lw, 0.0)


def _lambdaweights(lambdaweight, s, y, m):
  if lambdaweight is None:
    return None
  if lambdaweight == "ndcg":
    return ndcg_lambdaweight(s, y, where=m)
  if lambdaweight == "labeldiff":
    return jnp.abs(_pairs(y, jnp.subtract))
  if callable(lambdaweight):
    return jax.lax.stop_gradient(lambdaweight(s, y, where=m))
  raise ValueError(
      f"lambdaweight: expected None, 'ndcg', 'labeldiff' or a callable; got {lambdaweight!r}")


def _hard_pair_loss(kind, scores, labels, where, weights, lambdaweight, reduce_fn, margin=1.0):
  _check_reduce_fn(reduce_fn)
  if not (lambdaweight is None or callable(lambdaweight) or lambdaweight in ("ndcg", "labeldiff")):
    _lambdaweights(lambdaweight, None, None, None)  # raises
  _validate.check_lists(scores, labels, where=where, weights=weights)
  return _hard_pair_loss_impl(scores, labels, where, weights, margin, kind=kind,
                              lambdaweight=lambdaweight, reduce_fn=reduce_fn)


@_jit_builtin_statics('kind', 'lambdaweight', 'reduce_fn')
def _hard_pair_loss_impl(scores, labels, where, weights, margin, *, kind, lambdaweight,
                         reduce_fn):
  s, y, m, w = _prepare(scores, labels, where, weights, check=False)
  valid = _pairs(m, jnp.logical_and) & _pairs(y, jnp.greater)
  d = _pairs(s, jnp.subtract)
  loss = _softplus(-d) if kind == "logistic" else jax.nn.relu(margin - d)
  if w is not None:
    loss = loss * w[..., :, None]
  lw = _lambdaweights(lambdaweight, s, y, m)
  if lw is not None:
    loss = loss * lw
  return _reduce(loss, valid, reduce_fn)


def pairwise_logistic(scores: Array, labels: Array, *, where: Optional[Array] = None,
                      weights: Optional[Array] = None,
                      lambdaweight: Union[None, str, Callable[..., Array]] = None,
                      reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""RankNet pairwise logistic loss on hard labels (Burges et al. 2005).

  .. math:: \ell_{ij} = w_i\,\lambda_{ij}\,\log(1 + e^{-(s_i - s_j)})
            \quad\text{for valid pairs with } y_i > y_j

  ``lambdaweight="ndcg"`` multiplies each pair by :math:`|\Delta\mathrm{NDCG}_{ij}|`
  (:func:`ndcg_lambdaweight`; LambdaRank); ``"labeldiff"`` by :math:`|y_i - y_j|`; a callable
  ``f(scores, labels, where=) -> [..., n, n]`` is also accepted. ``weights[i]`` scales pairs
  whose *higher-labelled* item is ``i``. ``jnp.mean`` averages over the valid pairs of the whole
  batch, as ``rax.pairwise_logistic_loss`` does.

  Returns:
    Scalar, or ``[..., n, n]`` per-pair values (entry ``[i, j]``) when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pairwise_logistic(scores, labels):.4f}")  # mean over the 5 pairs with y_i > y_j
    0.4180
    >>> print(f"{pj.pairwise_logistic(scores, labels, where=mask):.4f}")
    0.4963
    >>> print(f"{pj.pairwise_logistic(scores, labels, where=mask, lambdaweight='ndcg'):.4f}")  # LambdaRank
    0.0673
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pairwise_logistic)(S, Y), float), 4))
    [0.418 1.318]
    >>> print(f"{pj.pairwise_logistic(S, Y):.4f}")  # leading axes are batch axes: mean over all pairs
    0.8680
    >>> print(f"{pj.pairwise_logistic(S, Y, reduce_fn=lambda v, where: jnp.max(v, where=where, initial=0.0)):.4f}")
    2.1269
  """
  return _hard_pair_loss("logistic", scores, labels, where, weights, lambdaweight, reduce_fn)


def pairwise_hinge(scores: Array, labels: Array, *, margin: float = 1.0,
                   where: Optional[Array] = None, weights: Optional[Array] = None,
                   lambdaweight: Union[None, str, Callable[..., Array]] = None,
                   reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Pairwise hinge loss on hard labels (Herbrich et al. 2000; RankSVM).

  .. math:: \ell_{ij} = w_i\,\lambda_{ij}\,\max(0,\ \mathrm{margin} - (s_i - s_j))
            \quad\text{for valid pairs with } y_i > y_j

  Same pair set, weights and reduction as :func:`pairwise_logistic` (``margin=1`` is
  ``rax.pairwise_hinge_loss``).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pairwise_hinge(scores, labels):.4f}")  # only pair (2, 1) 1.5 and (2, 3) 0.5 violate the margin: 2 / 5
    0.4000
    >>> print(f"{pj.pairwise_hinge(scores, labels, where=mask, margin=0.5):.4f}")
    0.3333
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pairwise_hinge)(S, Y), float), 4))
    [0.4 1.9]
  """
  return _hard_pair_loss("hinge", scores, labels, where, weights, lambdaweight, reduce_fn,
                         margin=margin)


# ----------------------------------------------------------------------------------------------
# pairwise, teacher scores


def _teacher_pair_setup(scores, teacher_scores, where):
  s, t, m, _ = _prepare(scores, teacher_scores, where, check=False)
  t = jax.lax.stop_gradient(t)
  n = s.shape[-1]
  off_diag = ~jnp.eye(n, dtype=bool)
  valid = _pairs(m, jnp.logical_and) & off_diag
  return s, t, valid


def margin_mse(scores: Array, teacher_scores: Array, *, where: Optional[Array] = None,
               reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Margin-MSE (Hofstätter et al. 2020, arXiv 2010.02666) over all pairs of a list.

  .. math:: \ell_{ij} = \big((s_i - s_j) - (t_i - t_j)\big)^2,\quad i \ne j \text{ valid}

  ``jnp.mean`` averages over the valid *ordered* pairs of the whole batch (each unordered pair
  appears twice with the same value, so this is also the mean over unordered pairs; ``jnp.sum``
  counts each unordered pair twice). On 2-item lists ``[p⁺, p⁻]`` it is exactly the paper's
  ``mean(((s⁺ − s⁻) − (t⁺ − t⁻))²)`` over the batch of triples. Invariant to adding a
  constant to the student's (or teacher's) scores; 0 when ``s = t + c``.

  Returns:
    Scalar, or ``[..., n, n]`` per-pair values when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> teacher = jnp.array([4.0, 1.0, 2.0, -1.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.margin_mse(scores, teacher):.4f}")  # e = s - t = [-2, 0, -1.5, 1]: mean of (e_i - e_j)^2
    3.7917
    >>> print(f"{pj.margin_mse(scores, teacher, where=mask):.4f}")
    2.1667
    >>> print(f"{pj.margin_mse(teacher + 7.0, teacher):.4f}")  # shift-invariant
    0.0000
    >>> S, T = jnp.stack([scores, teacher]), jnp.stack([teacher, teacher])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.margin_mse)(S, T), float), 4))
    [3.7917 0.    ]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  out = _margin_mse(scores, teacher_scores, where, reduce_fn=reduce_fn)
  if _validate.is_concrete(out) and not bool(jnp.all(jnp.isfinite(out))):
    d = _max_abs_diff(scores, teacher_scores, where, pairwise=True)
    _check_no_overflow("margin_mse", out, "scores, teacher_scores",
                       f"max |(s_i - s_j) - (t_i - t_j)| = {d:.3g}")
  return out


@_jit_builtin_statics('reduce_fn')
def _margin_mse(scores, teacher_scores, where, *, reduce_fn):
  s, t, valid = _teacher_pair_setup(scores, teacher_scores, where)
  # (s_i - s_j) - (t_i - t_j) = e_i - e_j with e = s - t, computed in quarters (exact powers of
  # two): no intermediate overflows, so the loss is finite whenever (e_i - e_j)^2 fits.
  e = s * 0.25 - t * 0.25
  loss = jnp.square(_pairs(e, jnp.subtract)) * 16.0
  return _reduce(loss, valid, reduce_fn)


def pairwise_distill_logistic(scores: Array, teacher_scores: Array, *, temperature: float = 1.0,
                              where: Optional[Array] = None,
                              reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Pairwise soft-label logistic loss: BCE of the student's pair preference against the
  teacher's (Qin et al. 2023 pairwise soft-label family; RankNet with soft targets).

  .. math::
     p_{ij} = \sigma\!\big((t_i - t_j)/\tau\big),\quad
     \ell_{ij} = -p_{ij}\log\sigma(s_i - s_j) - (1 - p_{ij})\log\sigma(s_j - s_i)

  over ordered pairs ``i != j`` of valid items (symmetric: :math:`\ell_{ij} = \ell_{ji}`);
  ``jnp.mean`` averages over them for the whole batch. Its minimum over ``s`` is the binary
  entropy of :math:`p`, reached at :math:`s_i - s_j = (t_i - t_j)/\tau`.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> teacher = jnp.array([4.0, 1.0, 2.0, -1.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pairwise_distill_logistic(scores, teacher):.4f}")
    0.4418
    >>> print(f"{pj.pairwise_distill_logistic(scores, teacher, where=mask, temperature=2.0):.4f}")
    0.6286
    >>> S, T = jnp.stack([scores, teacher]), jnp.stack([teacher, teacher])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pairwise_distill_logistic)(S, T), float), 4))
    [0.4418 0.2891]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_positive("temperature", temperature)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  return _pairwise_distill_logistic(scores, teacher_scores, where, temperature,
                                    reduce_fn=reduce_fn)


@_jit_builtin_statics('reduce_fn')
def _pairwise_distill_logistic(scores, teacher_scores, where, temperature, *, reduce_fn):
  s, t, valid = _teacher_pair_setup(scores, teacher_scores, where)
  p = jax.nn.sigmoid(_pairs(t, jnp.subtract) / temperature)
  d = _pairs(s, jnp.subtract)
  # softplus(d) - p d, written as p softplus(-d) + (1 - p) softplus(d) with 0 * inf := 0:
  # no inf - inf when huge teacher gaps saturate p to 0 or 1.
  loss = (jnp.where(p > 0, p * _softplus(-d), 0.0)
          + jnp.where(p < 1, (1.0 - p) * _softplus(d), 0.0))
  return _reduce(loss, valid, reduce_fn)


# ----------------------------------------------------------------------------------------------
# listwise


def softmax_ce(scores: Array, labels: Array, *, where: Optional[Array] = None,
               weights: Optional[Array] = None, reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Listwise softmax cross-entropy (ListNet top-1; Cao et al. 2007).

  .. math::
     p_i = \frac{w_i y_i}{\sum_{j \text{ valid}} w_j y_j},\quad
     \ell = -\sum_{i \text{ valid}} p_i \log \frac{e^{s_i}}{\sum_{j \text{ valid}} e^{s_j}}

  Labels (times ``weights``) are normalised to a distribution over the valid items, i.e.
  ``rax.softmax_loss(..., label_fn=rax.utils.normalize_probabilities)``. Labels must be
  non-negative. **Difference from Rax:** a list whose label mass is 0 (no relevant item) has
  no target distribution; it gets loss 0 and is *not* counted by ``jnp.mean`` (Rax would use a
  uniform target there). ``jnp.mean`` averages over the lists with >= 1 valid item and positive
  label mass.

  Returns:
    Scalar, or ``[...]`` per-list values when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.softmax_ce(scores, labels):.4f}")
    0.9210
    >>> print(f"{pj.softmax_ce(scores, labels, where=mask):.4f}")
    0.8394
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.softmax_ce)(S, Y), float), 4))
    [0.921  2.3716]
    >>> print(np.round(np.asarray(pj.softmax_ce(S, Y, reduce_fn=None), float), 4))  # per-list values
    [0.921  2.3716]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where, weights=weights)
  _validate.check_range("labels", labels, 0.0, None, where)
  if weights is not None:
    _validate.check_range("weights", weights, 0.0, None)
  return _softmax_ce(scores, labels, where, weights, reduce_fn=reduce_fn)


@_jit_builtin_statics('reduce_fn')
def _softmax_ce(scores, labels, where, weights, *, reduce_fn):
  s, y, m, w = _prepare(scores, labels, where, weights, check=False)
  if w is not None:
    y = y * w
  mass = jnp.sum(y, axis=-1)
  has_target = jnp.any(m, axis=-1) & (mass > 0)
  p = y / jnp.where(has_target, mass, 1.0)[..., None]
  loss = -jnp.sum(jnp.where(p > 0, p * _masked_log_softmax(s, m), 0.0), axis=-1)  # 0 log 0 = 0
  return _reduce(loss, has_target, reduce_fn)


def listwise_kl(scores: Array, teacher_scores: Array, *, temperature: float = 1.0,
                where: Optional[Array] = None, reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""Temperature-scaled listwise KL distillation (Hinton et al. 2015; Qin et al. 2023 B4).

  .. math::
     \ell = \tau^2\,\mathrm{KL}\big(\mathrm{softmax}(t/\tau)\,\|\,\mathrm{softmax}(s/\tau)\big)
          = \tau^2 \sum_{i \text{ valid}} p_i\,(\log p_i - \log q_i)

  with both softmaxes over the valid items. ``jnp.mean`` averages over lists with >= 1 valid
  item (a single valid item gives 0).

  Returns:
    Scalar, or ``[...]`` per-list values when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> teacher = jnp.array([4.0, 1.0, 2.0, -1.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.listwise_kl(scores, teacher):.4f}")
    0.2132
    >>> print(f"{pj.listwise_kl(scores, teacher, where=mask, temperature=2.0):.4f}")
    0.2777
    >>> print(f"{pj.listwise_kl(teacher, teacher):.4f}")  # 0 when the student equals the teacher
    0.0000
    >>> S, T = jnp.stack([scores, teacher]), jnp.stack([teacher, teacher])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.listwise_kl)(S, T), float), 4))
    [0.2132 0.    ]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_positive("temperature", temperature)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  return _listwise_kl(scores, teacher_scores, where, temperature, reduce_fn=reduce_fn)


@_jit_builtin_statics('reduce_fn')
def _listwise_kl(scores, teacher_scores, where, temperature, *, reduce_fn):
  s, t, m, _ = _prepare(scores, teacher_scores, where, check=False)
  t = jax.lax.stop_gradient(t)
  log_p = _masked_log_softmax(t / temperature, m)
  log_q = _masked_log_softmax(s / temperature, m)
  p = jnp.where(m, jnp.exp(log_p), 0.0)
  kl = jnp.sum(jnp.where(m & (p > 0), p * (log_p - log_q), 0.0), axis=-1)  # 0 log 0 = 0
  return _reduce((temperature ** 2) * kl, jnp.any(m, axis=-1), reduce_fn)


def listmle(scores: Array, labels: Array, *, where: Optional[Array] = None,
            reduce_fn: ReduceFn = jnp.mean) -> Array:
  r"""ListMLE: negative Plackett–Luce log-likelihood of the label order (Xia et al. 2008).

  .. math::
     \ell = -\sum_{k=1}^{n_v} \Big( s_{\pi(k)} - \log \sum_{m \ge k} e^{s_{\pi(m)}} \Big)

  where :math:`\pi` orders the valid items by label, descending. **Ties** are broken
  deterministically by the original index, ascending (the earlier item is placed first), which
  is what ``rax.listmle_loss`` does without a ``key``. Implemented without a sort: item ``i``'s
  normaliser runs over the valid ``j`` with ``y_j < y_i`` or (``y_j == y_i`` and ``j >= i``).
  ``jnp.mean`` averages over lists with >= 1 valid item.

  Returns:
    Scalar, or ``[...]`` per-list values when ``reduce_fn=None``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.listmle(scores, labels):.4f}")
    2.0395
    >>> print(f"{pj.listmle(scores, labels, where=mask):.4f}")
    1.4384
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.listmle)(S, Y), float), 4))
    [2.0395 5.2401]
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where)
  return _listmle(scores, labels, where, reduce_fn=reduce_fn)


@_jit_builtin_statics('reduce_fn')
def _listmle(scores, labels, where, *, reduce_fn):
  s, y, m, _ = _prepare(scores, labels, where, check=False)
  n = s.shape[-1]
  idx = jnp.arange(n)
  later_or_self = (idx[None, :] >= idx[:, None])  # [i, j]: j >= i
  after = _pairs(y, jnp.greater) | (_pairs(y, jnp.equal) & later_or_self)  # y_i > y_j or tie
  after = after & m[..., None, :] & m[..., :, None]
  s_j = jnp.broadcast_to(s[..., None, :], after.shape)
  lse = _masked_logsumexp(s_j, after, axis=-1)
  loss = jnp.sum(jnp.where(m, lse - s, 0.0), axis=-1)
  return _reduce(loss, jnp.any(m, axis=-1), reduce_fn)


# ----------------------------------------------------------------------------------------------
# registry: one record per loss


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """One registered loss: its function, what its second argument is, and bound defaults.

  ``target`` is ``"labels"`` (graded hard labels), ``"teacher"`` (teacher / ensemble logits),
  ``"target"`` (any target score) or ``"probabilities"`` (values in ``[0, 1]``: binary labels
  or the sigmoid of teacher logits). ``defaults`` are keyword arguments bound by the name
  (``"lambdarank"`` is ``pairwise_logistic`` with ``lambdaweight="ndcg"``); call options win.

  >>> spec = LOSS_REGISTRY["lambdarank"]
  >>> spec.fn.__name__, spec.target, dict(spec.defaults)
  ('pairwise_logistic', 'labels', {'lambdaweight': 'ndcg'})
  >>> round(float(spec(jnp.array([2.0, 1.0, 0.0]), jnp.array([0.0, 1.0, 2.0]))), 4)
  0.369
  """

  fn: Callable[..., Array]
  target: str
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.target not in LOSS_TARGET_KINDS:
      raise ValueError(f"target: expected one of {LOSS_TARGET_KINDS}; got {self.target!r}")
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))

  def __call__(self, scores: Array, other: Array, **options) -> Array:
    return self.fn(scores, other, **{**self.defaults, **options})


LOSS_TARGET_KINDS = ("labels", "teacher", "target", "probabilities")

#: The loss registry: name -> :class:`LossSpec` (the one place a loss is registered).
LOSS_REGISTRY: Mapping[str, LossSpec] = types.MappingProxyType({
    "pointwise_mse": LossSpec(pointwise_mse, "target"),
    "pointwise_sigmoid_ce": LossSpec(pointwise_sigmoid_ce, "probabilities"),
    "pairwise_logistic": LossSpec(pairwise_logistic, "labels"),
    "ranknet": LossSpec(pairwise_logistic, "labels"),
    "lambdarank": LossSpec(pairwise_logistic, "labels", {"lambdaweight": "ndcg"}),
    "pairwise_hinge": LossSpec(pairwise_hinge, "labels"),
    "margin_mse": LossSpec(margin_mse, "teacher"),
    "pairwise_distill_logistic": LossSpec(pairwise_distill_logistic, "teacher"),
    "softmax_ce": LossSpec(softmax_ce, "labels"),
    "listwise_kl": LossSpec(listwise_kl, "teacher"),
    "listmle": LossSpec(listmle, "labels"),
})

# Read-only views of LOSS_REGISTRY, kept for backwards compatibility.
#: name -> callable with the spec's defaults bound.
LOSSES: Mapping[str, Callable[..., Array]] = types.MappingProxyType({
    name: (functools.partial(spec.fn, **spec.defaults) if spec.defaults else spec.fn)
    for name, spec in LOSS_REGISTRY.items()})
#: name -> target kind of the second argument.
LOSS_TARGETS: Mapping[str, str] = types.MappingProxyType(
    {name: spec.target for name, spec in LOSS_REGISTRY.items()})


def get_loss_spec(name: str) -> LossSpec:
  """The :class:`LossSpec` registered as ``name`` (``ValueError`` naming the known ones)."""
  if name not in LOSS_REGISTRY:
    raise ValueError(f"name: unknown loss {name!r}; expected one of {sorted(LOSS_REGISTRY)}")
  return LOSS_REGISTRY[name]


def get_loss(name: str) -> Callable[..., Array]:
  """Loss function by registry name, defaults bound (``ValueError`` naming the known ones)."""
  get_loss_spec(name)
  return LOSSES[name]
