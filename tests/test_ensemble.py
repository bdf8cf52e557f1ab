"""Tests for pile_jax.ensemble: PILE (four variants) against a plain-NumPy loop implementation
of the spec (papers/pile.md), its properties, the baselines, the report, and jit/vmap/pmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pile_jax import ensemble as E
from pile_jax import metrics as M

T, B, N = 3, 5, 7


def make_case(seed=0, t=T, garbage=True):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, size=(B, N)).astype(np.float64)
  s = 0.5 * y[None] + rng.normal(0, 1.5, size=(t, B, N))
  m = np.ones((B, N), bool)
  m[1, 5:] = False
  m[2, [0, 3]] = False
  y[3] = 2.0  # no labelled pair
  m[4] = False
  m[4, 2] = True  # single valid item
  if garbage:
    s = np.where(m[None], s, 1e3)
    y = np.where(m, y, 9.0)
  return s, y, m


# ----------------------------------------------------------------------------------------------
# plain-NumPy loop implementation of the spec (one list at a time)


def _ell(loss, d):
  if loss == "logistic":
    return math.log1p(math.exp(-d)) if d > -30 else -d
  if loss == "hinge":
    return max(0.0, 1.0 - d)
  return 1.0 if d <= 0 else 0.0


def ref_pile_list(s, y, m, variant, K=10, eta=0.5, tau=1.0, eps=0.0, lam=1.0, gamma=1.0,
                  loss="logistic", lm=None):
  M_, n = s.shape
  idx = [i for i in range(n) if m[i]]
  paired = [i for i in idx if lm is None or lm[i]]
  P = [(i, j) for i in paired for j in paired if y[i] > y[j]]
  z = {i: sum(s[k, i] for k in range(M_)) / M_ for i in idx}
  zmean = dict(z)
  if variant == "consensus":
    info = {}
    for (i, j) in P:
      agree = [k for k in range(M_) if s[k, i] > s[k, j]]
      if agree:
        info[(i, j)] = (sum(s[k, i] for k in agree) / len(agree),
                        sum(s[k, j] for k in agree) / len(agree))
    for _ in range(K):
      V = [(i, j) for (i, j) in info if z[i] - z[j] <= eps]
      new = {}
      for i in idx:
        r, c = 0.0, 0
        for (a, b) in V:
          if a == i:
            r += info[(a, b)][0] - z[i]
            c += 1
          if b == i:
            r += info[(a, b)][1] - z[i]
            c += 1
        new[i] = z[i] + eta * r / max(c, 1)
      z = new
  elif variant == "responsibility":
    for _ in range(K):
      new = {}
      for i in idx:
        partners = [(a, b) for (a, b) in P if i in (a, b)]
        if not partners:
          new[i] = z[i]
          continue
        Lk = []
        for k in range(M_):
          tot = 0.0
          for (a, b) in partners:
            tot += _ell(loss, s[k, i] - z[b]) if a == i else _ell(loss, z[a] - s[k, i])
          Lk.append(tot)
        logits = [-v / tau for v in Lk]
        mx = max(logits)
        ws = [math.exp(v - mx) for v in logits]
        target = sum(w * s[k, i] for k, w in enumerate(ws)) / sum(ws)
        new[i] = (1 - eta) * z[i] + eta * target
      z = new
  else:
    step = 1.0 / (2.0 + lam * (max(len(idx), 1) - 1) / (2 * tau))
    for _ in range(K):
      grad = {i: 2.0 * (z[i] - zmean[i]) for i in idx}
      for (i, j) in P:
        x = (z[i] - z[j] - gamma) / tau
        g = 1.0 / (1.0 + math.exp(x)) if x < 700 else 0.0  # sigmoid(-(d - gamma)/tau)
        grad[i] -= lam * g
        grad[j] += lam * g
      z = {i: z[i] - step * grad[i] for i in idx}
  out = np.zeros(n)
  for i in idx:
    out[i] = z[i]
  return out


def ref_pile(s, y, m, variant, lm=None, **kw):
  return np.stack([ref_pile_list(s[:, b], y[b], m[b], variant, lm=None if lm is None else lm[b], **kw)
                   for b in range(s.shape[1])])


VARIANT_OPTS = [
    ("consensus", {}),
    ("consensus", {"damping": 1.0, "eps": 0.3, "num_iters": 7}),
    ("responsibility", {}),
    ("responsibility", {"loss": "hinge", "temperature": 0.5}),
    ("responsibility", {"loss": "zero_one", "temperature": 2.0}),
    ("regularised", {}),
    ("regularised", {"lam": 0.3, "gamma": 0.0, "temperature": 0.5}),
]

_REF_KW = {"damping": "eta", "temperature": "tau", "num_iters": "K"}
#: The variants that start from the teachers' mean (K = 0 is the mean, teacher-permutation
#: invariant); "sequential" starts from the best teacher and has its own tests at the end.
MEAN_START = ("consensus", "responsibility", "regularised")


@pytest.mark.parametrize("variant,opts", VARIANT_OPTS)
def test_pile_matches_numpy_loop_reference(variant, opts):
  s, y, m = make_case(1)
  with jax.enable_x64(True):
    got = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, variant=variant, **opts))
  want = ref_pile(s, y, m, variant, **{_REF_KW.get(k, k): v for k, v in opts.items()})
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
  # float32 default agrees to float32 precision
  got32 = np.asarray(E.pile(s.astype(np.float32), y, where=m, variant=variant, **opts))
  assert got32.dtype == np.float32
  np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", MEAN_START)
def test_label_where_keeps_items_out_of_labelled_pairs(variant):
  """label_where (e.g. unjudged items under "ignore") removes items from P only: they are still
  ensembled, and the result is the loop reference with pairs over label_where items."""
  s, y, m = make_case(2)
  lm = np.random.default_rng(5).random(m.shape) < 0.6
  with jax.enable_x64(True):
    got = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, label_where=lm, variant=variant))
    full = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, variant=variant))
  np.testing.assert_allclose(got, ref_pile(s, y, m, variant, lm=lm), rtol=1e-9, atol=1e-9)
  assert not np.allclose(got, full)      # the mask matters on this case
  np.testing.assert_allclose(got[~m], 0.0)
  # best_teacher_per_list: PNR over label_where items only
  bt = np.asarray(E.best_teacher_per_list(s, y, where=m, label_where=lm))
  from pile_jax import metrics as Mx
  pnr = np.asarray(Mx.pnr(s, np.broadcast_to(y, s.shape), where=np.broadcast_to(m & lm, s.shape)))
  want = np.where(m, s[np.argmax(pnr, axis=0), np.arange(s.shape[1])], 0.0)
  np.testing.assert_allclose(bt, want, rtol=1e-6)
  with pytest.raises(ValueError, match="label_where"):
    E.pile(s, y, where=m, label_where=np.ones((3, 3), bool))


# ----------------------------------------------------------------------------------------------
# properties


@pytest.mark.parametrize("variant", MEAN_START)
def test_k0_is_mean_and_m1_and_padding(variant):
  s, y, m = make_case(2)
  mean = np.where(m, s.mean(0), 0.0)
  np.testing.assert_allclose(E.pile(s, y, where=m, variant=variant, num_iters=0), mean,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(E.mean(s, where=m), mean, rtol=1e-6, atol=1e-6)
  if variant != "regularised":  # M = 1 returns the teacher
    np.testing.assert_allclose(E.pile(s[:1], y, where=m, variant=variant),
                               np.where(m, s[0], 0.0), rtol=1e-6, atol=1e-6)
  else:  # lam = 0 returns the mean
    np.testing.assert_allclose(E.pile(s, y, where=m, variant=variant, lam=0.0), mean,
                               rtol=1e-6, atol=1e-6)
  # padding: garbage (even NaN) in padded slots changes nothing; padded outputs are 0
  z = np.asarray(E.pile(s, y, where=m, variant=variant))
  s2 = np.where(m[None], s, np.nan)
  y2 = np.where(m, y, -5.0)
  np.testing.assert_array_equal(E.pile(s2, y2, where=m, variant=variant), z)
  assert np.all(z[~m] == 0.0) and np.all(np.isfinite(z))
  # appending padded items to the list changes nothing
  pad = 3
  s3 = np.concatenate([s, np.full((T, B, pad), 7.0)], -1)
  y3 = np.concatenate([y, np.full((B, pad), 4.0)], -1)
  m3 = np.concatenate([m, np.zeros((B, pad), bool)], -1)
  np.testing.assert_allclose(np.asarray(E.pile(s3, y3, where=m3, variant=variant))[..., :N], z,
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", MEAN_START)
def test_permutation_equivariance_and_teacher_invariance(variant):
  s, y, m = make_case(3)
  z = np.asarray(E.pile(s, y, where=m, variant=variant))
  perm = np.random.default_rng(0).permutation(N)
  zp = np.asarray(E.pile(s[..., perm], y[:, perm], where=m[:, perm], variant=variant))
  np.testing.assert_allclose(zp, z[:, perm], rtol=1e-5, atol=1e-5)
  zt = np.asarray(E.pile(s[::-1], y, where=m, variant=variant))
  np.testing.assert_allclose(zt, z, rtol=1e-5, atol=1e-5)


def test_convex_range_and_label_consistent_teachers():
  s, y, m = make_case(4)
  for variant, opts in [("consensus", {}), ("consensus", {"damping": 1.0}), ("responsibility", {})]:
    z = np.asarray(E.pile(s, y, where=m, variant=variant, **opts))
    lo, hi = s.min(0), s.max(0)
    assert np.all((z >= lo - 1e-5) | ~m) and np.all((z <= hi + 1e-5) | ~m), variant
  # teachers that all order every labelled pair correctly: the mean violates nothing -> mean
  rng = np.random.default_rng(5)
  y1 = rng.permutation(N).astype(float)[None].repeat(B, 0)
  s1 = 2.0 * y1[None] + rng.normal(0, 0.1, size=(T, B, N))
  np.testing.assert_allclose(E.pile(s1, y1), s1.mean(0), rtol=1e-6)


def test_contradicting_pair_is_repaired():
  # item 0 is more relevant; teacher 0 agrees strongly, teachers 1-2 disagree: the mean is wrong
  s = np.array([[[2.0, 0.0]], [[0.0, 1.5]], [[0.0, 1.5]]])
  y = np.array([[1.0, 0.0]])
  mean = s.mean(0)
  assert mean[0, 0] < mean[0, 1]
  d = E.pile_diagnostics(s, y, num_iters=20)
  z = np.asarray(d["ensemble"])
  assert z[0, 0] > z[0, 1]  # repaired
  assert int(d["violated_before"][0]) == 1 and int(d["violated_after"][0]) == 0
  assert int(d["unfixable_pairs"][0]) == 0 and int(d["labelled_pairs"][0]) == 1
  np.testing.assert_allclose(d["teacher_pair_accuracy"][:, 0], [1.0, 0.0, 0.0])
  assert float(d["mean_pair_accuracy"][0]) == 0.0 and float(d["ensemble_pair_accuracy"][0]) == 1.0
  # a pair no teacher orders correctly is left alone (n_ij = 0)
  s_bad = np.array([[[0.0, 1.0]], [[0.0, 2.0]]])
  np.testing.assert_allclose(E.pile(s_bad, y), s_bad.mean(0))
  assert int(E.pile_diagnostics(s_bad, y)["unfixable_pairs"][0]) == 1


def test_diagnostics_match_loops():
  s, y, m = make_case(6)
  d = E.pile_diagnostics(s, y, where=m)
  z0 = s.mean(0)
  z = np.asarray(d["ensemble"])
  assert d["teacher_pair_accuracy"].shape == (T, B)
  for b in range(B):
    idx = [i for i in range(N) if m[b, i]]
    P = [(i, j) for i in idx for j in idx if y[b, i] > y[b, j]]
    fix = [(i, j) for (i, j) in P if any(s[k, b, i] > s[k, b, j] for k in range(T))]
    assert int(d["labelled_pairs"][b]) == len(P)
    assert int(d["unfixable_pairs"][b]) == len(P) - len(fix)
    assert int(d["violated_before"][b]) == sum(z0[b, i] - z0[b, j] <= 0 for i, j in fix)
    assert int(d["violated_after"][b]) == sum(z[b, i] - z[b, j] <= 0 for i, j in fix)
    for k in range(T):
      acc = sum(s[k, b, i] > s[k, b, j] for i, j in P) / max(len(P), 1)
      assert abs(float(d["teacher_pair_accuracy"][k, b]) - acc) < 1e-6


def synthetic(num_queries=500, teachers=4, n=12, seed=0):
  """The spec's generator: labels 0-4, s = 0.5 y + N(0, 1.5^2)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 5, size=(num_queries, n)).astype(np.float32)
  s = (0.5 * y[None] + rng.normal(0, 1.5, size=(teachers, num_queries, n))).astype(np.float32)
  return s, y


def test_default_beats_mean_on_synthetic_generator():
  s, y = synthetic()
  rep = E.teacher_report(s, y, ensembles=("mean", "pile"))
  vs = rep["ensembles"]["pile"]["vs_mean"]
  assert rep["num_evaluated_lists"] == 500
  assert vs["better"] >= 450 and vs["worse"] <= 25, vs
  assert rep["ensembles"]["pile"]["pnr"] > rep["ensembles"]["mean"]["pnr"]
  assert rep["ensembles"]["pile"]["ndcg"] > rep["ensembles"]["mean"]["ndcg"]
  for name in rep["teachers"]:
    assert rep["ensembles"]["mean"]["pair_accuracy"] > rep["teachers"][name]["pair_accuracy"]


def test_eager_jit_vmap_pmap_agree():
  s, y = synthetic(num_queries=8, teachers=3, n=6, seed=1)
  m = np.ones(y.shape, bool)
  m[1, 4:] = False

  def f(t, yy, mm):  # all three variants at once: one compilation per transformation
    return jnp.stack([E.pile(t, yy, where=mm, variant=v) for v in E.PILE_VARIANTS])

  eager = np.stack([np.asarray(E.pile(s, y, where=m, variant=v)) for v in E.PILE_VARIANTS])
  np.testing.assert_allclose(jax.jit(f)(s, y, m), eager, rtol=1e-5, atol=1e-6)
  per_query = jax.vmap(f, in_axes=(1, 0, 0), out_axes=1)(s, y, m)  # one list per call
  np.testing.assert_allclose(per_query, eager, rtol=1e-5, atol=1e-6)
  if jax.device_count() < 4:
    pytest.skip("pmap part needs 4 devices (tests/conftest.py sets XLA_FLAGS)")
  out = jax.pmap(f, in_axes=(1, 0, 0))(s.reshape(3, 4, 2, 6), y.reshape(4, 2, 6), m.reshape(4, 2, 6))
  out = np.moveaxis(np.asarray(out), 0, 1).reshape(len(E.PILE_VARIANTS), 8, 6)  # [dev, V, 2, n] -> [V, 8, n]
  np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# baselines


def test_baselines_match_loops():
  s, y, m = make_case(7, garbage=False)
  s[0, 0, 1] = s[0, 0, 2]  # a tied pair for rank_average
  w = np.array([1.0, 2.0, 5.0])
  z_w = np.asarray(E.weighted_mean(s, where=m, weights=w))
  z_max = np.asarray(E.ensemble("max", s, where=m))
  z_z = np.asarray(E.zscore_mean(s, where=m))
  z_r = np.asarray(E.rank_average(s, where=m))
  z_b = np.asarray(E.best_teacher_per_list(s, y, where=m))
  for b in range(B):
    idx = [i for i in range(N) if m[b, i]]
    nv = len(idx)
    pnrs = []
    for k in range(T):
      c = d = t = 0
      for i in idx:
        for j in idx:
          if y[b, i] > y[b, j]:
            c += s[k, b, i] > s[k, b, j]
            d += s[k, b, i] < s[k, b, j]
            t += s[k, b, i] == s[k, b, j]
      pnrs.append((c + t / 2) / max(d + t / 2, 1))
    best = int(np.argmax(pnrs))  # first maximum
    for i in range(N):
      if not m[b, i]:
        for z in (z_w, z_max, z_z, z_r, z_b):
          assert z[b, i] == 0.0
        continue
      assert abs(z_w[b, i] - sum(w[k] * s[k, b, i] for k in range(T)) / w.sum()) < 1e-5
      assert abs(z_max[b, i] - max(s[k, b, i] for k in range(T))) < 1e-6
      zs, rs = 0.0, 0.0
      for k in range(T):
        vals = [s[k, b, j] for j in idx]
        mu = sum(vals) / nv
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / nv) or 1.0
        zs += (s[k, b, i] - mu) / sd / T
        higher = sum(s[k, b, j] > s[k, b, i] for j in idx)
        tied = sum(s[k, b, j] == s[k, b, i] for j in idx) - 1
        rank = 1 + higher + 0.5 * tied
        rs += (nv - rank) / max(nv - 1, 1) / T
      assert abs(z_z[b, i] - zs) < 1e-5
      assert abs(z_r[b, i] - rs) < 1e-5
      assert abs(z_b[b, i] - s[best, b, i]) < 1e-6
  # list 3 has no labelled pair: every PNR is 0 -> teacher 0
  np.testing.assert_allclose(z_b[3], np.where(m[3], s[0, 3], 0.0), rtol=1e-6)


def test_registry_and_dispatcher():
  s, y, m = make_case(8)
  for name in E.ENSEMBLES:
    opts = {"weights": [1.0, 1.0, 1.0]} if name == "weighted_mean" else {}
    z = np.asarray(E.ensemble(name, s, y, where=m, **opts))
    assert z.shape == (B, N) and np.all(np.isfinite(z)) and np.all(z[~m] == 0.0), name
  np.testing.assert_allclose(E.ensemble("weighted_mean", s, where=m, weights=[1, 1, 1]),
                             E.mean(s, where=m), rtol=1e-6)
  with pytest.raises(ValueError, match="^name: "):
    E.ensemble("median", s)
  with pytest.raises(ValueError, match="^labels: "):
    E.ensemble("pile", s)


def test_teacher_report_and_format():
  s, y, m = make_case(9)
  rep = E.teacher_report(s, y, where=m, teacher_names=["a", "b", "c"],
                         ensembles=("mean", "pile", ("pile_reg", "pile", {"variant": "regularised"})),
                         topn=5)
  assert list(rep["teachers"]) == ["a", "b", "c"]
  assert list(rep["ensembles"]) == ["mean", "pile", "pile_reg"]
  # lists 3 (equal labels) and 4 (single item) have no labelled pair
  assert rep["num_lists"] == B and rep["num_evaluated_lists"] == 3
  ev = np.array([True, True, True, False, False])
  want = np.asarray(M.pnr(s[1], y, where=m))[ev].mean()
  assert abs(rep["teachers"]["b"]["pnr"] - want) < 1e-6
  want = np.asarray(M.ndcg(s[1], y, where=m, topn=5))[ev].mean()
  assert abs(rep["teachers"]["b"]["ndcg"] - want) < 1e-6
  assert rep["ensembles"]["mean"]["vs_mean"] == {"better": 0, "worse": 0, "tied": 3}
  assert rep["teachers"]["a"]["per_list"]["pnr"].shape == (B,)
  text = E.format_teacher_report(rep)
  assert "| name | kind | PNR (mean of lists) | PNR (pooled pairs) |" in text and "NDCG@5" in text
  conc = disc = 0.0  # pooled PNR of teacher b: float64 loop over all labelled pairs
  for b in range(B):
    for i in range(N):
      for j in range(N):
        if m[b, i] and m[b, j] and y[b, i] > y[b, j]:
          conc += 1.0 if s[1, b, i] > s[1, b, j] else (0.5 if s[1, b, i] == s[1, b, j] else 0.0)
          disc += 1.0 if s[1, b, i] < s[1, b, j] else (0.5 if s[1, b, i] == s[1, b, j] else 0.0)
  assert rep["teachers"]["b"]["pnr_pooled"] == pytest.approx(conc / disc, rel=1e-6)
  assert "| pile_reg | ensemble |" in text and "| c | teacher |" in text


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs():
  s, y, m = make_case(10)
  with pytest.raises(ValueError, match=r"^teacher_scores: expected shape \[T, \.\.\., n\].*got \(5, 3, 7\).*teacher axis"):
    E.pile(np.swapaxes(s, 0, 1), y)  # [B, T, n] instead of [T, B, n]
  with pytest.raises(ValueError, match="^teacher_scores: "):
    E.pile(s, y[:, :4])
  with pytest.raises(ValueError, match="^teacher_scores: "):
    E.mean(s[0, 0])
  bad = s.copy()
  bad[1, 0, 0] = np.inf
  with pytest.raises(ValueError, match="^teacher_scores: .*Inf"):
    E.pile(bad, y)
  bad_y = y.copy()
  bad_y[0, 0] = np.nan
  with pytest.raises(ValueError, match="^labels: .*NaN"):
    E.pile(s, bad_y)
  with pytest.raises(ValueError, match="^where: "):
    E.pile(s, y, where=m.astype(np.float32))
  with pytest.raises(ValueError, match="^variant: "):
    E.pile(s, y, variant="magic")
  with pytest.raises(ValueError, match="^damping: "):
    E.pile(s, y, damping=1.5)
  with pytest.raises(ValueError, match="^num_iters: "):
    E.pile(s, y, num_iters=-1)
  with pytest.raises(ValueError, match="^weights: "):
    E.weighted_mean(s, weights=[1.0, 2.0])
  with pytest.raises(ValueError, match="^teacher_names: "):
    E.teacher_report(s, y, teacher_names=["a"])


@pytest.mark.parametrize("variant,opts", VARIANT_OPTS[::2] + VARIANT_OPTS[-1:])
def test_pile_huge_finite_logits_match_float64_reference(variant, opts):
  """Logits up to ±3e38 (sums and differences overflow float32): every variant equals the
  float64 loop reference, stays finite, and the consensus output stays within the teachers'
  range."""
  s = np.array([[[3e38, -3e38, 1.0, 0.0, 2e38]], [[3e38, 2e38, -3e38, 0.0, -1e38]],
                [[-2e38, 1e37, 5.0, 3e38, 0.0]]], np.float32)
  y = np.array([[2.0, 1.0, 1.0, 0.0, 3.0]])
  m = np.ones((1, 5), bool)
  got = np.asarray(E.pile(s, y, variant=variant, **opts))
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  ref = ref_pile(s.astype(np.float64), y, m, variant, **{_REF_KW.get(k, k): v for k, v in opts.items()})
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * 3e38)
  if variant == "consensus":
    assert np.all(got >= s.min(0) * (1 + 1e-6)) and np.all(got <= s.max(0) * (1 + 1e-6))
  # a list of ordinary logits in the same batch is untouched by its neighbour's scale
  small = np.stack([s[:, 0], s[:, 0] * np.float32(1e-37)], axis=1)
  out = np.asarray(E.pile(small, np.concatenate([y, y]), variant=variant, **opts))
  ref_small = ref_pile(small.astype(np.float64)[:, 1:], y, m, variant,
                       **{_REF_KW.get(k, k): v for k, v in opts.items()})
  np.testing.assert_allclose(out[1:], ref_small, rtol=1e-4, atol=1e-6)


def test_baselines_huge_finite_logits():
  """mean / weighted_mean / zscore_mean of ±3e38 logits: finite, equal to float64 NumPy."""
  s = np.array([[[3e38, -3e38, 1.0, 2.0]], [[3e38, 2e38, -3e38, 4.0]]], np.float32)
  s64 = s.astype(np.float64)
  np.testing.assert_allclose(E.mean(s), s64.mean(0), rtol=1e-6)
  np.testing.assert_allclose(E.weighted_mean(s, weights=np.array([0.25, 0.75])),
                             0.25 * s64[0] + 0.75 * s64[1], rtol=1e-6, atol=1.0)
  z = (s64 - s64.mean(-1, keepdims=True)) / s64.std(-1, keepdims=True)
  np.testing.assert_allclose(E.zscore_mean(s), z.mean(0), rtol=1e-5, atol=1e-6)
  assert E.mean(s.astype(jnp.bfloat16)).dtype == jnp.float32


# ----------------------------------------------------------------------------------------------
# variant "sequential" (hypothesis: teachers merged two at a time): float64 loop reference


def _credit(d):
  """Twice a pair's accuracy credit: ordered 2, tied 1, reversed 0 (pair accuracy, ties 1/2)."""
  return 2 if d > 0 else (1 if d == 0 else 0)


def _ref_accuracy_weight(z, s, P):
  """Exact rule, re-derived: w = 0, w = 1 and the midpoint of every open interval between
  distinct roots of the pairs' linear differences; each candidate is scored by evaluating the
  merged list directly; the first (smallest) maximiser wins."""
  roots = set()
  for i, j in P:
    dz, ds = z[i] - z[j], s[i] - s[j]
    if (dz > 0 > ds) or (dz < 0 < ds):
      roots.add(dz / (dz - ds))
  bounds = [0.0] + sorted(roots) + [1.0]
  cands = [0.0] + [(a + b) / 2 for a, b in zip(bounds, bounds[1:]) if a < b] + [1.0]
  best_w, best = None, -1
  for w in cands:
    v = {i: z[i] + 0.0 * s[i] if w == 0.0 else (s[i] if w == 1.0 else (1 - w) * z[i] + w * s[i])
         for i in z}
    score = sum(_credit(v[i] - v[j]) for i, j in P)
    if score > best:
      best_w, best = w, score
  return best_w


def _ref_logistic_weight(z, s, P, tau):
  """argmax over [0, 1] of the concave sum of log sigmoid(f_ij(w) / tau), by scipy's bounded
  Brent search; the boundary (and the flat, pair-free case) by the one-sided slopes."""
  from scipy.optimize import minimize_scalar
  dz = np.array([z[i] - z[j] for i, j in P], np.float64)
  ds = np.array([s[i] - s[j] for i, j in P], np.float64)
  if not P:
    return 0.0
  slope = lambda w: float(np.sum((ds - dz) / (1.0 + np.exp((dz + w * (ds - dz)) / tau))))
  if slope(0.0) <= 0:
    return 0.0
  if slope(1.0) >= 0:
    return 1.0
  nll = lambda w: float(np.sum(np.logaddexp(0.0, -(dz + w * (ds - dz)) / tau)))
  return float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded",
                               options={"xatol": 1e-13}).x)


def ref_sequential_list(s, y, m, lm=None, merge="pair_accuracy", tau=1.0):
  M_, n = s.shape
  idx = [i for i in range(n) if m[i]]
  paired = [i for i in idx if lm is None or lm[i]]
  P = [(i, j) for i in paired for j in paired if y[i] > y[j]]
  pnr = []
  for k in range(M_):
    c = sum(s[k, i] > s[k, j] for i, j in P)
    d = sum(s[k, i] < s[k, j] for i, j in P)
    t = sum(s[k, i] == s[k, j] for i, j in P)
    pnr.append((c + t / 2) / max(d + t / 2, 1))
  if not P:  # nothing to order the teachers by: the mean (docs/pile.md: every variant)
    return np.array([float(np.mean(s[:, i])) if m[i] else 0.0 for i in range(n)])
  order = sorted(range(M_), key=lambda k: (-pnr[k], k))
  z = {i: float(s[order[0], i]) for i in idx}
  for k in order[1:]:
    sk = {i: float(s[k, i]) for i in idx}
    w = (_ref_accuracy_weight(z, sk, P) if merge == "pair_accuracy"
         else _ref_logistic_weight(z, sk, P, tau))
    z = {i: (1 - w) * z[i] + w * sk[i] for i in idx}
  out = np.zeros(n)
  for i in idx:
    out[i] = z[i]
  return out


def ref_sequential(s, y, m, lm=None, **kw):
  return np.stack([ref_sequential_list(s[:, b], y[b], m[b], None if lm is None else lm[b], **kw)
                   for b in range(s.shape[1])])


def make_tied_case(seed=0, t=4, b=24, n=8):
  """Random lists with ties of every kind: duplicated items (same logits for every teacher,
  labels may differ), one teacher's tied pair, two teachers of equal PNR, padding holding
  garbage, unjudged items, a list without labelled pairs and a single-item list."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, size=(b, n)).astype(np.float64)
  s = 0.5 * y[None] + rng.normal(0, 1.5, size=(t, b, n))
  s[:, :, 1] = s[:, :, 0]                 # items 0 and 1: identical for every teacher
  s[1, :, 3] = s[1, :, 2]                 # teacher 1 ties items 2 and 3
  s[t - 1] = 2.0 * s[0] + 1.0             # the last teacher orders as teacher 0 (tied PNR)
  m = rng.random((b, n)) < 0.85
  m[:, :2] = True
  m[0] = True
  m[1, 2:] = False                        # two valid items
  m[2] = False
  m[2, 4] = True                          # one valid item
  y[3] = 1.0                              # no labelled pair
  lm = rng.random((b, n)) < 0.8
  s = np.where(m[None], s, 1e3)
  y = np.where(m, y, 9.0)
  return s, y, m, lm


@pytest.mark.parametrize("use_label_where", [False, True])
def test_sequential_matches_float64_loop_reference(use_label_where):
  s, y, m, lm = make_tied_case(11)
  lm = lm if use_label_where else None
  want = ref_sequential(s, y, m, lm)
  with jax.enable_x64(True):
    got = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, label_where=lm,
                            variant="sequential"))
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  # the reference really merges: some lists are neither one teacher nor unchanged
  assert any(not any(np.allclose(want[b][m[b]], s[k, b][m[b]]) for k in range(s.shape[0]))
             for b in range(s.shape[1]))
  got32 = np.asarray(E.pile(s.astype(np.float32), y, where=m, label_where=lm, variant="sequential"))
  assert got32.dtype == np.float32
  np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_sequential_logistic_merge_matches_float64_reference(tau):
  s, y, m, lm = make_tied_case(12, b=10)
  want = ref_sequential(s, y, m, lm, merge="logistic", tau=tau)
  with jax.enable_x64(True):
    got = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, label_where=lm,
                            variant="sequential", merge="logistic", temperature=tau))
  np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)
  assert not np.allclose(got, ref_sequential(s, y, m, lm))  # a different rule from the exact one


def test_sequential_hand_computed_three_items_two_teachers():
  # y = (2, 1, 0): pairs (0,1), (0,2), (1,2). Teacher 0 (1, 2, 0) reverses (0,1); teacher 1
  # (3, 0, 2) reverses (1,2): both PNR 2/1 = 2, so teacher 0 (lower index) starts, z = (1, 2, 0).
  # Merging teacher 1: f_01(w) = -1 + 4w flips up at w = 1/4, f_02 = 1 always, f_12 = 2 - 4w
  # flips down at 1/2: accuracy 2/3 on [0, 1/4), 1 on (1/4, 1/2), 2/3 after -> w = 3/8,
  # z = 5/8 (1, 2, 0) + 3/8 (3, 0, 2) = (1.75, 1.25, 0.75).
  s = np.array([[[1.0, 2.0, 0.0]], [[3.0, 0.0, 2.0]]])
  y = np.array([[2.0, 1.0, 0.0]])
  want = np.array([[1.75, 1.25, 0.75]])
  np.testing.assert_allclose(E.pile(s, y, variant="sequential"), want, rtol=1e-6)
  # the logistic merge: slope 4 sigma(1 - 4w) - 4 sigma(4w - 2) = 0 at w = 3/8 (symmetry): same
  np.testing.assert_allclose(E.pile(s, y, variant="sequential", merge="logistic"), want, rtol=1e-6)
  # swapped teachers: (3, 0, 2) starts; the roots move to 1/2 and 3/4, w = 5/8: the same merge
  np.testing.assert_allclose(E.pile(s[::-1], y, variant="sequential"), want, rtol=1e-6)
  # item 1 unjudged: only (0, 2) is labelled, both teachers order it (PNR 1 each): teacher 0
  # starts and no w does better than w = 0 -> teacher 0 unchanged
  np.testing.assert_allclose(E.pile(s, y, label_where=np.array([[True, False, True]]),
                                    variant="sequential"), [[1.0, 2.0, 0.0]])
  # the better teacher at index 1 starts: (0, 0, 1) has PNR 0.5/2.5, (1, 2, 0) PNR 2; merging
  # (0, 0, 1) into (1, 2, 0) scores 2/3 at w = 0 and less for any w > 0 -> (1, 2, 0). (Index
  # order would give 1/4 (0, 0, 1) + 3/4 (1, 2, 0) = (0.75, 1.5, 0.25) instead.)
  s2 = np.array([[[0.0, 0.0, 1.0]], [[1.0, 2.0, 0.0]]])
  np.testing.assert_allclose(E.pile(s2, y, variant="sequential"), [[1.0, 2.0, 0.0]])
  # ties count 1/2: y = (3, 2, 1, 0); teacher 0 (2, 2, 1, 1) ties (0,1) and (2,3), orders the
  # other 4 pairs: PNR (4 + 1) / 1 = 5; teacher 1 (3, 2, 0, 1) reverses (2,3) only: PNR 5, so
  # teacher 0 starts. No pair flips inside (0, 1); for w > 0 (0,1) is ordered and (2,3)
  # reversed: 5 of 6 pairs, as at w = 0 (4 + 2 halves) -> w = 0 (the smaller change). (Ties
  # counted wrong would move to w = 1/2.) Swapped, teacher (3, 2, 0, 1) starts and stays.
  s4 = np.array([[[2.0, 2.0, 1.0, 1.0]], [[3.0, 2.0, 0.0, 1.0]]])
  y4 = np.array([[3.0, 2.0, 1.0, 0.0]])
  np.testing.assert_array_equal(E.pile(s4, y4, variant="sequential"), s4[0])
  np.testing.assert_array_equal(E.pile(s4[::-1], y4, variant="sequential"), s4[1])
  # a padded fourth item holding NaN changes nothing and gets 0
  s3 = np.concatenate([s, np.full((2, 1, 1), np.nan)], -1)
  y3 = np.concatenate([y, [[7.0]]], -1)
  got = E.pile(s3, y3, where=np.array([[True, True, True, False]]), variant="sequential")
  np.testing.assert_allclose(got, [[1.75, 1.25, 0.75, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("merge", E.SEQUENTIAL_MERGES)
def test_sequential_properties(merge):
  s, y, m, lm = make_tied_case(13)
  run = lambda t, yy=y, mm=m, **kw: np.asarray(
      E.pile(t, yy, where=mm, label_where=lm, variant="sequential", merge=merge, **kw))
  z = run(s)
  valid = np.broadcast_to(m, s.shape)
  # one teacher = that teacher
  np.testing.assert_array_equal(run(s[2:3]), np.where(m, s[2], 0.0).astype(np.float32))
  # padding never matters: NaN / other labels in padded slots, appended padded items
  np.testing.assert_array_equal(run(np.where(valid, s, np.nan), np.where(m, y, -3.0)), z)
  pad = 3
  s_p = np.concatenate([s, np.full(s.shape[:2] + (pad,), 5.0)], -1)
  y_p = np.concatenate([y, np.full(y.shape[:1] + (pad,), 4.0)], -1)
  m_p = np.concatenate([m, np.zeros(m.shape[:1] + (pad,), bool)], -1)
  lm_p = np.concatenate([lm, np.ones(lm.shape[:1] + (pad,), bool)], -1)
  z_p = np.asarray(E.pile(s_p, y_p, where=m_p, label_where=lm_p, variant="sequential", merge=merge))
  np.testing.assert_allclose(z_p[..., :-pad], z, rtol=1e-6, atol=1e-6)
  assert np.all(z[~m] == 0.0) and np.all(z_p[..., -pad:] == 0.0) and np.all(np.isfinite(z))
  # each merge is a convex combination: inside every item's teacher range
  lo, hi = np.where(valid, s, np.inf).min(0), np.where(valid, s, -np.inf).max(0)
  assert np.all(((z >= lo - 1e-5) & (z <= hi + 1e-5)) | ~m)
  # lists without labelled pairs get the teachers' float64 mean (docs/pile.md), not the first
  # teacher: list 3 (one label value), list 2 (one valid item); the tied case's last teacher is
  # 2 s_0 + 1, so the mean differs from every single teacher
  for b in (2, 3):
    np.testing.assert_allclose(z[b], np.where(m[b], s[:, b].astype(np.float64).mean(0), 0.0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(z[b][m[b]], s[0, b][m[b]])
  # permuting items permutes the output (no tie among w-candidates depends on item order)
  perm = np.random.default_rng(1).permutation(s.shape[-1])
  zp = np.asarray(E.pile(s[..., perm], y[:, perm], where=m[:, perm], label_where=lm[:, perm],
                         variant="sequential", merge=merge))
  np.testing.assert_allclose(zp, z[:, perm], rtol=1e-5, atol=1e-5)
  if merge == "pair_accuracy":
    # the label pair accuracy never falls below the best teacher's (w = 0 is always a candidate)
    lw = np.broadcast_to(m & lm, s.shape)
    acc_t = np.asarray(M.pair_accuracy(s, np.broadcast_to(y, s.shape), where=lw)).max(0)
    acc_z = np.asarray(M.pair_accuracy(z, y, where=m & lm))
    assert np.all(acc_z >= acc_t - 1e-6)
    assert np.any(acc_z > acc_t + 1e-6)
    # adding a constant per teacher and list changes no weight: the output moves by a constant
    shift = np.random.default_rng(2).normal(0, 3, size=s.shape[:2])[..., None]
    d = run(s + shift) - z
    for b in range(s.shape[1]):
      if m[b].any():
        np.testing.assert_allclose(d[b][m[b]], d[b][m[b]][0], atol=1e-4)


def test_sequential_batched_leading_axes_jit_vmap_pmap():
  """[T, 2, 4, n] inputs equal [T, 8, n]; eager = jit = vmap list by list = pmap (4 CPU
  devices), with label_where, for both merges."""
  s, y, m, lm = make_tied_case(14, t=3, b=8, n=6)
  s32 = s.astype(np.float32)

  def f(t, yy, mm, ll):
    return jnp.stack([E.pile(t, yy, where=mm, label_where=ll, variant="sequential", merge=g)
                      for g in E.SEQUENTIAL_MERGES])

  eager = np.stack([np.asarray(E.pile(s32, y, where=m, label_where=lm, variant="sequential", merge=g))
                    for g in E.SEQUENTIAL_MERGES])
  shaped = f(s32.reshape(3, 2, 4, 6), y.reshape(2, 4, 6), m.reshape(2, 4, 6), lm.reshape(2, 4, 6))
  np.testing.assert_allclose(np.asarray(shaped).reshape(2, 8, 6), eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jit(f)(s32, y, m, lm), eager, rtol=1e-5, atol=1e-6)
  per_list = jax.vmap(f, in_axes=(1, 0, 0, 0), out_axes=1)(s32, y, m, lm)
  np.testing.assert_allclose(per_list, eager, rtol=1e-5, atol=1e-6)
  if jax.device_count() < 4:
    pytest.skip("pmap part needs 4 devices (tests/conftest.py sets XLA_FLAGS)")
  out = jax.pmap(f, in_axes=(1, 0, 0, 0))(s32.reshape(3, 4, 2, 6), y.reshape(4, 2, 6),
                                          m.reshape(4, 2, 6), lm.reshape(4, 2, 6))
  out = np.moveaxis(np.asarray(out), 0, 1).reshape(2, 8, 6)
  np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)


def test_sequential_huge_finite_logits_match_float64_reference():
  s = np.array([[[3e38, -3e38, 1.0, 0.0, 2e38]], [[3e38, 2e38, -3e38, 0.0, -1e38]],
                [[-2e38, 1e37, 5.0, 3e38, 0.0]]], np.float32)
  y = np.array([[2.0, 1.0, 1.0, 0.0, 3.0]])
  m = np.ones((1, 5), bool)
  got = np.asarray(E.pile(s, y, variant="sequential"))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref_sequential(s.astype(np.float64), y, m), rtol=1e-5,
                             atol=1e-6 * 3e38)


def test_sequential_is_a_student_target_and_a_report_row():
  """Selectable as the in-step target through the objective's ensemble options (label_where =
  the batch's label mask) and the pipeline's ensemble methods; shown by teacher_report."""
  from helpers.train_tiny import make_batch
  from pile_jax.pipeline import ensemble_specs
  from pile_jax.train.objective import Objective, resolve_target

  batch = {k: jnp.asarray(v) for k, v in make_batch(3, 6, ragged=True).items()}
  for spec in ({"name": "pile", "variant": "sequential"}, {"name": "pile_sequential"}):
    obj = Objective.from_config({"distill_losses": {"margin_mse": 1.0}, "ensemble": spec})
    got = np.asarray(jax.jit(lambda b: resolve_target(b, obj))(batch))
    mask, lmask = np.asarray(batch["mask"]), np.asarray(batch["label_mask"])
    ts = np.transpose(np.where(mask[:, None], np.asarray(batch["teacher_scores"], np.float64), 0.0), (1, 0, 2))
    want = ref_sequential(ts, np.where(mask & lmask, np.asarray(batch["labels"], np.float64), 0.0), mask, lmask)
    np.testing.assert_allclose(np.where(mask, got, 0.0), want, rtol=1e-5, atol=1e-5)
  assert ensemble_specs({"pile_seq": {"name": "pile", "variant": "sequential"}}) == [
      ("pile_seq", "pile", {"variant": "sequential"})]
  s, y, m, _ = make_tied_case(15)
  rep = E.teacher_report(s, y, where=m, ensembles=ensemble_specs(
      {"pile": {"name": "pile"}, "pile_seq": {"name": "pile", "variant": "sequential"}}))
  want = np.asarray(M.pnr(ref_sequential(s, y, m), y, where=m))
  ev = np.asarray(M.num_labelled_pairs(y, where=m)) > 0
  assert rep["ensembles"]["pile_seq"]["pnr"] == pytest.approx(want[ev].mean(), rel=1e-5)
  assert "| pile_seq | ensemble |" in E.format_teacher_report(rep)
  assert "pile_sequential" in E.teacher_report(s, y, where=m)["ensembles"]  # a default row
  with pytest.raises(ValueError, match="^merge: "):
    E.pile(s, y, where=m, variant="sequential", merge="median")


@pytest.mark.parametrize("variant", E.PILE_VARIANTS)
def test_every_variant_gives_the_hand_computed_mean_without_a_labelled_pair(variant):
  """docs/pile.md: a list without a labelled pair gets the mean, whatever the variant. Hand-computed:
  teachers (1, 2, 6) and (3, 0, 0) -> (2, 1, 3). Three ways to have no pair: equal labels, every
  item outside ``label_where`` (a transfer-set list, label_mask all False), and one valid item."""
  s = np.array([[[1.0, 2.0, 6.0]], [[3.0, 0.0, 0.0]]])
  want = np.array([[2.0, 1.0, 3.0]])
  np.testing.assert_allclose(E.pile(s, np.array([[1.0, 1.0, 1.0]]), variant=variant), want, rtol=1e-6)
  np.testing.assert_allclose(E.pile(s, np.array([[2.0, 0.0, 1.0]]), label_where=np.zeros((1, 3), bool),
                                    variant=variant), want, rtol=1e-6)
  np.testing.assert_allclose(E.pile(s, np.array([[2.0, 0.0, 1.0]]), where=np.array([[False, True, False]]),
                                    variant=variant), [[0.0, 1.0, 0.0]], rtol=1e-6)
  # the teacher order does not matter there (sequential would otherwise start from teacher 0)
  np.testing.assert_allclose(E.pile(s[::-1], np.array([[1.0, 1.0, 1.0]]), variant=variant), want, rtol=1e-6)
