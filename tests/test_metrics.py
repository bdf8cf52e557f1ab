"""Tests for pile_jax.metrics: loop references, Rax and trec_eval (pytrec_eval) cross-checks,
tie handling, PNR edge cases, padding and input validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pytrec_eval
import rax

from pile_jax import metrics as M

B, N = 6, 8


def make_case(seed=0):
  rng = np.random.default_rng(seed)
  s = np.round(rng.normal(size=(B, N)), 1)  # rounding creates score ties
  y = rng.integers(0, 4, size=(B, N)).astype(np.float64)
  m = np.ones((B, N), bool)
  m[1, 5:] = False
  y[2] = 0.0  # no relevant item
  m[3] = False
  m[3, 4] = True  # single valid item
  m[4] = False  # fully masked
  m[5, [1, 4, 6]] = False
  s = np.where(m, s, 99.0)  # padded garbage outranks everything if not masked
  y = np.where(m, y, 3.0)
  return s, y, m


# ----------------------------------------------------------------------------------------------
# loop references


def ranked(s, m, b):
  valid = [i for i in range(s.shape[1]) if m[b, i]]
  return sorted(valid, key=lambda i: (-s[b, i], i))  # score desc, ties by index asc


def ref_ndcg(s, y, m, topn, gain):
  g = (lambda v: 2.0 ** v - 1.0) if gain == "exp2" else (lambda v: v)
  out = np.zeros(B)
  for b in range(B):
    order = ranked(s, m, b)
    k = len(order) if topn is None else topn
    dcg = sum(g(y[b, i]) / math.log2(r + 2) for r, i in enumerate(order[:k]))
    ideal = sorted((y[b, i] for i in order), reverse=True)
    idcg = sum(g(v) / math.log2(r + 2) for r, v in enumerate(ideal[:k]))
    out[b] = dcg / idcg if idcg > 0 else 0.0
  return out


def ref_binary(kind, s, y, m, topn):
  out = np.zeros(B)
  for b in range(B):
    order = ranked(s, m, b)
    rel = [y[b, i] > 0 for i in order]
    k = len(order) if topn is None else topn
    top = rel[:k]
    n_rel = sum(rel)
    if kind == "mrr":
      out[b] = next((1.0 / (r + 1) for r, x in enumerate(top) if x), 0.0)
    elif kind == "ap":
      hits, acc = 0, 0.0
      for r, x in enumerate(top):
        if x:
          hits += 1
          acc += hits / (r + 1)
      out[b] = acc / n_rel if n_rel else 0.0
    elif kind == "recall":
      out[b] = sum(top) / n_rel if n_rel else 0.0
    elif kind == "precision":
      out[b] = sum(top) / len(top) if top else 0.0
  return out


def ref_pnr(s, y, m):
  pnr, acc = np.zeros(B), np.zeros(B)
  for b in range(B):
    c = d = t = 0
    for i in range(N):
      for j in range(N):
        if m[b, i] and m[b, j] and y[b, i] > y[b, j]:
          if s[b, i] > s[b, j]:
            c += 1
          elif s[b, i] < s[b, j]:
            d += 1
          else:
            t += 1
    pnr[b] = (c + 0.5 * t) / max(d + 0.5 * t, 1.0)
    acc[b] = (c + 0.5 * t) / (c + d + t) if (c + d + t) else 0.0
  return pnr, acc


@pytest.mark.parametrize("topn", [None, 3])
def test_metrics_match_loop_references(topn):
  s, y, m = make_case(0)
  for gain in ("exp2", "linear"):
    np.testing.assert_allclose(M.ndcg(s, y, where=m, topn=topn, gain=gain),
                               ref_ndcg(s, y, m, topn, gain), rtol=1e-5, atol=1e-7)
  for kind, fn in [("mrr", M.mrr), ("ap", M.average_precision), ("recall", M.recall),
                   ("precision", M.precision)]:
    got = fn(s, y, where=m, topn=topn)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, ref_binary(kind, s, y, m, topn), rtol=1e-5, atol=1e-7,
                               err_msg=kind)
  p, a = ref_pnr(s, y, m)
  np.testing.assert_allclose(M.pnr(s, y, where=m), p, rtol=1e-6)
  np.testing.assert_allclose(M.pair_accuracy(s, y, where=m), a, rtol=1e-6)


def test_rax_crosscheck_metrics():
  s, y, m = make_case(0)  # same shapes/dtypes as above: reuses the compiled metrics
  pairs = [(M.ndcg, rax.ndcg_metric), (M.mrr, rax.mrr_metric),
           (M.average_precision, rax.ap_metric), (M.recall, rax.recall_metric),
           (M.precision, rax.precision_metric)]
  S, Y = jnp.asarray(s, jnp.float32), jnp.asarray(y, jnp.float32)

  @jax.jit
  def rax_all(S, Y):
    return [[f(S, Y, where=m, topn=k, reduce_fn=None) for _, f in pairs] for k in (None, 3)]

  theirs = rax_all(S, Y)
  for ki, k in enumerate((None, 3)):
    for (mine, _), th in zip(pairs, theirs[ki]):
      got = np.asarray(mine(S, Y, where=m, topn=k))
      want = np.where(m.any(-1), np.asarray(th), 0.0)
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{mine.__name__}@{k}")


def test_trec_eval_equality():
  """ndcg(gain='linear')@10 == ndcg_cut_10, average_precision == map, mrr == recip_rank."""
  rng = np.random.default_rng(2)
  nq, n = 12, 15
  y = rng.integers(0, 4, size=(nq, n)) * (rng.random((nq, n)) < 0.5)
  y[0] = 0  # a query without relevant documents
  s = rng.permutation(nq * n).reshape(nq, n).astype(np.float64) / 7.0  # tie-free scores
  lengths = rng.integers(5, n + 1, size=nq)
  m = np.arange(n)[None, :] < lengths[:, None]
  qrels, run = {}, {}
  for q in range(nq):
    qrels[f"q{q}"] = {f"d{i}": int(y[q, i]) for i in range(lengths[q])}
    run[f"q{q}"] = {f"d{i}": float(s[q, i]) for i in range(lengths[q])}
  ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "map", "recip_rank"})
  res = ev.evaluate(run)
  te = {k: np.array([res[f"q{q}"][k] for q in range(nq)]) for k in ("ndcg_cut_10", "map", "recip_rank")}
  sp = np.where(m, s, np.nan)  # padding holds NaN: must be ignored
  np.testing.assert_allclose(M.ndcg(sp, y, where=m, topn=10, gain="linear"), te["ndcg_cut_10"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(M.average_precision(sp, y, where=m), te["map"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(M.mrr(sp, y, where=m), te["recip_rank"], rtol=1e-5, atol=1e-6)


def test_tie_breaking_is_by_index():
  s = np.array([[1.0, 2.0, 2.0, 0.0]])
  np.testing.assert_array_equal(M.ranks(s), [[3, 1, 2, 4]])
  # tied top items: the earlier index wins rank 1
  assert float(M.mrr(s, np.array([[0, 1, 0, 0]]))[0]) == 1.0
  assert float(M.mrr(s, np.array([[0, 0, 1, 0]]))[0]) == 0.5
  np.testing.assert_array_equal(M.ranks(s, where=np.array([[True, False, True, True]])),
                                [[2, 4, 1, 3]])


def test_pnr_edge_cases():
  y = np.array([[2.0, 1.0, 0.0]])
  # perfect order: 3 concordant, 0 discordant -> denominator clipped at 1 -> PNR = 3
  assert float(M.pnr(np.array([[3.0, 2.0, 1.0]]), y)[0]) == 3.0
  assert float(M.pair_accuracy(np.array([[3.0, 2.0, 1.0]]), y)[0]) == 1.0
  # fully reversed: 0 / 3
  assert float(M.pnr(np.array([[1.0, 2.0, 3.0]]), y)[0]) == 0.0
  # all scores tied: 3 ties count half each side -> 1.5 / 1.5 = 1
  assert float(M.pnr(np.zeros((1, 3)), y)[0]) == 1.0
  assert float(M.pair_accuracy(np.zeros((1, 3)), y)[0]) == 0.5
  # one tie, two concordant: (2 + .5) / max(.5, 1) = 2.5
  assert float(M.pnr(np.array([[3.0, 1.0, 1.0]]), y)[0]) == 2.5
  # no labelled pairs (equal labels, single item, fully masked) -> 0
  assert float(M.pnr(np.array([[3.0, 1.0, 2.0]]), np.ones((1, 3)))[0]) == 0.0
  assert float(M.pnr(np.array([[3.0, 1.0, 2.0]]), y, where=np.array([[True, False, False]]))[0]) == 0.0
  assert float(M.pnr(np.array([[3.0, 1.0, 2.0]]), y, where=np.zeros((1, 3), bool))[0]) == 0.0
  np.testing.assert_array_equal(M.num_labelled_pairs(np.array([[2, 1, 1, 0]]),
                                                     where=np.array([[1, 1, 1, 0]], bool)), [2])


def test_empty_and_degenerate_lists_are_zero_not_nan():
  s, y, m = make_case(3)
  for fn in (M.ndcg, M.mrr, M.average_precision, M.recall, M.precision, M.pnr, M.pair_accuracy):
    v = np.asarray(fn(s, y, where=m))
    assert np.all(np.isfinite(v))
    assert v[4] == 0.0  # fully masked
  for fn in (M.ndcg, M.mrr, M.average_precision, M.recall):
    assert float(fn(s, y, where=m)[2]) == 0.0  # no relevant item


def test_padding_is_ignored():
  s, y, m = make_case(4)
  s2 = np.where(m, s, -np.inf)
  y2 = np.where(m, y, 0.0)
  for fn in (M.ndcg, M.mrr, M.average_precision, M.recall, M.precision, M.pnr):
    np.testing.assert_array_equal(fn(s, y, where=m), fn(s2, y2, where=m))


def test_jit_vmap_and_registry():
  s, y, m = make_case(5)
  f = jax.jit(lambda s, y, m: M.get_metric("ndcg@5")(s, y, where=m))
  np.testing.assert_allclose(f(s, y, m), M.ndcg(s, y, where=m, topn=5), rtol=1e-6)
  v = jax.vmap(lambda s, y, m: M.average_precision(s, y, where=m))(s, y, m)
  np.testing.assert_allclose(v, M.average_precision(s, y, where=m), rtol=1e-6)
  assert M.METRICS["map"] is M.average_precision
  for bad in ("foo", "pnr@3", "ndcg@x", "ndcg@0"):
    with pytest.raises(ValueError, match="name|topn"):
      M.get_metric(bad)


def test_bad_inputs():
  s = np.zeros((2, 4))
  with pytest.raises(ValueError, match="^labels: "):
    M.ndcg(s, np.zeros((2, 5)))
  bad = s.copy()
  bad[1, 1] = np.nan
  with pytest.raises(ValueError, match="^scores: "):
    M.mrr(bad, s)
  with pytest.raises(ValueError, match="^labels: "):
    M.pnr(s, bad)
  with pytest.raises(ValueError, match="^where: "):
    M.recall(s, s, where=np.ones((2, 4), np.int32))
  with pytest.raises(ValueError, match="^topn: "):
    M.precision(s, s, topn=0)
  with pytest.raises(ValueError, match="^gain: "):
    M.ndcg(s, s, gain="log")


def test_pnr_counts_and_pooled_against_float64_loop():
  """pnr_counts gives the per-list (C, D, T) of the loop; pnr_pooled pools them over every
  list (ties half each way), unlike the mean of the per-list pnr."""
  s, y, m = make_case(3)
  C, D, T = np.zeros(B), np.zeros(B), np.zeros(B)
  for b in range(B):
    for i in range(N):
      for j in range(N):
        if m[b, i] and m[b, j] and y[b, i] > y[b, j]:
          C[b] += s[b, i] > s[b, j]
          D[b] += s[b, i] < s[b, j]
          T[b] += s[b, i] == s[b, j]
  assert T.sum() > 0  # the case has score ties
  got = M.pnr_counts(s, y, where=m)
  for g, want in zip(got, (C, D, T)):
    assert g.dtype == jnp.int32
    np.testing.assert_array_equal(g, want)
  pooled = (C.sum() + T.sum() / 2) / max(D.sum() + T.sum() / 2, 1.0)
  assert float(M.pnr_pooled(s, y, where=m)) == pytest.approx(pooled, rel=1e-6)
  assert float(jax.jit(M.pnr_pooled)(s, y, where=m)) == pytest.approx(pooled, rel=1e-6)
  assert float(M.pnr_pooled(s[:1], y[:1], where=m[:1])) == pytest.approx(
      float(M.pnr(s[:1], y[:1], where=m[:1])[0]), rel=1e-6)  # one list: the same number


def test_ndcg_exp2_gain_labels_of_128_and_more():
  """Labels >= 128 (2^y overflows float32): ndcg and the LambdaRank weights use gains relative to
  the list's top label and equal float64 NumPy; dcg (absolute gains) raises a clear error."""
  from pile_jax import losses as L
  s = np.array([[1.0, 3.0, 2.0, 0.0, 5.0, 4.0], [0.5, 0.1, 0.3, 0.2, 0.0, 0.4]])
  y = np.array([[200.0, 150.0, 0.0, 130.0, 3.0, 199.0], [1.0, 0.0, 2.0, 0.0, 3.0, 1.0]])
  m = np.ones_like(s, bool)
  for topn in (None, 2):
    want = []
    for b in range(2):
      order = sorted(range(6), key=lambda i: (-s[b, i], i))
      k = 6 if topn is None else topn
      g = 2.0 ** y[b] - 1.0
      dcg = sum(g[i] / math.log2(r + 2) for r, i in enumerate(order[:k]))
      idcg = sum(v / math.log2(r + 2) for r, v in enumerate(sorted(g, reverse=True)[:k]))
      want.append(dcg / idcg)
    got = np.asarray(M.ndcg(s.astype(np.float32), y.astype(np.float32), topn=topn))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5)
  lw = np.asarray(L.ndcg_lambdaweight(s.astype(np.float32), y.astype(np.float32)))
  assert np.all(np.isfinite(lw))
  g = 2.0 ** y[0] - 1.0
  rank = {i: r + 1 for r, i in enumerate(sorted(range(6), key=lambda i: (-s[0, i], i)))}
  idcg = sum(v / math.log2(r + 2) for r, v in enumerate(sorted(g, reverse=True)))
  want_lw = np.array([[abs(g[i] - g[j]) * abs(1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
                       / idcg for j in range(6)] for i in range(6)])
  np.testing.assert_allclose(lw[0], want_lw, rtol=1e-5, atol=1e-12)
  with pytest.raises(ValueError, match="^labels: the exp2 gain .* labels >= 128"):
    M.dcg(s, y)


def test_bf16_inputs_computed_in_float32():
  """bf16 scores of 300 items: metrics compute and return float32 (ranks beyond 256 exact),
  equal to float64 NumPy on the same bf16-rounded values."""
  rng = np.random.default_rng(7)
  n = 300
  s16 = jnp.asarray(rng.permutation(n)[None] * 1.0, jnp.bfloat16)  # bf16 rounding makes ties
  y16 = jnp.asarray(rng.integers(0, 3, size=(1, n)), jnp.bfloat16)
  s, y = np.asarray(s16, np.float64)[0], np.asarray(y16, np.float64)[0]
  order = sorted(range(n), key=lambda i: (-s[i], i))
  g = 2.0 ** y - 1.0
  want = sum(g[i] / math.log2(r + 2) for r, i in enumerate(order)) / sum(
      v / math.log2(r + 2) for r, v in enumerate(sorted(g, reverse=True)))
  got = M.ndcg(s16, y16)
  assert got.dtype == jnp.float32 and float(got[0]) == pytest.approx(want, rel=1e-5)
  assert M.pnr(s16, y16).dtype == jnp.float32
  assert M.pnr_pooled(s16, y16).dtype == jnp.float32
