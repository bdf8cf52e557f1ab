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

Input checks (:mod:`pile_jax._validate`) run eagerly; under ``jit`` only shape checks run.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

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
    "LOSSES",
    "LOSS_TARGETS",
    "get_loss",
]


# ----------------------------------------------------------------------------------------------
# helpers


def _float(x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def _prepare(scores, other, where, weights=None, *, names=("scores", "labels"),
             check: bool = True):
  if check:
    _validate.check_lists(scores, other, where=where, weights=weights, names=names)
  scores = _float(scores)
  other = _float(other)
  dtype = jnp.result_type(scores.dtype, other.dtype)
  scores = scores.astype(dtype)
  other = other.astype(dtype)
  if where is None:
    where = jnp.ones(scores.shape, dtype=bool)
  else:
    where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)
  scores = jnp.where(where, scores, 0.0)
  other = jnp.where(where, other, 0.0)
  if weights is not None:
    weights = jnp.where(where, jnp.broadcast_to(_float(weights), scores.shape), 0.0)
  return scores, other, where, weights


def _reduce(values: Array, valid: Array, reduce_fn: ReduceFn) -> Array:
  """Masked reduction: zeros where invalid; the mean over zero valid entries is 0."""
  values = jnp.where(valid, values, 0.0)
  if reduce_fn is None:
    return values
  if reduce_fn is jnp.sum:
    return jnp.sum(values)
  if reduce_fn is jnp.mean:
    count = jnp.sum(valid).astype(values.dtype)
    return jnp.sum(values) / jnp.maximum(count, 1.0)
  out = reduce_fn(values, where=valid)
  return jnp.where(jnp.isnan(out), 0.0, out)


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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, targets, where=where, weights=weights, names=("scores", "targets"))
  return _pointwise_mse(scores, targets, where, weights, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where, weights=weights)
  _validate.check_range("labels", labels, 0.0, 1.0, where)
  return _pointwise_sigmoid_ce(scores, labels, where, weights, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
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
  """
  return _ndcg_lambdaweight(scores, labels, where)


@jax.jit
def _ndcg_lambdaweight(scores, labels, where):
  s = jax.lax.stop_gradient(_float(scores))
  y = _float(labels).astype(s.dtype)
  if where is None:
    where = jnp.ones(s.shape, dtype=bool)
  where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), s.shape)
  s = jnp.where(where, s, 0.0)
  y = jnp.where(where, y, 0.0)
  r = _metrics.ranks(s, where=where).astype(s.dtype)
  disc = jnp.where(where, 1.0 / jnp.log2(1.0 + r), 0.0)
  g = jnp.where(where, jnp.exp2(y) - 1.0, 0.0)
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


@functools.partial(jax.jit, static_argnames=("kind", "lambdaweight", "reduce_fn"))
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  return _margin_mse(scores, teacher_scores, where, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
def _margin_mse(scores, teacher_scores, where, *, reduce_fn):
  s, t, valid = _teacher_pair_setup(scores, teacher_scores, where)
  loss = jnp.square(_pairs(s, jnp.subtract) - _pairs(t, jnp.subtract))
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_positive("temperature", temperature)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  return _pairwise_distill_logistic(scores, teacher_scores, where, temperature,
                                    reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
def _pairwise_distill_logistic(scores, teacher_scores, where, temperature, *, reduce_fn):
  s, t, valid = _teacher_pair_setup(scores, teacher_scores, where)
  p = jax.nn.sigmoid(_pairs(t, jnp.subtract) / temperature)
  d = _pairs(s, jnp.subtract)
  loss = _softplus(d) - p * d
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where, weights=weights)
  _validate.check_range("labels", labels, 0.0, None, where)
  if weights is not None:
    _validate.check_range("weights", weights, 0.0, None)
  return _softmax_ce(scores, labels, where, weights, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
def _softmax_ce(scores, labels, where, weights, *, reduce_fn):
  s, y, m, w = _prepare(scores, labels, where, weights, check=False)
  if w is not None:
    y = y * w
  mass = jnp.sum(y, axis=-1)
  has_target = jnp.any(m, axis=-1) & (mass > 0)
  p = y / jnp.where(has_target, mass, 1.0)[..., None]
  loss = -jnp.sum(p * _masked_log_softmax(s, m), axis=-1)
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_positive("temperature", temperature)
  _validate.check_lists(scores, teacher_scores, where=where, names=("scores", "teacher_scores"))
  return _listwise_kl(scores, teacher_scores, where, temperature, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
def _listwise_kl(scores, teacher_scores, where, temperature, *, reduce_fn):
  s, t, m, _ = _prepare(scores, teacher_scores, where, check=False)
  t = jax.lax.stop_gradient(t)
  log_p = _masked_log_softmax(t / temperature, m)
  log_q = _masked_log_softmax(s / temperature, m)
  p = jnp.where(m, jnp.exp(log_p), 0.0)
  kl = jnp.sum(jnp.where(m, p * (log_p - log_q), 0.0), axis=-1)
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
  """
  _check_reduce_fn(reduce_fn)
  _validate.check_lists(scores, labels, where=where)
  return _listmle(scores, labels, where, reduce_fn=reduce_fn)


@functools.partial(jax.jit, static_argnames=("reduce_fn",))
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
# registry

LOSSES: dict[str, Callable[..., Array]] = {
    "pointwise_mse": pointwise_mse,
    "pointwise_sigmoid_ce": pointwise_sigmoid_ce,
    "pairwise_logistic": pairwise_logistic,
    "ranknet": pairwise_logistic,
    "lambdarank": functools.partial(pairwise_logistic, lambdaweight="ndcg"),
    "pairwise_hinge": pairwise_hinge,
    "margin_mse": margin_mse,
    "pairwise_distill_logistic": pairwise_distill_logistic,
    "softmax_ce": softmax_ce,
    "listwise_kl": listwise_kl,
    "listmle": listmle,
}

# What each loss expects as its second argument: "labels" (graded hard labels),
# "teacher" (teacher / ensemble logits), "target" (any target score), "probabilities"
# (values in [0, 1]: binary labels or sigmoid of teacher logits).
LOSS_TARGETS: dict[str, str] = {
    "pointwise_mse": "target",
    "pointwise_sigmoid_ce": "probabilities",
    "pairwise_logistic": "labels",
    "ranknet": "labels",
    "lambdarank": "labels",
    "pairwise_hinge": "labels",
    "margin_mse": "teacher",
    "pairwise_distill_logistic": "teacher",
    "softmax_ce": "labels",
    "listwise_kl": "teacher",
    "listmle": "labels",
}


def get_loss(name: str) -> Callable[..., Array]:
  """Loss function by registry name (raises ``ValueError`` naming the known ones)."""
  if name not in LOSSES:
    raise ValueError(f"name: unknown loss {name!r}; expected one of {sorted(LOSSES)}")
  return LOSSES[name]
