"""Multi-teacher ensembles of ranking logits: PILE (four variants) and baselines.

Inputs: ``teacher_scores`` ``[T, ..., n]`` (teacher axis **first**), ``labels`` ``[..., n]``
(graded, higher = more relevant) and an optional boolean ``where`` ``[..., n]``. Every
ensemble returns one target score per item, ``[..., n]``; **padded items get 0** and never
influence valid ones (padded teacher scores may hold anything, NaN included).

PILE -- Pairwise Iterative Logits Ensemble (L. Cai et al., "PILE: Pairwise Iterative Logits
Ensemble for Multi-Teacher Labeled Distillation", EMNLP 2022 Industry Track, arXiv 2211.06059).
The paper's method section is not available; the four variants below are **pile_jax's
reconstructions** of PILE from its title and abstract (teacher logits, supervised by labels,
pairwise, iterative), following the PILE specification (``docs/pile.md``). Notation
for one list: ``s[k, i]`` teacher ``k``'s logit of item ``i``, ``y`` labels, ``m`` mask,
labelled pairs ``P = {(i, j): m_i & m_j & y_i > y_j}``, ``A_k(i, j) = 1[s[k,i] > s[k,j]]``
(strict), start ``z⁰ = mean_k s[k]``:

* ``"consensus"`` (default): per labelled pair with ``n_ij = Σ_k A_k(i,j) > 0`` the agreeing
  teachers' mean logits ``u_ij`` (upper item) and ``l_ij`` (lower item); each Jacobi sweep moves
  every item of a violated fixable pair (``z_i − z_j <= eps``) towards those values:
  ``z_i += η · r_i / max(c_i, 1)``.
* ``"responsibility"``: per item and teacher the pairwise label loss of the teacher's logit
  against the current ensemble of the item's labelled partners; softmax responsibilities over
  teachers (temperature τ); damped update towards the responsibility-weighted logit.
* ``"regularised"``: K gradient steps on the convex objective
  ``(1/M) Σ_k Σ_i m_i (z_i − s[k,i])² + λ Σ_P τ·softplus(−(z_i − z_j − γ)/τ)`` from the mean.
* ``"sequential"`` (hypothesis: "pairwise" = two teachers at a time): teachers ordered by their
  PNR on the list, from the best; each next one merged as ``(1 − w)·z + w·s[k]`` with the
  ``w ∈ [0, 1]`` that maximises the list's label pair accuracy (smallest maximiser), or with the
  maximiser of a pairwise-logistic likelihood (``merge="logistic"``).

Numerics: ensembles compute and return float32 for bf16/fp16 input. Each list whose largest
valid |logit| exceeds 2^40 is ensembled in units of a power of two ``c`` (exact; the variants'
scale parameters are rescaled so the result is the same function of the logits), so huge but
finite logits (up to ±3.4e38) never overflow to inf/NaN and the consensus variant stays within
the teachers' range. Ordinary logits (c = 1) are untouched.

All variants run a ``jax.lax.fori_loop`` (over iterations; over teachers for
``"sequential"``); pairwise terms are built with
``jax.vmap`` over ``i`` and ``j``; lists are processed with ``jax.vmap`` over the (flattened)
leading axes. They give the same result eagerly, under ``jit``, ``vmap`` and ``pmap``.

Absent teacher scores: every ensemble takes an optional boolean ``teacher_where`` ``[T, ..., n]``
(broadcast to the teacher scores): False means teacher ``k`` did not score item ``i`` -- the
score is **absent**, never 0, and its value is never read. Each ensemble then uses, per item, only
the teachers present there (formulas in each function's docstring; ``docs/pile.md``); an item no
teacher scores is treated like padding (output 0, in no labelled pair) and gets no distillation
target. ``teacher_where=None`` (all present) gives bit-for-bit the results without it.

Input checks run eagerly (:mod:`pile_jax._validate`); under ``jit`` only shape checks run.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax import _validate
from pile_jax import metrics as _metrics

Array = jax.Array

__all__ = [
    "pile",
    "pile_diagnostics",
    "mean",
    "weighted_mean",
    "max_ensemble",
    "zscore_mean",
    "rank_average",
    "best_teacher_per_list",
    "ENSEMBLES",
    "ensemble",
    "teacher_report",
    "format_teacher_report",
]

PILE_VARIANTS = ("consensus", "responsibility", "regularised", "sequential")
RESPONSIBILITY_LOSSES = ("logistic", "hinge", "zero_one")
#: How the sequential variant chooses each merge weight (see :func:`pile`).
SEQUENTIAL_MERGES = ("pair_accuracy", "logistic")
#: Bisection steps of the logistic merge weight (final interval 2^-40, finer than float32 resolves w).
_BISECTION_STEPS = 40


# ----------------------------------------------------------------------------------------------
# helpers


def _prepare(teacher_scores, labels, where, *, require_labels: bool, check: bool = True, teacher_where=None):
  """``(s, y, m, p)``: logits (0 where not present), labels, the valid items ``m`` (``where`` and,
  with ``teacher_where``, scored by at least one teacher) and the presence ``p`` ``[T, ..., n]``
  (``teacher_where & m``)."""
  if check:
    _validate.check_teacher_lists(teacher_scores, labels, where=where,
                                  require_labels=require_labels)
    _check_teacher_where(teacher_where, teacher_scores)
  s = jnp.asarray(teacher_scores)
  # float32 (float64 if given): bf16/fp16/int teacher logits are ensembled in float32.
  dtype = jnp.result_type(s.dtype, jnp.float32)
  s = s.astype(dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32)
  list_shape = s.shape[1:]
  if where is None:
    m = jnp.ones(list_shape, dtype=bool)
  else:
    m = jnp.broadcast_to(jnp.asarray(where, dtype=bool), list_shape)
  if teacher_where is None:
    p = jnp.broadcast_to(m[None], s.shape)
  else:
    p = jnp.broadcast_to(jnp.asarray(teacher_where, dtype=bool), s.shape) & m[None]
    m = m & jnp.any(p, axis=0)  # an item no teacher scores is out, like padding
  s = jnp.where(p, s, 0.0)
  y = None
  if labels is not None:
    y = jnp.asarray(labels).astype(s.dtype)
    y = jnp.where(m, y, 0.0)
  return s, y, m, p


def _check_teacher_where(teacher_where, teacher_scores) -> None:
  """``teacher_where`` (None or boolean) must broadcast to the teacher scores' ``[T, ..., n]``."""
  if teacher_where is None:
    return
  shape, full = np.shape(teacher_where), np.shape(teacher_scores)
  try:
    if np.broadcast_shapes(shape, full) != tuple(full):
      raise ValueError
  except ValueError:
    raise ValueError(f"teacher_where: shape {shape} does not broadcast to the teacher scores' {full}") from None
  if _validate.is_concrete(teacher_where) and np.asarray(teacher_where).dtype != bool:
    raise ValueError(f"teacher_where: expected a boolean mask; got dtype {np.asarray(teacher_where).dtype}")


#: Lists whose largest valid |logit| exceeds 2^_SCALE_EXP are ensembled in units of a power of two.
_SCALE_EXP = 40


def _list_scale(s: Array, m: Array) -> Array:
  """Per list, the power of two ``c >= 1`` with ``max_valid |s| / c <= 2^40``: ``[..., 1]``.

  ``c = 1`` (no change to any bit) unless a list holds logits beyond ~1.1e12. Dividing by ``c``
  is exact, so huge but finite logits (up to ±3.4e38) cannot overflow sums, means or squares.
  """
  a = jax.lax.stop_gradient(jnp.max(jnp.where(m[None], jnp.abs(s), 0.0), axis=(0, -1)))
  _, e = jnp.frexp(jnp.where(jnp.isfinite(a), a, 0.0))
  return jnp.ldexp(jnp.ones((), s.dtype), jnp.maximum(e - _SCALE_EXP, 0))[..., None]


def _teacher_mean(s: Array, m: Array, p: Array) -> Array:
  """``Σ_k p_ki s[k, i] / max(Σ_k p_ki, 1)`` (the mean over the teachers present) ``[..., n]``,
  without overflow for huge finite logits."""
  c = _list_scale(s, m)
  return _present_mean(s / c[None], p) * c


def _present_mean(s: Array, p: Array) -> Array:
  """Mean over axis 0 of the present entries (``s`` is 0 where absent); where every teacher is
  present it is ``jnp.mean`` itself (bit for bit the result without a presence mask)."""
  cnt = jnp.sum(p, axis=0)
  partial = jnp.sum(s, axis=0) / jnp.maximum(cnt, 1).astype(s.dtype)
  return jnp.where(cnt == s.shape[0], jnp.mean(s, axis=0), partial)


def _per_list(core: Callable, s: Array, y: Array, m: Array, lm: Array, p: Array) -> Array:
  """Applies ``core(s [T, n], y [n], m [n], lm [n], c, p [T, n]) -> [n]`` to every list of
  ``[T, ..., n]`` inputs (``lm``: the items that take part in labelled pairs; ``p``: teacher
  presence). The core sees the logits in
  units of ``c`` (:func:`_list_scale`; ``c = 1`` for ordinary logits) and its output is
  multiplied back by ``c``."""
  t = s.shape[0]
  list_shape = s.shape[1:]
  n = list_shape[-1]
  b = math.prod(list_shape[:-1])
  s_b = jnp.moveaxis(s, 0, -2).reshape((b, t, n))
  c = _list_scale(s, m).reshape((b, 1))
  p_b = jnp.moveaxis(p, 0, -2).reshape((b, t, n))
  out = jax.vmap(core)(s_b / c[:, :, None], y.reshape((b, n)), m.reshape((b, n)),
                       lm.reshape((b, n)), c[:, 0], p_b)
  return (out * c).reshape(list_shape)


def _label_mask(m: Array, label_where) -> Array:
  """Items in labelled pairs: valid (``m``) and, when given, in ``label_where``."""
  if label_where is None:
    return m
  return m & jnp.broadcast_to(jnp.asarray(label_where, dtype=bool), m.shape)


def _pairwise(f: Callable, a: Any, b: Any) -> Any:
  """``out[i, j] = f(a_i, b_j)`` for pytrees ``a``, ``b`` whose leaves have a leading item axis,
  vectorised with ``jax.vmap`` (outer over ``i``, inner over ``j``)."""
  return jax.vmap(lambda ai: jax.vmap(lambda bj: f(ai, bj))(b))(a)


def _labelled_pairs(y: Array, m: Array) -> Array:
  """``P[i, j] = m_i & m_j & (y_i > y_j)`` as ``[n, n]`` bool."""
  return _pairwise(lambda a, b: a[1] & b[1] & (a[0] > b[0]), (y, m), (y, m))


def _pair_stats(s: Array, P: Array, p: Array):
  """Per labelled pair: agreeing-teacher count ``n_ij`` and means ``u_ij``, ``l_ij``.

  ``s``, ``p`` are ``[M, n]``; a teacher agrees on ``(i, j)`` only if it scores both items.
  Returns ``[n, n]`` arrays (0 where ``n_ij = 0`` or not labelled).
  """
  cols = s.T  # [n, M]: all teachers' logits of one item

  def stats(a, b):
    (si, pi), (sj, pj) = a, b
    agree = (si > sj) & pi & pj  # [M]
    cnt = jnp.sum(agree)
    den = jnp.maximum(cnt, 1).astype(s.dtype)
    u = jnp.sum(jnp.where(agree, si, 0.0)) / den
    l = jnp.sum(jnp.where(agree, sj, 0.0)) / den
    return cnt, u, l

  cnt, u, l = _pairwise(stats, (cols, p.T), (cols, p.T))
  cnt = jnp.where(P, cnt, 0)
  return cnt, jnp.where(P, u, 0.0), jnp.where(P, l, 0.0)


def _violated(z: Array, fixable: Array, eps) -> Array:
  return fixable & _pairwise(lambda zi, zj: zi - zj <= eps, z, z)


# ----------------------------------------------------------------------------------------------
# PILE variants (one list)


def _consensus_core(s, y, m, lm, c, p, *, num_iters, damping, eps):
  eps = eps / c  # logits are in units of c (equivariant: exact)
  P = _labelled_pairs(y, lm)
  cnt, u, l = _pair_stats(s, P, p)
  fixable = P & (cnt > 0)
  z0 = _present_mean(s, p)

  def sweep(_, z):
    V = _violated(z, fixable, eps)
    # Pairs where i is the upper item (row i) pull z_i to u_ij; pairs where i is the lower item
    # (column i) pull z_i to l_ji.
    r = jnp.sum(jnp.where(V, u - z[:, None], 0.0), axis=1) + jnp.sum(
        jnp.where(V, l - z[None, :], 0.0), axis=0)
    c = jnp.sum(V, axis=1) + jnp.sum(V, axis=0)
    return z + damping * r / jnp.maximum(c, 1).astype(z.dtype)

  z = jax.lax.fori_loop(0, num_iters, sweep, z0)
  return jnp.where(m, z, 0.0)


def _pair_loss_fn(loss: str) -> Callable[[Array], Array]:
  if loss == "logistic":
    return lambda d: jax.nn.relu(-d) + jnp.log1p(jnp.exp(-jnp.abs(d)))
  if loss == "hinge":
    return lambda d: jax.nn.relu(1.0 - d)
  if loss == "zero_one":
    return lambda d: (d <= 0).astype(d.dtype)
  raise ValueError(f"loss: expected one of {list(RESPONSIBILITY_LOSSES)}; got {loss!r}")


def _responsibility_core(s, y, m, lm, c, p, *, num_iters, damping, temperature, loss):
  # logits are in units of c: the losses see the real differences c * d (which may overflow to
  # +-inf; every loss maps that to 0 or +inf, and an infinite L_ki only zeroes rho_ki)
  ell_unit = _pair_loss_fn(loss)
  ell = lambda d: ell_unit(c * d)
  P = _labelled_pairs(y, lm)
  has_partner = jnp.any(P, axis=1) | jnp.any(P, axis=0)
  z0 = _present_mean(s, p)
  cols = s.T  # [n, M]
  present = p.T  # [n, M]
  scored = jnp.any(present, axis=1, keepdims=True)

  def step(_, z):
    # term[i, j] (a [M] vector): loss of every teacher's logit of i against z_j, for pairs
    # where i is the upper item (P[i, j]) and where i is the lower item (P[j, i]).
    upper = _pairwise(lambda si, zj: ell(si - zj), cols, z)  # [n, n, M]
    lower = _pairwise(lambda si, zj: ell(zj - si), cols, z)
    Lki = (jnp.sum(jnp.where(P[:, :, None], upper, 0.0), axis=1)
           + jnp.sum(jnp.where(P.T[:, :, None], lower, 0.0), axis=1))  # [n, M]
    logits = -Lki / temperature
    logits = jnp.where(logits == -jnp.inf, jnp.finfo(logits.dtype).min, logits)  # all -inf: uniform
    logits = jnp.where(present, logits, -jnp.inf)  # an absent teacher takes no responsibility
    logits = jnp.where(scored, logits, 0.0)        # (items no teacher scores are not valid)
    rho = jax.nn.softmax(logits, axis=-1)
    target = jnp.sum(rho * cols, axis=-1)
    return jnp.where(has_partner, (1.0 - damping) * z + damping * target, z)

  z = jax.lax.fori_loop(0, num_iters, step, z0)
  return jnp.where(m, z, 0.0)


def _regularised_core(s, y, m, lm, c, p, *, num_iters, temperature, lam, gamma):
  # logits in units of c: the objective divided by c^2 is the same objective with
  # gamma/c, tau/c, lam/c (exact: the step size depends on lam/tau only)
  temperature, lam, gamma = temperature / c, lam / c, gamma / c
  P = _labelled_pairs(y, lm)
  z0 = _present_mean(s, p)
  n_valid = jnp.maximum(jnp.sum(m), 1).astype(s.dtype)
  step_size = 1.0 / (2.0 + lam * (n_valid - 1.0) / (2.0 * temperature))
  mf = m.astype(s.dtype)

  def step(_, z):
    # d/dz_i of tau*softplus(-(z_i - z_j - gamma)/tau) = -sigmoid(-(z_i - z_j - gamma)/tau)
    g = _pairwise(lambda zi, zj: jax.nn.sigmoid(-(zi - zj - gamma) / temperature), z, z)
    g = jnp.where(P, g, 0.0)
    grad = 2.0 * mf * (z - z0) + lam * (jnp.sum(g, axis=0) - jnp.sum(g, axis=1))
    return z - step_size * grad

  z = jax.lax.fori_loop(0, num_iters, step, z0)
  return jnp.where(m, z, 0.0)


def _differences(x: Array) -> Array:
  """``d[i, j] = x_i - x_j`` ``[n, n]`` (vmapped)."""
  return _pairwise(lambda a, b: a - b, x, x)


def _pair_points(d: Array) -> Array:
  """Per pair, twice its pair-accuracy credit: 2 ordered (``d > 0``), 1 tied, 0 reversed (int32)."""
  return jnp.where(d > 0, 2, jnp.where(d == 0, 1, 0)).astype(jnp.int32)


def _list_pnr(x: Array, P: Array) -> Array:
  """PNR of ``x`` ``[n]`` on the labelled pairs ``P`` (:func:`pile_jax.metrics.pnr`'s convention:
  ``(C + T/2) / max(D + T/2, 1)``, 0 without pairs)."""
  d = _differences(x)
  conc = jnp.sum(P & (d > 0)).astype(x.dtype)
  disc = jnp.sum(P & (d < 0)).astype(x.dtype)
  tied = jnp.sum(P & (d == 0)).astype(x.dtype)
  return (conc + 0.5 * tied) / jnp.maximum(disc + 0.5 * tied, 1.0)


def _accuracy_merge_weight(dz: Array, ds: Array, p: Array) -> Array:
  """The smallest maximiser of the labelled pair accuracy of ``(1 - w) z + w sk`` over ``[0, 1]``.

  ``dz``, ``ds``: ``[Q]`` differences ``upper - lower`` of ``z`` and ``sk`` over the item pairs
  (one slot per unordered pair, oriented by the labels), ``p`` ``[Q]``: slot is a labelled pair.
  Per pair ``f(w) = dz + w (ds - dz)`` is linear in ``w``, so its credit changes only at the
  root ``r = dz / (dz - ds)`` of a pair whose sign flips (``dz``, ``ds`` of opposite signs;
  ``r`` in ``(0, 1]``). Candidates, in increasing ``w``: ``w = 0``, the midpoint of every open
  interval between consecutive distinct roots (and 0, 1), ``w = 1``. Points at ``w = 0`` and
  ``w = 1`` are evaluated directly (ties there count 1/2); inside an interval a pair's credit is
  the sign of ``dz`` (or of ``ds`` where ``dz = 0``) plus the ±1 flips of the roots sorted
  below it (sort + cumulative sum over the ``Q`` fixed slots, so shapes are static). The first
  maximal candidate wins: ties go to the smaller change.
  """
  at0 = jnp.sum(jnp.where(p, _pair_points(dz), 0))
  at1 = jnp.sum(jnp.where(p, _pair_points(ds), 0))
  base = jnp.sum(jnp.where(p, _pair_points(jnp.where(dz != 0, dz, ds)), 0))  # just above w = 0
  down = p & (dz > 0) & (ds < 0)
  up = p & (dz < 0) & (ds > 0)
  flip = down | up
  root = jnp.where(flip, dz / jnp.where(flip, dz - ds, 1.0), 1.0)  # in (0, 1]; no flip: 1
  step = jnp.where(up, 2, jnp.where(down, -2, 0)).astype(jnp.int32)
  root, step = jax.lax.sort((root, step), num_keys=1)
  zero, one = jnp.zeros((1,), root.dtype), jnp.ones((1,), root.dtype)
  lo = jnp.concatenate([zero, root])
  hi = jnp.concatenate([root, one])
  inside = base + jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(step)])
  points = jnp.concatenate([at0[None], jnp.where(lo < hi, inside, -1), at1[None]])
  weights = jnp.concatenate([zero, 0.5 * (lo + hi), one])
  return weights[jnp.argmax(points)]  # first maximum: the smallest w


def _logistic_merge_weight(dz: Array, ds: Array, p: Array, temperature) -> Array:
  """The maximiser over ``[0, 1]`` of the concave ``Σ_P log σ(f_ij(w) / τ)``,
  ``f(w) = dz + w (ds - dz)`` (arguments as :func:`_accuracy_merge_weight`): 0 if the slope at 0
  is <= 0 (also when flat: the smaller change), 1 if the slope at 1 is >= 0, else bisection on
  the (decreasing) slope."""
  dd = ds - dz

  def slope(w):
    return jnp.sum(jnp.where(p, jax.nn.sigmoid(-(dz + w * dd) / temperature) * dd, 0.0))

  def bisect(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    up = slope(mid) > 0
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

  zero, one = jnp.zeros((), dz.dtype), jnp.ones((), dz.dtype)
  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (zero, one))
  return jnp.where(slope(zero) <= 0, zero, jnp.where(slope(one) >= 0, one, 0.5 * (lo + hi)))


def _sequential_core(s, y, m, lm, c, pres, *, merge, temperature):
  # pair accuracy is invariant to the unit c; the logistic merge sees the real differences
  temperature = temperature / c
  P = _labelled_pairs(y, lm)
  # a teacher's PNR counts the labelled pairs it scores both items of
  pnr = jax.vmap(lambda sk, pk: _list_pnr(sk, P & pk[:, None] & pk[None, :]))(s, pres)
  order = jnp.argsort(-pnr, stable=True)  # ties: index
  # one slot per unordered pair i < j, oriented so that a labelled pair reads upper - lower
  iu, ju = np.triu_indices(s.shape[-1], 1)
  p = P[iu, ju] | P[ju, iu]
  sign = jnp.where(P[iu, ju], 1.0, -1.0).astype(s.dtype)

  def pair_diffs(x):
    return sign * _differences(x)[iu, ju]  # multiplying by +-1 is exact

  def step(t, carry):
    z, have = carry  # have: items with a merged value so far
    sk, pk = s[order[t]], pres[order[t]]
    z0, z1 = jnp.where(have, z, sk), jnp.where(pk, sk, z)  # the merged list at w = 0 and w = 1
    both = have | pk
    pw = p & both[iu] & both[ju]  # pairs with both items valued after the merge
    dz, ds = pair_diffs(z0), pair_diffs(z1)
    if merge == "pair_accuracy":
      w = _accuracy_merge_weight(dz, ds, pw)
    else:
      w = _logistic_merge_weight(dz, ds, pw, temperature)
    return jnp.where(have & pk, (1.0 - w) * z + w * sk, z0), both

  z, _ = jax.lax.fori_loop(1, s.shape[0], step, (s[order[0]], pres[order[0]]))
  # a list without a labelled pair has nothing to order the teachers by: the mean (as every variant)
  z = jnp.where(jnp.any(P), z, _present_mean(s, pres))
  return jnp.where(m, z, 0.0)


def _check_pile_options(variant, num_iters, damping, temperature, eps, lam, gamma, loss, merge):
  _validate.check_choice("variant", variant, PILE_VARIANTS)
  _validate.check_choice("merge", merge, SEQUENTIAL_MERGES)
  if _validate.is_concrete(num_iters):
    if isinstance(num_iters, bool) or int(np.asarray(num_iters)) != np.asarray(num_iters) or num_iters < 0:
      raise ValueError(f"num_iters: expected an int >= 0; got {num_iters!r}")
  if _validate.is_concrete(damping) and not 0.0 < float(damping) <= 1.0:
    raise ValueError(f"damping: expected a value in (0, 1]; got {damping!r}")
  _validate.check_positive("temperature", temperature)
  _validate.check_nonnegative("lam", lam)
  if _validate.is_concrete(eps) and not np.isfinite(eps):
    raise ValueError(f"eps: expected a finite value; got {eps!r}")
  if _validate.is_concrete(gamma) and not np.isfinite(gamma):
    raise ValueError(f"gamma: expected a finite value; got {gamma!r}")
  _validate.check_choice("loss", loss, RESPONSIBILITY_LOSSES)


def _pile_core(variant, num_iters, damping, temperature, eps, lam, gamma, loss, merge):
  if variant == "sequential":
    return functools.partial(_sequential_core, merge=merge, temperature=temperature)
  if variant == "consensus":
    return functools.partial(_consensus_core, num_iters=num_iters, damping=damping, eps=eps)
  if variant == "responsibility":
    return functools.partial(_responsibility_core, num_iters=num_iters, damping=damping,
                             temperature=temperature, loss=loss)
  return functools.partial(_regularised_core, num_iters=num_iters, temperature=temperature,
                           lam=lam, gamma=gamma)


def pile(teacher_scores: Array, labels: Array, *, where: Optional[Array] = None,
         label_where: Optional[Array] = None, teacher_where: Optional[Array] = None, variant: str = "consensus", num_iters: int = 10, damping: float = 0.5,
         temperature: float = 1.0, eps: float = 0.0, lam: float = 1.0, gamma: float = 1.0,
         loss: str = "logistic", merge: str = "pair_accuracy") -> Array:
  r"""PILE: Pairwise Iterative Logits Ensemble -- **pile_jax's reconstruction** of Cai et al.,
  EMNLP 2022 Industry Track (arXiv 2211.06059); see the module docstring and
  ``docs/pile.md``. The paper's own algorithm is not public; these are our formulations.

  For one list (``s[k, i]`` teacher logits, ``P`` labelled pairs ``y_i > y_j`` of valid items,
  ``A_k(i,j) = 1[s[k,i] > s[k,j]]``), the first three variants start at ``z⁰ = mean_k s[k]`` and
  run ``num_iters`` iterations of a ``lax.fori_loop``; ``"sequential"`` loops over the teachers
  instead:

  ``variant="consensus"`` (default) -- label-consistent pairwise consensus:

  .. math::
     n_{ij} = \sum_k A_k(i,j),\quad u_{ij} = \tfrac{1}{n_{ij}}\sum_k A_k(i,j)\,s_{ki},\quad
     l_{ij} = \tfrac{1}{n_{ij}}\sum_k A_k(i,j)\,s_{kj}

     V = \{(i,j)\in P: n_{ij} > 0,\ z_i - z_j \le \varepsilon\},\quad
     r_i = \sum_{(i,j)\in V}(u_{ij} - z_i) + \sum_{(j,i)\in V}(l_{ji} - z_i)

     z_i \leftarrow z_i + \eta\, r_i / \max(c_i, 1)

  (``c_i`` = pairs of ``V`` containing ``i``; ``η = damping``; ``ε = eps``). Pairs that no
  teacher orders correctly (``n_ij = 0``) are left alone. For ``η <= 1`` each update is a
  convex combination, so ``min_k s[k,i] <= z_i <= max_k s[k,i]``; ``M = 1`` returns the
  teacher; if the mean violates no fixable pair, the mean is returned.

  ``variant="responsibility"`` -- per-candidate teacher selection by pairwise label loss:

  .. math::
     L_{ki} = \sum_{j:(i,j)\in P} \ell(s_{ki} - z_j) + \sum_{j:(j,i)\in P} \ell(z_j - s_{ki}),
     \quad \rho_{ki} = \mathrm{softmax}_k(-L_{ki}/\tau)

     z_i \leftarrow (1-\eta)\,z_i + \eta \sum_k \rho_{ki}\, s_{ki}

  for items with a labelled partner (others keep the mean). ``loss`` picks ℓ:
  ``"logistic"`` ``log(1+e^{-d})``, ``"hinge"`` ``max(0, 1-d)``, ``"zero_one"`` ``1[d <= 0]``.
  ``τ = temperature``; τ → ∞ gives the mean, τ → 0 the label-best teacher per item.

  ``variant="regularised"`` -- convex label-regularised logit ensemble:

  .. math::
     z^* = \arg\min_z \tfrac{1}{M}\sum_k\sum_i m_i (z_i - s_{ki})^2
           + \lambda \sum_{(i,j)\in P} \tau\,\mathrm{softplus}\!\big(-(z_i - z_j - \gamma)/\tau\big)

  by ``num_iters`` gradient steps of size ``1 / (2 + λ (n_v − 1) / (2τ))`` (``n_v`` = valid items
  of the list; a safe step for this objective) from the mean. ``λ = lam = 0`` gives the mean.
  ``damping`` and ``eps`` are not used by this variant; ``lam``/``gamma`` only by it.

  ``variant="sequential"`` -- **a hypothesis** ("pairwise" = teachers merged two at a time):
  order the teachers by their PNR on the list's labelled pairs (:func:`pile_jax.metrics.pnr`;
  ties: lower teacher index first), ``π(1), ..., π(M)``; start from the best and merge the next
  one with a label-chosen weight, a ``lax.fori_loop`` over ``t = 2..M``:

  .. math::
     z^{(1)} = s_{\pi(1)},\qquad
     w_t = \min \arg\max_{w\in[0,1]} \mathrm{acc}_P\big((1-w)\,z^{(t-1)} + w\,s_{\pi(t)}\big),\qquad
     z^{(t)} = (1-w_t)\,z^{(t-1)} + w_t\,s_{\pi(t)}

  with ``acc_P`` the label pair accuracy (:func:`pile_jax.metrics.pair_accuracy`: ties count
  1/2). Exact and jit-able with static shapes (``merge="pair_accuracy"``, default): a pair's
  sign changes at most once in ``w``, at ``r_ij = dz_ij / (dz_ij − ds_ij)``; the candidates are
  ``w = 0``, ``w = 1`` and the midpoint of each open interval between consecutive distinct
  roots, scored by a sorted cumulative sum (``O(n² log n)`` per merge). The maximisers inside an
  interval form an open set, so "the smallest maximiser" means: ``w = 0`` if it is one (no
  change), else the midpoint of the first maximal interval. ``merge="logistic"`` is the smooth
  reading: ``w_t`` maximises the concave ``Σ_P log σ(f_ij(w)/τ)`` (``τ = temperature``), found by
  40 bisection steps on its slope (0 when the slope at 0 is <= 0). Properties: one teacher gives
  that teacher; a list without labelled pairs gives the teachers' mean, as every variant does
  (there is nothing to order the teachers by); each step is a convex combination, so ``min_k s_ki <= z_i <= max_k s_ki``; the
  chosen pair accuracy never falls below the best teacher's; not invariant to permuting
  teachers with tied PNR. **Scale:** the weights mix logits, so the teachers must share a scale
  (the pipeline standardises each teacher globally first, ``ensembles.standardize: global``):
  the pair-accuracy merge is invariant to adding a constant per teacher, and to a common scale
  of all teachers, but a teacher with larger logits dominates the merged target's margins; the
  logistic merge is also sensitive to the common scale through ``τ``. ``num_iters``,
  ``damping``, ``eps``, ``lam``, ``gamma`` and ``loss`` do not apply.

  Args:
    teacher_scores: ``[T, ..., n]`` teacher logits (teacher axis first).
    labels: ``[..., n]`` graded labels.
    where: optional boolean mask ``[..., n]``.
    label_where: optional boolean mask ``[..., n]`` of the items whose labels count: ``P`` only
      pairs valid items inside it (default: every valid item). Items outside it (e.g. unjudged
      candidates under "unjudged = ignore") are still ensembled, like unpaired items.
    variant: ``"consensus"``, ``"responsibility"``, ``"regularised"`` or ``"sequential"``.
    num_iters: K >= 0, a Python int (static under ``jit``: one compilation per value);
      ``K = 0`` returns the mean of the teachers.
    damping: step η in (0, 1] (consensus, responsibility).
    temperature: τ > 0 (responsibility, regularised).
    eps: violation threshold ε (consensus).
    lam, gamma: penalty weight λ >= 0 and margin γ (regularised).
    loss: pairwise loss of the responsibility variant.
    merge: how the sequential variant picks each weight: ``"pair_accuracy"`` (exact, default) or
      ``"logistic"`` (smooth; uses ``temperature``).
    teacher_where: optional boolean ``[T, ..., n]``: teacher ``k`` scored item ``i`` (False:
      **absent**, the score is never read). With ``p_ki`` = present, every variant uses only the
      present scores: the start is the mean over the present teachers
      ``z⁰_i = Σ_k p_ki s_ki / Σ_k p_ki``; consensus counts ``A_k(i, j)`` only where ``k`` scores
      both items (``n_ij``, ``u_ij``, ``l_ij`` over those teachers); responsibility gives absent
      teachers ``ρ_ki = 0`` (softmax over the present ones); regularised uses the present mean
      (its data term ``(1/M_i) Σ_k p_ki (z_i − s_ki)²``, ``M_i = Σ_k p_ki``); sequential orders the
      teachers by their PNR on the labelled pairs they score both items of, and a merge changes
      only the items the merged teacher scores (``(1 − w) z_i + w s_ki`` where both have a value;
      ``s_ki`` where ``z`` has none yet; ``z_i`` where the teacher is absent), ``w`` chosen on the
      labelled pairs valued after the merge. A teacher absent from a whole list is the same as
      that teacher removed. Items no teacher scores are treated as padding (0, in no pair).

  Returns:
    ``[..., n]`` ensemble logits; 0 at padded items.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0],   # [T=2, n=4] logits: teacher 0
    ...                       [1.0, 2.5, 0.5, 0.0]])   # teacher 1 puts item 1 (label 0) first
    >>> labels, mask = jnp.array([3.0, 0.0, 1.0, 0.0]), jnp.array([True, True, True, False])
    >>> print(np.round(np.asarray(pj.pile(teachers, labels), float), 4))  # the mean violates pair (2, 1); moved towards teacher 0
    [ 2.5    1.375  1.625 -0.5  ]
    >>> print(np.round(np.asarray(pj.pile(teachers, labels, where=mask), float), 4))  # padded items get 0
    [2.5   1.375 1.625 0.   ]
    >>> print(np.round(np.asarray(pj.pile(teachers, labels, variant="regularised", lam=0.5), float), 4))
    [ 2.7343  1.4567  1.3991 -0.5901]
    >>> batch_t, batch_y = jnp.stack([teachers, teachers[::-1]], 1), jnp.stack([labels, labels])
    >>> print(np.round(np.asarray(pj.pile(batch_t, batch_y), float), 4))  # [T, B, n] -> [B, n]
    [[ 2.5    1.375  1.625 -0.5  ]
     [ 2.5    1.375  1.625 -0.5  ]]
    >>> print(np.round(np.asarray(jax.vmap(pj.pile, in_axes=(1, 0))(batch_t, batch_y), float), 4))  # the same, list by list
    [[ 2.5    1.375  1.625 -0.5  ]
     [ 2.5    1.375  1.625 -0.5  ]]
    >>> y4 = jnp.array([3.0, 2.0, 1.0, 0.0])  # both teachers have PNR 5 (5 of 6 pairs): teacher 0 starts
    >>> print(np.round(np.asarray(pj.pile(teachers, y4, variant="sequential"), float), 4))  # w in (1/3, 2/3) orders all 6: midpoint 1/2
    [ 2.5   1.75  1.25 -0.5 ]
    >>> print(np.round(np.asarray(pj.pile(teachers, y4, where=mask, variant="sequential", merge="logistic"), float), 4))
    [2.7941 1.6029 1.3971 0.    ]
    >>> print(np.round(np.asarray(pj.pile(jnp.stack([teachers, teachers[::-1]], 1), jnp.stack([y4, y4]), variant="sequential"), float), 4))
    [[ 2.5   1.75  1.25 -0.5 ]
     [ 2.5   1.75  1.25 -0.5 ]]
  """
  _check_pile_options(variant, num_iters, damping, temperature, eps, lam, gamma, loss, merge)
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=True, teacher_where=teacher_where)
  _check_label_where(label_where, labels)
  _check_teacher_where(teacher_where, teacher_scores)
  return _pile_impl(teacher_scores, labels, where, label_where, teacher_where, damping, temperature, eps, lam,
                    gamma, variant=variant, num_iters=int(num_iters), loss=loss, merge=merge)


def _check_label_where(label_where, labels) -> None:
  if label_where is None:
    return
  shape, list_shape = np.shape(label_where), np.shape(labels)
  try:
    np.broadcast_shapes(shape, list_shape)
  except ValueError:
    raise ValueError(f"label_where: shape {shape} does not broadcast to the labels' {list_shape}") from None


@functools.partial(jax.jit, static_argnames=("variant", "num_iters", "loss", "merge"))
def _pile_impl(teacher_scores, labels, where, label_where, teacher_where, damping, temperature, eps, lam, gamma,
               *, variant, num_iters, loss, merge):
  s, y, m, p = _prepare(teacher_scores, labels, where, require_labels=True, check=False,
                        teacher_where=teacher_where)
  # Jitted once per (shapes, variant, num_iters, loss); the numeric options are traced, so
  # eager calls with new values do not recompile. Inside an outer jit this is simply inlined.
  core = _pile_core(variant, num_iters, damping, temperature, eps, lam, gamma, loss, merge)
  return _per_list(core, s, y, m, _label_mask(m, label_where), p)


def pile_diagnostics(teacher_scores: Array, labels: Array, *, where: Optional[Array] = None,
                     **pile_options) -> dict:
  """Diagnostics of a PILE run (spec step 4), per list.

  Returns a dict of arrays:

  * ``"ensemble"`` ``[..., n]``: the PILE output (``pile(..., **pile_options)``);
  * ``"labelled_pairs"`` ``[...]``: ``|P|``;
  * ``"unfixable_pairs"`` ``[...]``: labelled pairs no teacher orders correctly (``n_ij = 0``);
  * ``"violated_before"`` / ``"violated_after"`` ``[...]``: ``|V|`` (fixable labelled pairs with
    ``z_i − z_j <= eps``) for the mean ``z⁰`` and for the output;
  * ``"teacher_pair_accuracy"`` ``[T, ...]``: fraction of ``P`` each teacher orders strictly
    correctly (``A_k``; ties count as wrong; a pair with an absent score counts as not ordered),
    0 for lists without labelled pairs;
  * ``"mean_pair_accuracy"`` / ``"ensemble_pair_accuracy"`` ``[...]``: same for ``z⁰`` / output.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> d = pj.pile_diagnostics(teachers, jnp.array([3.0, 0.0, 1.0, 0.0]))
    >>> print(d['labelled_pairs'], d['violated_before'], d['violated_after'], np.round(np.asarray(d['teacher_pair_accuracy'], float), 2))
    5 1 0 [1.  0.6]
    >>> d = pj.pile_diagnostics(teachers, jnp.array([3.0, 0.0, 1.0, 0.0]), where=jnp.array([True, True, True, False]))
    >>> print(d['labelled_pairs'], round(float(d['mean_pair_accuracy']), 4), float(d['ensemble_pair_accuracy']))
    3 0.6667 1.0
  """
  eps = pile_options.get("eps", 0.0)
  z = pile(teacher_scores, labels, where=where, **pile_options)
  res = _diagnostics_impl(teacher_scores, labels, where, pile_options.get("label_where"),
                          pile_options.get("teacher_where"), z, eps)
  res["ensemble"] = z
  return res


@jax.jit
def _diagnostics_impl(teacher_scores, labels, where, label_where, teacher_where, z, eps):
  s, y, m, p = _prepare(teacher_scores, labels, where, require_labels=True, check=False,
                        teacher_where=teacher_where)
  z0 = jnp.where(m, _teacher_mean(s, m, p), 0.0)
  lm = _label_mask(m, label_where)

  def core(s_l, y_l, m_l, z0_l, z_l, p_l):
    P = _labelled_pairs(y_l, m_l)  # m_l: the label mask here
    cnt, _, _ = _pair_stats(s_l, P, p_l)
    fixable = P & (cnt > 0)
    n_p = jnp.sum(P)
    den = jnp.maximum(n_p, 1).astype(s_l.dtype)

    def acc(x, px=None):
      both = P if px is None else P & px[:, None] & px[None, :]  # a teacher orders the pairs it scores
      return jnp.sum(both & _pairwise(lambda a, b: a > b, x, x)).astype(s_l.dtype) / den

    return {
        "labelled_pairs": n_p,
        "unfixable_pairs": jnp.sum(P & (cnt == 0)),
        "violated_before": jnp.sum(_violated(z0_l, fixable, eps)),
        "violated_after": jnp.sum(_violated(z_l, fixable, eps)),
        "teacher_pair_accuracy": jax.vmap(acc)(s_l, p_l),
        "mean_pair_accuracy": acc(z0_l),
        "ensemble_pair_accuracy": acc(z_l),
    }

  t = s.shape[0]
  list_shape = s.shape[1:]
  n = list_shape[-1]
  lead = list_shape[:-1]
  b = math.prod(lead)
  out = jax.vmap(core)(jnp.moveaxis(s, 0, -2).reshape((b, t, n)), y.reshape((b, n)),
                       lm.reshape((b, n)), z0.reshape((b, n)), z.reshape((b, n)),
                       jnp.moveaxis(p, 0, -2).reshape((b, t, n)))
  res = {k: v.reshape(lead) for k, v in out.items() if k != "teacher_pair_accuracy"}
  res["teacher_pair_accuracy"] = jnp.moveaxis(out["teacher_pair_accuracy"], -1, 0).reshape(
      (t,) + lead)
  return res


# ----------------------------------------------------------------------------------------------
# baselines


def mean(teacher_scores: Array, labels: Optional[Array] = None, *,
         where: Optional[Array] = None, teacher_where: Optional[Array] = None) -> Array:
  r"""Mean-logit ensemble :math:`z_i = \frac{1}{M}\sum_k s_{ki}` (0 at padded items).

  With ``teacher_where`` (``p_ki``): the mean over the teachers present,
  :math:`z_i = \sum_k p_{ki} s_{ki} / \sum_k p_{ki}` (an item no teacher scores: 0).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])  # [T=2, n=4]
    >>> print(np.round(np.asarray(pj.mean(teachers), float), 4))
    [ 2.5   1.75  1.25 -0.5 ]
    >>> print(np.round(np.asarray(pj.mean(teachers, where=jnp.array([True, True, True, False])), float), 4))
    [2.5  1.75 1.25 0.  ]
    >>> print(np.round(np.asarray(jax.vmap(pj.mean, in_axes=1)(jnp.stack([teachers, 2 * teachers], 1)), float), 4))  # [T, B, n] list by list
    [[ 2.5   1.75  1.25 -0.5 ]
     [ 5.    3.5   2.5  -1.  ]]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=False, teacher_where=teacher_where)
  _check_teacher_where(teacher_where, teacher_scores)
  return _mean(teacher_scores, labels, where, teacher_where)


@jax.jit
def _mean(teacher_scores, labels, where, teacher_where=None):
  s, _, m, p = _prepare(teacher_scores, labels, where, require_labels=False, check=False, teacher_where=teacher_where)
  return jnp.where(m, _teacher_mean(s, m, p), 0.0)


def weighted_mean(teacher_scores: Array, labels: Optional[Array] = None, *,
                  where: Optional[Array] = None, weights: Sequence[float],
                  teacher_where: Optional[Array] = None) -> Array:
  r"""Fixed-weight ensemble :math:`z_i = \sum_k w_k s_{ki} / \sum_k w_k`.

  ``weights`` ``[T]`` must be non-negative with a positive sum (normalised here). With
  ``teacher_where`` (``p_ki``) the weights are renormalised over the teachers present,
  :math:`z_i = \sum_k w_k p_{ki} s_{ki} / \sum_k w_k p_{ki}` (0 where that sum is 0).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> print(np.round(np.asarray(pj.weighted_mean(teachers, weights=jnp.array([3.0, 1.0])), float), 4))  # (3 s_0 + s_1) / 4
    [ 3.25   1.375  1.625 -0.75 ]
    >>> print(np.round(np.asarray(pj.weighted_mean(teachers, where=jnp.array([True, True, True, False]), weights=jnp.array([0.5, 0.5])), float), 4))
    [2.5  1.75 1.25 0.  ]
    >>> print(np.round(np.asarray(pj.weighted_mean(jnp.stack([teachers, teachers], 1), weights=jnp.array([1.0, 0.0])), float), 4))  # [T, B, n]
    [[ 4.  1.  2. -1.]
     [ 4.  1.  2. -1.]]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, teacher_where=teacher_where)
  t = np.shape(teacher_scores)[0]
  if np.shape(weights) != (t,):
    raise ValueError(f"weights: expected shape ({t},) (one per teacher); got {np.shape(weights)}")
  if _validate.is_concrete(weights):
    wn = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(wn)) or (wn < 0).any() or wn.sum() <= 0:
      raise ValueError(f"weights: expected finite non-negative values with a positive sum; got {wn.tolist()}")
  _check_teacher_where(teacher_where, teacher_scores)
  return _weighted_mean(teacher_scores, labels, where, weights, teacher_where)


@jax.jit
def _weighted_mean(teacher_scores, labels, where, weights, teacher_where=None):
  s, _, m, p = _prepare(teacher_scores, labels, where, require_labels=False, check=False, teacher_where=teacher_where)
  w = jnp.asarray(weights, dtype=s.dtype)
  w = w / jnp.sum(w)
  c = _list_scale(s, m)
  z = jnp.tensordot(w, s / c[None], axes=(0, 0))
  if teacher_where is not None:  # renormalise over the teachers present
    den = jnp.tensordot(w, p.astype(s.dtype), axes=(0, 0))
    z = jnp.where(den > 0, z / jnp.where(den > 0, den, 1.0), 0.0)
  return jnp.where(m, z * c, 0.0)


def max_ensemble(teacher_scores: Array, labels: Optional[Array] = None, *,
                 where: Optional[Array] = None, teacher_where: Optional[Array] = None) -> Array:
  r"""Max-logit ensemble :math:`z_i = \max_k s_{ki}` (registered as ``"max"``; with
  ``teacher_where``, the max over the teachers present).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> print(np.round(np.asarray(pj.max_ensemble(teachers), float), 4))
    [4.  2.5 2.  0. ]
    >>> print(np.round(np.asarray(pj.max_ensemble(teachers, where=jnp.array([True, True, True, False])), float), 4))
    [4.  2.5 2.  0. ]
    >>> print(np.round(np.asarray(jax.vmap(pj.max_ensemble, in_axes=1)(jnp.stack([teachers, -teachers], 1)), float), 4))
    [[ 4.   2.5  2.   0. ]
     [-1.  -1.  -0.5  1. ]]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=False, teacher_where=teacher_where)
  _check_teacher_where(teacher_where, teacher_scores)
  return _max_ensemble(teacher_scores, labels, where, teacher_where)


@jax.jit
def _max_ensemble(teacher_scores, labels, where, teacher_where=None):
  s, _, m, p = _prepare(teacher_scores, labels, where, require_labels=False, check=False, teacher_where=teacher_where)
  return jnp.where(m, jnp.max(jnp.where(p, s, -jnp.inf), axis=0), 0.0)


def zscore_mean(teacher_scores: Array, labels: Optional[Array] = None, *,
                where: Optional[Array] = None, teacher_where: Optional[Array] = None) -> Array:
  r"""Mean of per-list standardised logits.

  .. math:: z_i = \frac{1}{M}\sum_k \frac{s_{ki} - \mu_k}{\sigma_k}

  with :math:`\mu_k`, :math:`\sigma_k` the mean and population standard deviation of teacher
  ``k``'s logits over the *valid* items of the list; :math:`\sigma_k = 0` (constant teacher or
  one valid item) is replaced by 1 (the teacher is only centred). With ``teacher_where``
  (``p_ki``): :math:`\mu_k`, :math:`\sigma_k` over the items teacher ``k`` scores, and the mean
  over the teachers present at ``i``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> print(np.round(np.asarray(pj.zscore_mean(teachers), float), 4))
    [ 0.6934  0.6631 -0.1286 -1.2279]
    >>> print(np.round(np.asarray(pj.zscore_mean(teachers, where=jnp.array([True, True, True, False])), float), 4))
    [ 0.472   0.1519 -0.6239  0.    ]
    >>> print(np.round(np.asarray(pj.zscore_mean(100.0 * teachers + 3.0), float), 4))  # invariant to each teacher's scale and shift
    [ 0.6934  0.6631 -0.1286 -1.2279]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=False, teacher_where=teacher_where)
  _check_teacher_where(teacher_where, teacher_scores)
  return _zscore_mean(teacher_scores, labels, where, teacher_where)


@jax.jit
def _zscore_mean(teacher_scores, labels, where, teacher_where=None):
  s, _, m, p = _prepare(teacher_scores, labels, where, require_labels=False, check=False, teacher_where=teacher_where)
  s = s / _list_scale(s, m)[None]  # scale-invariant; keeps squares of huge logits finite
  mf = m.astype(s.dtype)[None] if teacher_where is None else p.astype(s.dtype)
  cnt = jnp.maximum(jnp.sum(mf, axis=-1, keepdims=True), 1.0)
  mu = jnp.sum(s * mf, axis=-1, keepdims=True) / cnt
  var = jnp.sum(jnp.square(s - mu) * mf, axis=-1, keepdims=True) / cnt
  sd = jnp.sqrt(var)
  sd = jnp.where(sd > 0, sd, 1.0)
  if teacher_where is None:  # (the expression without a mask, bit for bit)
    z = jnp.mean((s - mu) / sd, axis=0)
  else:
    z = _present_mean(jnp.where(p, (s - mu) / sd, 0.0), p)
  return jnp.where(m, z, 0.0)


def rank_average(teacher_scores: Array, labels: Optional[Array] = None, *,
                 where: Optional[Array] = None, teacher_where: Optional[Array] = None) -> Array:
  r"""Average of per-teacher rank scores (Borda count).

  Each teacher ranks the valid items (1 = highest logit; **tied logits share their average
  rank**, so the result is permutation-equivariant); the item score is

  .. math:: z_i = \frac{1}{M}\sum_k \frac{n_v - \mathrm{rank}_k(i)}{\max(n_v - 1, 1)} \in [0, 1]

  (1 for an item every teacher puts first, 0 for one every teacher puts last). With
  ``teacher_where``, each teacher ranks the items it scores (its own ``n_v``) and the average is
  over the teachers present at ``i``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> print(np.round(np.asarray(pj.rank_average(teachers), float), 4))
    [0.8333 0.6667 0.5    0.    ]
    >>> print(np.round(np.asarray(pj.rank_average(teachers, where=jnp.array([True, True, True, False])), float), 4))
    [0.75 0.5  0.25 0.  ]
    >>> print(np.round(np.asarray(jax.vmap(pj.rank_average, in_axes=1)(jnp.stack([teachers, teachers[::-1]], 1)), float), 4))
    [[0.8333 0.6667 0.5    0.    ]
     [0.8333 0.6667 0.5    0.    ]]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=False, teacher_where=teacher_where)
  _check_teacher_where(teacher_where, teacher_scores)
  return _rank_average(teacher_scores, labels, where, teacher_where)


@jax.jit
def _rank_average(teacher_scores, labels, where, teacher_where=None):
  s, _, m, p = _prepare(teacher_scores, labels, where, require_labels=False, check=False, teacher_where=teacher_where)
  valid_j = m[None, ..., None, :] if teacher_where is None else p[..., None, :]
  si = s[..., :, None]
  sj = s[..., None, :]
  higher = jnp.sum((sj > si) & valid_j, axis=-1).astype(s.dtype)
  tied = jnp.sum((sj == si) & valid_j, axis=-1).astype(s.dtype) - 1.0  # minus self
  rank = 1.0 + higher + 0.5 * tied
  if teacher_where is None:  # (the expression without a mask, bit for bit)
    n_v = jnp.sum(m, axis=-1, keepdims=True).astype(s.dtype)
    return jnp.where(m, jnp.mean((n_v - rank) / jnp.maximum(n_v - 1.0, 1.0), axis=0), 0.0)
  n_v = jnp.sum(p, axis=-1, keepdims=True).astype(s.dtype)
  score = (n_v - rank) / jnp.maximum(n_v - 1.0, 1.0)
  return jnp.where(m, _present_mean(jnp.where(p, score, 0.0), p), 0.0)


def best_teacher_per_list(teacher_scores: Array, labels: Array, *,
                          where: Optional[Array] = None, label_where: Optional[Array] = None,
                          teacher_where: Optional[Array] = None) -> Array:
  """The logits of the teacher with the highest PNR (:func:`pile_jax.metrics.pnr`) on each list.

  Ties (including lists without labelled pairs, where every PNR is 0) go to the lowest teacher
  index. Uses the labels of the list it scores: an oracle/upper-bound baseline. The PNR counts
  only items in ``label_where`` (default: every valid item); the chosen logits cover all of ``where``.
  With ``teacher_where``, a teacher's PNR counts the labelled pairs it scores both items of, and
  each item takes the score of the best-PNR teacher among those present there.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> print(np.round(np.asarray(pj.best_teacher_per_list(teachers, labels), float), 4))  # teacher 0 orders every labelled pair
    [ 4.  1.  2. -1.]
    >>> print(np.round(np.asarray(pj.best_teacher_per_list(teachers, labels, where=jnp.array([True, True, True, False])), float), 4))
    [4. 1. 2. 0.]
    >>> print(np.round(np.asarray(pj.best_teacher_per_list(jnp.stack([teachers, teachers[::-1]], 1), jnp.stack([labels, labels])), float), 4))
    [[ 4.  1.  2. -1.]
     [ 4.  1.  2. -1.]]
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=True, teacher_where=teacher_where)
  _check_label_where(label_where, labels)
  _check_teacher_where(teacher_where, teacher_scores)
  return _best_teacher_per_list(teacher_scores, labels, where, label_where, teacher_where)


@jax.jit
def _best_teacher_per_list(teacher_scores, labels, where, label_where, teacher_where=None):
  s, y, m, p = _prepare(teacher_scores, labels, where, require_labels=True, check=False, teacher_where=teacher_where)
  lm = _label_mask(m, label_where)
  pnr = _metrics.pnr(s, jnp.broadcast_to(y, s.shape), where=jnp.broadcast_to(lm, s.shape) & p)  # [T, ...]
  key = jnp.where(p, pnr[..., None], -jnp.inf)  # [T, ..., n]: absent teachers never chosen
  best = jnp.argmax(key, axis=0)  # first maximum, per item
  t = s.shape[0]
  sel = jnp.arange(t).reshape((t,) + (1,) * best.ndim) == best[None]  # [T, ..., n]
  z = jnp.sum(jnp.where(sel, s, 0.0), axis=0)
  return jnp.where(m, z, 0.0)


ENSEMBLES: dict[str, Callable[..., Array]] = {
    "mean": mean,
    "weighted_mean": weighted_mean,
    "max": max_ensemble,
    "zscore_mean": zscore_mean,
    "rank_average": rank_average,
    "best_teacher_per_list": best_teacher_per_list,
    "pile": pile,
    "pile_consensus": functools.partial(pile, variant="consensus"),
    "pile_responsibility": functools.partial(pile, variant="responsibility"),
    "pile_regularised": functools.partial(pile, variant="regularised"),
    "pile_sequential": functools.partial(pile, variant="sequential"),
}

_NEEDS_LABELS = {"best_teacher_per_list", "pile", "pile_consensus", "pile_responsibility",
                 "pile_regularised", "pile_sequential"}
#: Ensembles supervised by the labels: training targets, never systems on labelled test data.
LABEL_ENSEMBLES = frozenset(_NEEDS_LABELS)


def ensemble(name: str, teacher_scores: Array, labels: Optional[Array] = None, *,
             where: Optional[Array] = None, **options) -> Array:
  """Runs the ensemble registered as ``name`` (see :data:`ENSEMBLES`) with ``options``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> teachers = jnp.array([[4.0, 1.0, 2.0, -1.0], [1.0, 2.5, 0.5, 0.0]])
    >>> print(np.round(np.asarray(pj.ensemble.ensemble("mean", teachers), float), 4))
    [ 2.5   1.75  1.25 -0.5 ]
    >>> print(np.round(np.asarray(pj.ensemble.ensemble("pile", teachers, jnp.array([3.0, 0.0, 1.0, 0.0]), num_iters=5), float), 4))
    [ 2.5    1.375  1.625 -0.5  ]
  """
  if name not in ENSEMBLES:
    raise ValueError(f"name: unknown ensemble {name!r}; expected one of {sorted(ENSEMBLES)}")
  if name in _NEEDS_LABELS and labels is None:
    raise ValueError(f"labels: ensemble {name!r} needs graded labels [..., n]; got None")
  return ENSEMBLES[name](teacher_scores, labels, where=where, **options)


# ----------------------------------------------------------------------------------------------
# report


def _entry(scores, labels, where, evaluated, topn):
  per_list = {
      "pnr": np.asarray(_metrics.pnr(scores, labels, where=where), dtype=np.float64),
      "pair_accuracy": np.asarray(_metrics.pair_accuracy(scores, labels, where=where),
                                  dtype=np.float64),
      "ndcg": np.asarray(_metrics.ndcg(scores, labels, where=where, topn=topn), dtype=np.float64),
  }
  k = max(int(evaluated.sum()), 1)
  overall = {name: float(v[evaluated].sum() / k) for name, v in per_list.items()}
  overall["pnr_pooled"] = float(_metrics.pnr_pooled(scores, labels, where=where))
  return {**overall, "per_list": per_list}


def teacher_report(teacher_scores: Array, labels: Array, *, where: Optional[Array] = None,
                   teacher_names: Optional[Sequence[str]] = None,
                   ensembles: Sequence[Union[str, tuple]] = ("mean", "pile", "pile_sequential"),
                   topn: int = 10, teacher_where: Optional[Array] = None) -> dict:
  """PNR, pair accuracy and NDCG@topn of every teacher and of the requested ensembles.

  With ``teacher_where`` ``[T, ..., n]`` each teacher is evaluated on the items it scores (absent
  scores are left out, never counted as 0) and the ensembles get the mask.

  ``ensembles`` items are registry names or ``(display_name, registry_name, options_dict)``.

  Returns a dict::

      {"topn": int, "num_lists": int, "num_evaluated_lists": int,
       "teachers":  {name: {"pnr", "pnr_pooled", "pair_accuracy", "ndcg": float,
                            "per_list": {...}}},
       "ensembles": {name: {... same ..., "vs_mean": {"better", "worse", "tied": int}}}}

  Overall values are means over the lists with >= 1 labelled pair (``num_evaluated_lists``),
  except ``pnr_pooled`` (:func:`pile_jax.metrics.pnr_pooled`: concordant / discordant pairs
  summed over all lists);
  ``per_list`` holds NumPy arrays ``[...]`` for every list. ``vs_mean`` counts evaluated lists
  where the ensemble's PNR is above / below / equal to the mean ensemble's.
  """
  _validate.check_teacher_lists(teacher_scores, labels, where=where, require_labels=True, teacher_where=teacher_where)
  _check_teacher_where(teacher_where, teacher_scores)
  ts = jnp.asarray(teacher_scores)
  y = jnp.asarray(labels)
  t = ts.shape[0]
  list_shape = ts.shape[1:]
  m = (jnp.ones(list_shape, bool) if where is None
       else jnp.broadcast_to(jnp.asarray(where, dtype=bool), list_shape))
  tw = None if teacher_where is None else jnp.broadcast_to(jnp.asarray(teacher_where, bool), ts.shape) & m[None]
  names = list(teacher_names) if teacher_names is not None else [f"teacher_{k}" for k in range(t)]
  if len(names) != t:
    raise ValueError(f"teacher_names: expected {t} names (one per teacher); got {len(names)}")
  evaluated = np.asarray(_metrics.num_labelled_pairs(y, where=m)) > 0
  report = {
      "topn": topn,
      "num_lists": int(np.prod(list_shape[:-1], dtype=np.int64)),
      "num_evaluated_lists": int(evaluated.sum()),
      "teachers": {},
      "ensembles": {},
  }
  for k, name in enumerate(names):
    report["teachers"][name] = _entry(ts[k], y, m if tw is None else tw[k], evaluated, topn)
  extra = {} if tw is None else {"teacher_where": tw}
  mean_pnr = np.asarray(_metrics.pnr(mean(ts, where=m, **extra), y, where=m))
  for item in ensembles:
    if isinstance(item, str):
      display, reg, opts = item, item, {}
    else:
      display, reg, opts = item
    z = ensemble(reg, ts, y, where=m, **extra, **dict(opts))
    entry = _entry(z, y, m, evaluated, topn)
    p = entry["per_list"]["pnr"]
    entry["vs_mean"] = {
        "better": int(((p > mean_pnr) & evaluated).sum()),
        "worse": int(((p < mean_pnr) & evaluated).sum()),
        "tied": int(((p == mean_pnr) & evaluated).sum()),
    }
    report["ensembles"][display] = entry
  return report


def format_teacher_report(report: dict) -> str:
  """Markdown table of a :func:`teacher_report` result."""
  k = report["topn"]
  lines = [
      f"Lists evaluated (>= 1 labelled pair): {report['num_evaluated_lists']} of "
      f"{report['num_lists']}",
      "",
      f"| name | kind | PNR (mean of lists) | PNR (pooled pairs) | pair acc. | NDCG@{k} | "
      "PNR vs mean (better/worse/tied) |",
      "|---|---|---:|---:|---:|---:|---|",
  ]
  for kind in ("teachers", "ensembles"):
    for name, e in report[kind].items():
      vs = e.get("vs_mean")
      vs_s = f"{vs['better']}/{vs['worse']}/{vs['tied']}" if vs else ""
      lines.append(f"| {name} | {kind[:-1]} | {e['pnr']:.4f} | {e['pnr_pooled']:.4f} | "
                   f"{e['pair_accuracy']:.4f} | {e['ndcg']:.4f} | {vs_s} |")
  return "\n".join(lines)
