r"""Per-list ranking metrics (NDCG, MRR, AP, recall, precision, PNR), masked and batched.

Every metric takes ``scores`` and ``labels`` of shape ``[..., n]`` (any leading batch axes), an
optional boolean ``where`` mask ``[..., n]`` (True = real item; padded items are ignored
completely, whatever values they hold) and returns **one value per list**, shape ``[...]``.
Callers average (e.g. over the lists that have a relevant item).

Conventions (the same for every metric):

* **Ranking and ties.** Items are sorted by score, descending; equal scores are broken by the
  original index, ascending (a stable sort). The ranking is therefore deterministic and
  reproducible, but *not* invariant to permuting tied items. Padded items are never ranked.
  (Arrays carry no doc ids. Lists keyed by doc id -- run files, :mod:`pile_jax.train.evaluate`
  -- use trec_eval's order, ties by doc id descending, :func:`pile_jax.data.trec.rank_order`;
  the evaluation encodes that rank in the scores, so this index rule never applies there.)
* **Precision.** Computed and returned in float32 for bf16/fp16/integer inputs.
* **Gains.** ``gain="exp2"`` is :math:`2^y - 1`; :func:`ndcg` (and the LambdaRank weights)
  take it relative to the list's largest valid label ``M``, :math:`(2^y - 1)/2^c` with
  :math:`c = \max(0, M - 64)` -- a common factor that cancels in the ratio, exact for labels
  below 64 and free of float32 overflow (NaN) for any label. :func:`dcg`, which returns
  absolute gains, raises for ``exp2`` labels >= 128 (``2^128`` overflows float32).
* **Relevance** for the binary metrics (MRR, AP, recall, precision) is
  ``label > relevance_threshold`` (default ``0``: any positive grade is relevant; for integer
  grades this is the same as trec_eval's and Rax's ``label >= 1``).
* **Cut-off** ``topn``: only the first ``topn`` ranked (valid) items count; ``None`` = all.
* Lists with nothing to measure (no valid item, no relevant item, ideal DCG 0, no labelled pair)
  get the value ``0`` -- never NaN.

Compatibility:

* ``ndcg(gain="linear", topn=10)`` equals trec_eval's ``ndcg_cut_10`` when the list holds every
  judged document of the query; ``average_precision`` equals trec_eval's ``map`` (denominator:
  the number of relevant items in the list) and ``mrr`` equals ``recip_rank`` under the same
  condition. ``ndcg`` (exp2 gain), ``mrr``, ``average_precision``, ``recall`` and ``precision``
  equal Rax's ``*_metric`` functions with ``reduce_fn=None`` on lists with at least one valid
  item.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax import _validate

Array = jax.Array

__all__ = [
    "ndcg",
    "dcg",
    "mrr",
    "average_precision",
    "recall",
    "precision",
    "pnr",
    "pnr_counts",
    "pnr_pooled",
    "pair_accuracy",
    "num_labelled_pairs",
    "ranks",
    "METRICS",
    "get_metric",
]


# ----------------------------------------------------------------------------------------------
# helpers


def _prepare_dtype(scores, labels):
  """Metrics compute in float32 (float64 if an input is float64), whatever the input dtype."""
  dtype = jnp.result_type(jnp.asarray(scores).dtype, jnp.asarray(labels).dtype, jnp.float32)
  return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _prepare(scores, labels, where, *, check: bool = True):
  if check:
    _validate.check_lists(scores, labels, where=where)
  scores = jnp.asarray(scores)
  labels = jnp.asarray(labels)
  dtype = _prepare_dtype(scores, labels)
  scores = scores.astype(dtype)
  labels = labels.astype(dtype)
  if where is None:
    where = jnp.ones(scores.shape, dtype=bool)
  else:
    where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)
  # Padded entries may hold anything (NaN, -inf): neutralise them once, here.
  scores = jnp.where(where, scores, 0.0)
  labels = jnp.where(where, labels, 0.0)
  return scores, labels, where


def _check_topn(topn):
  if topn is None:
    return
  if isinstance(topn, bool) or not isinstance(topn, (int,)) or topn < 1:
    raise ValueError(f"topn: expected None or an int >= 1; got {topn!r}")


def _sort_order(scores: Array, where: Array) -> Array:
  """Indices that sort each list: valid items first, score descending, index ascending."""
  n = scores.shape[-1]
  iota = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape)
  invalid = jnp.logical_not(where).astype(jnp.int32)
  neg = jnp.where(where, -scores + 0.0, 0.0)  # "+ 0.0" maps -0.0 to 0.0 (equal keys).
  *_, order = jax.lax.sort((invalid, neg, iota), dimension=scores.ndim - 1, num_keys=3)
  return order


def ranks(scores: Array, *, where: Optional[Array] = None) -> Array:
  """1-based ranks ``[..., n]`` (score descending, ties by index ascending).

  Padded items get ranks after all valid items. Not differentiable (integer output).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> print(pj.metrics.ranks(jnp.array([0.5, 2.0, 0.5, 1.0])))  # ties by index
    [3 1 4 2]
    >>> print(pj.metrics.ranks(jnp.array([0.5, 2.0, 0.5, 1.0]), where=jnp.array([True, False, True, True])))
    [2 4 3 1]
  """
  scores = jnp.asarray(scores)
  if where is None:
    where = jnp.ones(scores.shape, dtype=bool)
  where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)
  order = _sort_order(jnp.where(where, scores, 0.0), where)
  # ranks[order[k]] = k + 1  <=>  ranks = argsort(order) + 1 (order is a permutation).
  return jnp.argsort(order, axis=-1).astype(jnp.int32) + 1


def _sorted_by_score(scores, labels, where):
  order = _sort_order(scores, where)
  labels_sorted = jnp.take_along_axis(labels, order, axis=-1)
  where_sorted = jnp.take_along_axis(where, order, axis=-1)
  return labels_sorted, where_sorted


def _positions(shape, dtype):
  n = shape[-1]
  return jnp.broadcast_to(jnp.arange(1, n + 1, dtype=dtype), shape)


def _cutoff(shape, topn, dtype):
  pos = _positions(shape, dtype)
  if topn is None:
    return jnp.ones(shape, dtype=bool)
  return pos <= topn


def _safe_div(num, den):
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


#: exp2 gains are taken relative to ``2^c``, ``c = max(0, max valid label of the list - 64)``.
_EXP2_HEADROOM = 64


def _gain(labels, gain, where=None, *, relative: bool = False):
  """Gains (0 at padded items). ``relative=True`` (NDCG, LambdaRank weights): exp2 gains are
  ``2^(y-c) - 2^(-c)`` = ``(2^y - 1) / 2^c`` per list, exact for labels below 64 (``c = 0``)."""
  if gain == "exp2":
    if not relative:
      g = jnp.exp2(labels) - 1.0
    else:
      top = jnp.max(jnp.where(where, labels, -jnp.inf), axis=-1, keepdims=True)
      c = jnp.maximum(jnp.where(jnp.isfinite(top), top, 0.0) - _EXP2_HEADROOM, 0.0)
      g = jnp.exp2(labels - c) - jnp.exp2(-c)
  elif gain == "linear":
    g = labels
  else:
    raise ValueError(f"gain: expected 'exp2' or 'linear'; got {gain!r}")
  return g if where is None else jnp.where(where, g, 0.0)


# ----------------------------------------------------------------------------------------------
# graded metrics


def dcg(scores: Array, labels: Array, *, where: Optional[Array] = None,
        topn: Optional[int] = None, gain: str = "exp2") -> Array:
  r"""Discounted cumulative gain per list.

  .. math:: \mathrm{DCG@k} = \sum_{r=1}^{\min(k, n)} \frac{g(y_{\pi(r)})}{\log_2(r + 1)}

  with :math:`\pi` the score ranking (ties by index) and :math:`g(y) = 2^y - 1` (``"exp2"``,
  Burges et al. 2005) or :math:`g(y) = y` (``"linear"``, trec_eval). With ``"exp2"``, labels
  >= 128 overflow float32: an eager call raises ``ValueError`` (use :func:`ndcg`, which is
  scale-free, or ``gain="linear"``); under ``jit`` the value is ``inf``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.metrics.dcg(scores, labels):.4f}")  # 7/log2(2) + 1/log2(4)
    7.5000
    >>> print(f"{pj.metrics.dcg(scores, labels, where=mask, topn=2, gain='linear'):.4f}")  # 3/1 + 0
    3.0000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.metrics.dcg)(S, Y), float), 4))
    [7.5    3.6457]
  """
  _check_topn(topn)
  _gain(0.0, gain)
  _validate.check_lists(scores, labels, where=where)
  if gain == "exp2" and _validate.is_concrete(labels, where):
    y = np.asarray(labels, np.float64)
    y = y[np.broadcast_to(np.asarray(True if where is None else where, bool), y.shape)]
    if y.size and y.max() >= 128 and _prepare_dtype(scores, labels) == jnp.float32:
      raise ValueError(
          f"labels: the exp2 gain 2^y - 1 overflows float32 for labels >= 128 (max label "
          f"{y.max():g}); use ndcg (scale-free, accepts any label) or gain='linear'")
  return _dcg(scores, labels, where, topn=topn, gain=gain)


@functools.partial(jax.jit, static_argnames=("topn", "gain"))
def _dcg(scores, labels, where, *, topn, gain):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  g = _gain(labels, gain, where)
  g_sorted, w_sorted = _sorted_by_score(scores, g, where)
  return _dcg_sorted(g_sorted, w_sorted, topn)


def _dcg_sorted(g_sorted, w_sorted, topn):
  pos = _positions(g_sorted.shape, g_sorted.dtype)
  disc = 1.0 / jnp.log2(pos + 1.0)
  keep = w_sorted & _cutoff(g_sorted.shape, topn, g_sorted.dtype)
  return jnp.sum(jnp.where(keep, g_sorted * disc, 0.0), axis=-1)


def ndcg(scores: Array, labels: Array, *, where: Optional[Array] = None,
         topn: Optional[int] = None, gain: str = "exp2") -> Array:
  r"""Normalised DCG per list (Järvelin & Kekäläinen 2002).

  .. math:: \mathrm{NDCG@k} = \mathrm{DCG@k}(s, y) / \mathrm{DCG@k}(y, y)

  The ideal DCG sorts the valid items by gain. Lists whose ideal DCG is 0 (no item with
  positive gain, or no valid item) get 0. ``gain="linear"`` with ``topn=10`` is trec_eval's
  ``ndcg_cut_10`` (given the full judged set); ``gain="exp2"`` matches ``rax.ndcg_metric``.
  Exponential gains are taken relative to the list's top label (see the module docstring):
  labels of 128 and more (whose :math:`2^y` overflows float32) give the exact NDCG, not NaN.

  Returns:
    ``[...]`` per-list NDCG in ``[0, 1]`` for non-negative labels.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.ndcg(scores, labels):.4f}")  # 7.5 / (7 + 1/log2(3))
    0.9828
    >>> print(f"{pj.ndcg(-scores, labels, where=mask, topn=2):.4f}")
    0.1310
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(pj.ndcg(S, Y), float), 4))  # one value per list
    [0.9828 0.4777]
    >>> print(np.round(np.asarray(jax.vmap(lambda s, y: pj.ndcg(s, y, where=mask))(S, Y), float), 4))
    [0.9828 0.5897]
  """
  _check_topn(topn)
  _gain(0.0, gain)
  _validate.check_lists(scores, labels, where=where)
  return _ndcg(scores, labels, where, topn=topn, gain=gain)


@functools.partial(jax.jit, static_argnames=("topn", "gain"))
def _ndcg(scores, labels, where, *, topn, gain):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  g = _gain(labels, gain, where, relative=True)
  g_sorted, w_sorted = _sorted_by_score(scores, g, where)
  actual = _dcg_sorted(g_sorted, w_sorted, topn)
  ig_sorted, iw_sorted = _sorted_by_score(g, g, where)
  ideal = _dcg_sorted(ig_sorted, iw_sorted, topn)
  return _safe_div(actual, ideal)


# ----------------------------------------------------------------------------------------------
# binary metrics


def _binary_setup(scores, labels, where, topn, relevance_threshold):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  rel = (where & (labels > relevance_threshold)).astype(scores.dtype)
  rel_sorted, w_sorted = _sorted_by_score(scores, rel, where)
  cut = _cutoff(rel.shape, topn, scores.dtype) & w_sorted
  pos = _positions(rel.shape, scores.dtype)
  n_rel = jnp.sum(rel, axis=-1)
  return rel_sorted, cut, pos, n_rel, where


def mrr(scores: Array, labels: Array, *, where: Optional[Array] = None,
        topn: Optional[int] = None, relevance_threshold: float = 0.0) -> Array:
  r"""Reciprocal rank of the first relevant item (within the top ``topn``), else 0.

  .. math:: \mathrm{RR@k} = \max_{r \le k} \frac{\mathbb{1}[y_{\pi(r)} > \theta]}{r}

  Equals trec_eval ``recip_rank`` (no cut-off) and ``rax.mrr_metric``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.mrr(-scores, labels):.4f}")  # first relevant item at rank 2
    0.5000
    >>> print(f"{pj.mrr(-scores, labels, where=mask, topn=1):.4f}")
    1.0000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.mrr)(S, Y), float), 4))
    [1.  0.5]
  """
  _check_topn(topn)
  _validate.check_lists(scores, labels, where=where)
  return _mrr(scores, labels, where, relevance_threshold, topn=topn)


@functools.partial(jax.jit, static_argnames=("topn",))
def _mrr(scores, labels, where, relevance_threshold, *, topn):
  rel_sorted, cut, pos, _, _ = _binary_setup(scores, labels, where, topn, relevance_threshold)
  return jnp.max(jnp.where(cut, rel_sorted / pos, 0.0), axis=-1, initial=0.0)


def average_precision(scores: Array, labels: Array, *, where: Optional[Array] = None,
                      topn: Optional[int] = None, relevance_threshold: float = 0.0) -> Array:
  r"""Average precision per list.

  .. math::
     \mathrm{AP@k} = \frac{1}{R} \sum_{r \le k} \mathbb{1}[\mathrm{rel}_{\pi(r)}]\,
     \frac{\#\{\text{relevant in top } r\}}{r}

  where :math:`R` is the number of relevant *valid items in the list* (not capped by ``k``;
  trec_eval's ``map`` when every judged relevant document is in the list; ``rax.ap_metric``).
  Lists with ``R = 0`` get 0.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.average_precision(-scores, labels):.4f}")  # relevant at ranks 2 and 4: (1/2 + 2/4) / 2
    0.5000
    >>> print(f"{pj.average_precision(-scores, labels, where=mask):.4f}")  # (1/1 + 2/3) / 2
    0.8333
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.average_precision)(S, Y), float), 4))
    [0.8333 0.5   ]
  """
  _check_topn(topn)
  _validate.check_lists(scores, labels, where=where)
  return _average_precision(scores, labels, where, relevance_threshold, topn=topn)


@functools.partial(jax.jit, static_argnames=("topn",))
def _average_precision(scores, labels, where, relevance_threshold, *, topn):
  rel_sorted, cut, pos, n_rel, _ = _binary_setup(scores, labels, where, topn,
                                                 relevance_threshold)
  prec = jnp.cumsum(rel_sorted, axis=-1) / pos
  return _safe_div(jnp.sum(jnp.where(cut, rel_sorted * prec, 0.0), axis=-1), n_rel)


def recall(scores: Array, labels: Array, *, where: Optional[Array] = None,
           topn: Optional[int] = None, relevance_threshold: float = 0.0) -> Array:
  r"""Recall@k: relevant items in the top ``k`` / relevant valid items (0 when there are none).

  Matches ``rax.recall_metric``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.recall(-scores, labels, topn=2):.4f}")  # 1 of the 2 relevant items in the top 2
    0.5000
    >>> print(f"{pj.recall(-scores, labels, where=mask, topn=2):.4f}")
    0.5000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(lambda s, y: pj.recall(s, y, topn=2))(S, Y), float), 4))
    [0.5 0.5]
  """
  _check_topn(topn)
  _validate.check_lists(scores, labels, where=where)
  return _recall(scores, labels, where, relevance_threshold, topn=topn)


@functools.partial(jax.jit, static_argnames=("topn",))
def _recall(scores, labels, where, relevance_threshold, *, topn):
  rel_sorted, cut, _, n_rel, _ = _binary_setup(scores, labels, where, topn, relevance_threshold)
  return _safe_div(jnp.sum(jnp.where(cut, rel_sorted, 0.0), axis=-1), n_rel)


def precision(scores: Array, labels: Array, *, where: Optional[Array] = None,
              topn: Optional[int] = None, relevance_threshold: float = 0.0) -> Array:
  r"""Precision@k: relevant items in the top ``k`` / ``min(k, #valid items)``.

  The denominator is the number of items actually ranked in the top ``k`` (Rax's
  ``precision_metric`` convention; trec_eval's ``P_k`` divides by ``k`` and differs on lists
  shorter than ``k``). Lists without valid items get 0.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.precision(-scores, labels, topn=2):.4f}")
    0.5000
    >>> print(f"{pj.precision(-scores, labels, where=mask, topn=2):.4f}")
    0.5000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(lambda s, y: pj.precision(s, y, topn=2))(S, Y), float), 4))
    [0.5 0.5]
  """
  _check_topn(topn)
  _validate.check_lists(scores, labels, where=where)
  return _precision(scores, labels, where, relevance_threshold, topn=topn)


@functools.partial(jax.jit, static_argnames=("topn",))
def _precision(scores, labels, where, relevance_threshold, *, topn):
  rel_sorted, cut, _, _, where = _binary_setup(scores, labels, where, topn, relevance_threshold)
  n_ret = jnp.sum(cut, axis=-1).astype(rel_sorted.dtype)
  return _safe_div(jnp.sum(jnp.where(cut, rel_sorted, 0.0), axis=-1), n_ret)


# ----------------------------------------------------------------------------------------------
# pair metrics


def _pair_counts(scores, labels, where, dtype=None):
  """(concordant, discordant, tied, labelled) counts over pairs with y_i > y_j, per list
  (int32, or cast to ``dtype``)."""
  si, sj = scores[..., :, None], scores[..., None, :]
  labelled = where[..., :, None] & where[..., None, :] & (labels[..., :, None] > labels[..., None, :])
  counts = tuple(jnp.sum(x, axis=(-2, -1), dtype=jnp.int32) for x in (
      labelled & (si > sj), labelled & (si < sj), labelled & (si == sj), labelled))
  return counts if dtype is None else tuple(c.astype(dtype) for c in counts)


def pnr(scores: Array, labels: Array, *, where: Optional[Array] = None) -> Array:
  r"""Positive-negative ratio per list (concordant / discordant labelled pairs).

  Over the pairs of valid items with different labels (``y_i > y_j``), with :math:`C`, :math:`D`,
  :math:`T` the numbers of concordant (``s_i > s_j``), discordant (``s_i < s_j``) and
  score-tied pairs:

  .. math:: \mathrm{PNR} = \frac{C + T/2}{\max(D + T/2,\ 1)}

  * **Ties** count half concordant, half discordant.
  * **Zero (or < 1) discordant mass**: the denominator is clipped at 1, so a perfect ranking
    gets the finite value :math:`C` (as if one pair were discordant) -- never +inf.
  * **No labelled pair** (all labels equal, fewer than two valid items): 0. Use
    :func:`pair_accuracy` or count labelled pairs to exclude such lists when averaging.
  * **Per list vs pooled.** This is one ratio per list; their mean weighs every list the same,
    so short perfect lists (clipped denominators) can dominate. :func:`pnr_pooled` is the ratio
    of the pair counts summed over all lists (every pair weighs the same).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.pnr(scores, labels):.4f}")  # 4 concordant / 1 discordant
    4.0000
    >>> print(f"{pj.pnr(jnp.array([0.0, 1.0, 0.5, 2.0]), labels, where=mask):.4f}")  # 0 concordant / 3 discordant
    0.0000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.pnr)(S, Y), float), 4))
    [4.   0.25]
  """
  _validate.check_lists(scores, labels, where=where)
  return _pnr(scores, labels, where)


@jax.jit
def _pnr(scores, labels, where):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  conc, disc, tied, _ = _pair_counts(scores, labels, where, scores.dtype)
  return (conc + 0.5 * tied) / jnp.maximum(disc + 0.5 * tied, 1.0)


def pnr_counts(scores: Array, labels: Array, *, where: Optional[Array] = None
               ) -> tuple[Array, Array, Array]:
  r"""Concordant, discordant and score-tied labelled pairs per list: ``(C, D, T)``, int32 ``[...]``.

  The counts behind :func:`pnr`, for callers that pool pairs over many lists (see
  :func:`pnr_pooled`). A pair is labelled when both items are valid and ``y_i > y_j``; it is
  concordant when ``s_i > s_j``, discordant when ``s_i < s_j``, tied when ``s_i == s_j``.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> c, d, t = pj.pnr_counts(jnp.array([0.0, 1.0, 0.0, 2.0]), labels)
    >>> print(c, d, t)  # concordant, discordant, score-tied
    0 4 1
    >>> c, d, t = pj.pnr_counts(jnp.array([0.0, 1.0, 0.0, 2.0]), labels, where=mask)
    >>> print(c, d, t)
    0 2 1
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(*jax.vmap(pj.pnr_counts)(S, Y))
    [4 1] [1 4] [0 0]
  """
  _validate.check_lists(scores, labels, where=where)
  return _pnr_counts(scores, labels, where)


@jax.jit
def _pnr_counts(scores, labels, where):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  conc, disc, tied, _ = _pair_counts(scores, labels, where)
  return conc, disc, tied


def pnr_pooled(scores: Array, labels: Array, *, where: Optional[Array] = None) -> Array:
  r"""Pooled positive-negative ratio: concordant over discordant labelled pairs of *all* lists.

  .. math:: \mathrm{PNR}_{\mathrm{pooled}} = rac{\sum_q C_q + 	frac12 \sum_q T_q}
            {\max(\sum_q D_q + 	frac12 \sum_q T_q,\ 1)}

  (sums over every list of the leading axes; ties count half each way; the denominator is
  clipped at 1 as in :func:`pnr`). Every labelled pair weighs the same, so lists with many
  pairs weigh more -- the PNR reported over a test set in the PILE paper's setting. Compare
  :func:`pnr`, one ratio per list, whose mean weighs every list the same. Returns a scalar.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(f"{pj.pnr_pooled(S, Y):.4f}")  # (4 + 1) / (1 + 4) over the 10 pairs
    1.0000
    >>> print(np.round(np.asarray(pj.pnr(S, Y), float), 4))  # per list: 4 / 1 and 1 / 4
    [4.   0.25]
    >>> print(f"{pj.pnr_pooled(S, Y, where=mask):.4f}")  # (2 + 1) / (1 + 2)
    1.0000
  """
  conc, disc, tied = pnr_counts(scores, labels, where=where)
  half = 0.5 * jnp.sum(tied).astype(jnp.float32)
  return (jnp.sum(conc).astype(jnp.float32) + half) / jnp.maximum(
      jnp.sum(disc).astype(jnp.float32) + half, 1.0)


def pair_accuracy(scores: Array, labels: Array, *, where: Optional[Array] = None) -> Array:
  r"""Fraction of labelled pairs (``y_i > y_j``) ordered correctly, ties counting 1/2.

  .. math:: \mathrm{acc} = \frac{C + T/2}{C + D + T}

  Lists with no labelled pair get 0. A monotone transform of PNR
  (:math:`\mathrm{PNR} = \mathrm{acc}/(1-\mathrm{acc})` when no clipping applies).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(f"{pj.metrics.pair_accuracy(scores, labels):.4f}")
    0.8000
    >>> print(f"{pj.metrics.pair_accuracy(jnp.array([0.0, 1.0, 0.5, 2.0]), labels, where=mask):.4f}")
    0.0000
    >>> S, Y = jnp.stack([scores, -scores]), jnp.stack([labels, labels])  # [2 lists, 4 items]
    >>> print(np.round(np.asarray(jax.vmap(pj.metrics.pair_accuracy)(S, Y), float), 4))
    [0.8 0.2]
  """
  _validate.check_lists(scores, labels, where=where)
  return _pair_accuracy(scores, labels, where)


@jax.jit
def _pair_accuracy(scores, labels, where):
  scores, labels, where = _prepare(scores, labels, where, check=False)
  conc, _, tied, total = _pair_counts(scores, labels, where, scores.dtype)
  return _safe_div(conc + 0.5 * tied, total)


@jax.jit
def num_labelled_pairs(labels: Array, *, where: Optional[Array] = None) -> Array:
  """Number of pairs of valid items with ``y_i > y_j`` per list ``[...]`` (int32).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, pile_jax as pj
    >>> scores = jnp.array([2.0, 1.0, 0.5, 0.0])
    >>> labels = jnp.array([3.0, 0.0, 1.0, 0.0])
    >>> mask = jnp.array([True, True, True, False])  # the last item is padding
    >>> print(pj.metrics.num_labelled_pairs(labels), pj.metrics.num_labelled_pairs(labels, where=mask))
    5 3
    >>> print(jax.vmap(pj.metrics.num_labelled_pairs)(jnp.stack([labels, jnp.ones(4)])))
    [5 0]
  """
  labels = jnp.asarray(labels)
  if where is None:
    where = jnp.ones(labels.shape, dtype=bool)
  where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), labels.shape)
  labels = jnp.where(where, labels, 0)
  labelled = where[..., :, None] & where[..., None, :] & (labels[..., :, None] > labels[..., None, :])
  return jnp.sum(labelled, axis=(-2, -1)).astype(jnp.int32)


METRICS: dict[str, Callable[..., Array]] = {
    "ndcg": ndcg,
    "dcg": dcg,
    "mrr": mrr,
    "average_precision": average_precision,
    "map": average_precision,
    "recall": recall,
    "precision": precision,
    "pnr": pnr,
    "pair_accuracy": pair_accuracy,
}


def get_metric(name: str) -> Callable[..., Array]:
  """Metric by name; ``"name@k"`` binds ``topn=k`` (e.g. ``"ndcg@10"``, ``"mrr@10"``)."""
  base, _, k = name.partition("@")
  if base not in METRICS:
    raise ValueError(f"name: unknown metric {name!r}; expected one of {sorted(METRICS)}")
  fn = METRICS[base]
  if k:
    if base in ("pnr", "pair_accuracy"):
      raise ValueError(f"name: metric {base!r} takes no cut-off; got {name!r}")
    try:
      topn = int(k)
    except ValueError:
      raise ValueError(f"name: cut-off must be an integer; got {name!r}") from None
    _check_topn(topn)
    return functools.partial(fn, topn=topn)
  return fn
