"""Tests for pile_jax.losses: NumPy float64 loop references, Rax cross-checks, gradients,
invariants, padding, empty lists and input validation."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rax

from pile_jax import losses as L

B, N = 6, 8


# ----------------------------------------------------------------------------------------------
# test data: one batch covering the edge cases (same shape everywhere -> few compilations)


def make_case(seed=0, garbage=1e3):
  """scores/teacher/labels [6, 8] + mask with: a full list with label and score ties, a padded
  list, all-equal labels, a single valid item, a fully masked list, padding in the middle."""
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(B, N))
  t = rng.normal(size=(B, N)) * 2.0
  y = rng.integers(0, 4, size=(B, N)).astype(np.float64)
  m = np.ones((B, N), bool)
  s[0, 3] = s[0, 5]  # score tie
  y[0, :3] = 2.0  # label ties
  m[1, 5:] = False
  s[1, 2] = s[1, 4]
  y[2] = 1.0  # all-equal labels
  m[3] = False
  m[3, 4] = True  # single valid item
  m[4] = False  # fully masked
  m[5, [1, 4, 6]] = False
  y[5, [0, 2]] = [3.0, 0.0]
  # garbage at padded positions: must not matter
  s = np.where(m, s, garbage)
  t = np.where(m, t, -garbage)
  y = np.where(m, y, 7.0)
  return s, t, y, m


# ----------------------------------------------------------------------------------------------
# NumPy float64 loop references (written independently of the library)


def _softplus(x):
  return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def ref_pointwise(kind, s, y, m, w=None):
  out = np.zeros_like(s)
  for b in range(s.shape[0]):
    for i in range(s.shape[1]):
      if not m[b, i]:
        continue
      if kind == "mse":
        v = (s[b, i] - y[b, i]) ** 2
      else:
        p = min(max(y[b, i], 0.0), 1.0)
        v = -(p * math.log(_sigmoid(s[b, i])) + (1 - p) * math.log(_sigmoid(-s[b, i])))
      out[b, i] = v * (1.0 if w is None else w[b, i])
  return out, m.copy()


def _dcg(order_labels):
  return sum((2.0 ** lab - 1.0) / math.log2(r + 2) for r, lab in enumerate(order_labels))


def _ndcg_of_order(order, y):
  ideal = _dcg(sorted(y, reverse=True))
  return _dcg([y[i] for i in order]) / ideal if ideal > 0 else 0.0


def ref_ndcg_lambdaweight(s, y, m):
  """|ΔNDCG| of actually swapping i and j in the score ranking, recomputing NDCG."""
  out = np.zeros(s.shape + (s.shape[-1],))
  for b in range(s.shape[0]):
    valid = [i for i in range(s.shape[1]) if m[b, i]]
    order = sorted(valid, key=lambda i: (-s[b, i], i))
    ys = {i: y[b, i] for i in valid}
    yl = [ys[i] for i in valid]
    ideal = _dcg(sorted(yl, reverse=True))
    base = _dcg([ys[i] for i in order])
    for i in valid:
      for j in valid:
        sw = list(order)
        a, c = sw.index(i), sw.index(j)
        sw[a], sw[c] = sw[c], sw[a]
        out[b, i, j] = abs(_dcg([ys[k] for k in sw]) - base) / ideal if ideal > 0 else 0.0
  return out


def ref_pairwise_hard(kind, s, y, m, w=None, margin=1.0, lw=None):
  n = s.shape[1]
  out = np.zeros((s.shape[0], n, n))
  valid = np.zeros_like(out, bool)
  for b in range(s.shape[0]):
    for i in range(n):
      for j in range(n):
        if m[b, i] and m[b, j] and y[b, i] > y[b, j]:
          d = s[b, i] - s[b, j]
          v = _softplus(-d) if kind == "logistic" else max(0.0, margin - d)
          if w is not None:
            v *= w[b, i]
          if lw is not None:
            v *= lw[b, i, j]
          out[b, i, j] = v
          valid[b, i, j] = True
  return out, valid


def ref_pairwise_teacher(kind, s, t, m, temperature=1.0):
  n = s.shape[1]
  out = np.zeros((s.shape[0], n, n))
  valid = np.zeros_like(out, bool)
  for b in range(s.shape[0]):
    for i in range(n):
      for j in range(n):
        if i == j or not (m[b, i] and m[b, j]):
          continue
        ds, dt = s[b, i] - s[b, j], t[b, i] - t[b, j]
        if kind == "margin_mse":
          v = (ds - dt) ** 2
        else:
          p = _sigmoid(dt / temperature)
          v = -(p * math.log(_sigmoid(ds)) + (1 - p) * math.log(_sigmoid(-ds)))
        out[b, i, j] = v
        valid[b, i, j] = True
  return out, valid


def _log_softmax(xs):
  mx = max(xs)
  lse = mx + math.log(sum(math.exp(x - mx) for x in xs))
  return [x - lse for x in xs]


def ref_softmax_ce(s, y, m, w=None):
  out = np.zeros(s.shape[0])
  valid = np.zeros(s.shape[0], bool)
  for b in range(s.shape[0]):
    idx = [i for i in range(s.shape[1]) if m[b, i]]
    lab = [y[b, i] * (1.0 if w is None else w[b, i]) for i in idx]
    if not idx or sum(lab) <= 0:
      continue
    ls = _log_softmax([s[b, i] for i in idx])
    out[b] = -sum(l / sum(lab) * v for l, v in zip(lab, ls))
    valid[b] = True
  return out, valid


def ref_listwise_kl(s, t, m, temperature):
  out = np.zeros(s.shape[0])
  valid = np.zeros(s.shape[0], bool)
  for b in range(s.shape[0]):
    idx = [i for i in range(s.shape[1]) if m[b, i]]
    if not idx:
      continue
    lp = _log_softmax([t[b, i] / temperature for i in idx])
    lq = _log_softmax([s[b, i] / temperature for i in idx])
    out[b] = temperature ** 2 * sum(math.exp(a) * (a - c) for a, c in zip(lp, lq))
    valid[b] = True
  return out, valid


def ref_listmle(s, y, m):
  out = np.zeros(s.shape[0])
  valid = np.zeros(s.shape[0], bool)
  for b in range(s.shape[0]):
    idx = [i for i in range(s.shape[1]) if m[b, i]]
    if not idx:
      continue
    order = sorted(idx, key=lambda i: (-y[b, i], i))  # ties: earlier index first
    total = 0.0
    for k in range(len(order)):
      rest = [s[b, order[q]] for q in range(k, len(order))]
      mx = max(rest)
      total -= s[b, order[k]] - (mx + math.log(sum(math.exp(r - mx) for r in rest)))
    out[b] = total
    valid[b] = True
  return out, valid


def reduce_ref(values, valid, how):
  if how == "none":
    return np.where(valid, values, 0.0)
  if how == "sum":
    return values[valid].sum()
  return values[valid].sum() / max(valid.sum(), 1)


REDUCE = {"none": None, "sum": jnp.sum, "mean": jnp.mean}


# ----------------------------------------------------------------------------------------------
# values against the references


@pytest.mark.parametrize("how", ["none", "sum", "mean"])
def test_all_losses_match_loop_references(how):
  s, t, y, m = make_case(0)
  w = np.random.default_rng(1).uniform(0.5, 2.0, size=(B, N))
  prob = np.where(m, np.clip(y / 3.0, 0, 1), 0.5)
  rf = REDUCE[how]
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  lw = ref_ndcg_lambdaweight(s, y, m)
  checks = [
      (L.pointwise_mse(f32(s), f32(t), where=m, weights=f32(w), reduce_fn=rf),
       ref_pointwise("mse", s, t, m, w)),
      (L.pointwise_sigmoid_ce(f32(s), f32(prob), where=m, reduce_fn=rf),
       ref_pointwise("sig", s, prob, m)),
      (L.pairwise_logistic(f32(s), f32(y), where=m, weights=f32(w), reduce_fn=rf),
       ref_pairwise_hard("logistic", s, y, m, w)),
      (L.pairwise_logistic(f32(s), f32(y), where=m, lambdaweight="ndcg", reduce_fn=rf),
       ref_pairwise_hard("logistic", s, y, m, lw=lw)),
      (L.pairwise_hinge(f32(s), f32(y), margin=0.7, where=m, reduce_fn=rf),
       ref_pairwise_hard("hinge", s, y, m, margin=0.7)),
      (L.margin_mse(f32(s), f32(t), where=m, reduce_fn=rf), ref_pairwise_teacher("margin_mse", s, t, m)),
      (L.pairwise_distill_logistic(f32(s), f32(t), temperature=2.0, where=m, reduce_fn=rf),
       ref_pairwise_teacher("distill", s, t, m, temperature=2.0)),
      (L.softmax_ce(f32(s), f32(y), where=m, weights=f32(w), reduce_fn=rf), ref_softmax_ce(s, y, m, w)),
      (L.listwise_kl(f32(s), f32(t), temperature=3.0, where=m, reduce_fn=rf),
       ref_listwise_kl(s, t, m, 3.0)),
      (L.listmle(f32(s), f32(y), where=m, reduce_fn=rf), ref_listmle(s, y, m)),
  ]
  for k, (got, (vals, valid)) in enumerate(checks):
    want = reduce_ref(vals, valid, how)
    got = np.asarray(got)
    assert got.shape == np.shape(want), k
    assert np.all(np.isfinite(got)), k
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, err_msg=f"check {k}")


def test_ndcg_lambdaweight_is_abs_delta_ndcg():
  s, _, y, m = make_case(3)
  s[0, 3] += 0.1  # tie-free so the swap ranking is unambiguous
  got = np.asarray(L.ndcg_lambdaweight(jnp.asarray(s, jnp.float32), jnp.asarray(y, jnp.float32), where=m))
  np.testing.assert_allclose(got, ref_ndcg_lambdaweight(s, y, m), rtol=1e-5, atol=1e-6)


def test_margin_mse_two_item_lists_equal_paper_formula():
  rng = np.random.default_rng(2)
  sp, sn, tp, tn = rng.normal(size=(4, 16))
  s = np.stack([sp, sn], -1)
  t = np.stack([tp, tn], -1)
  paper = np.mean(((sp - sn) - (tp - tn)) ** 2)
  np.testing.assert_allclose(L.margin_mse(s, t), paper, rtol=1e-5)
  # swapping positive/negative in both student and teacher: symmetric
  np.testing.assert_allclose(L.margin_mse(s[:, ::-1], t[:, ::-1]), paper, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Rax cross-checks (float64, 1e-6 relative)


def test_rax_crosscheck_losses():
  s, t, y, m = make_case(4)
  w = np.random.default_rng(5).uniform(0.5, 2.0, size=(B, N))
  y[2] = 2.0  # positive label mass everywhere: softmax_ce == Rax with normalised labels
  prob = np.where(m, np.clip(y / 3.0, 0, 1), 0.5)
  n = s.shape[-1]
  rax_ndcg_lw = lambda *a, **k: rax.dcg_lambdaweight(*a, normalize=True, **k) / n

  def both(S, T, Y, W, P, rf):
    return [
        (L.pointwise_mse(S, T, where=m, weights=W, reduce_fn=rf),
         rax.pointwise_mse_loss(S, T, where=m, weights=W, reduce_fn=rf)),
        (L.pointwise_sigmoid_ce(S, P, where=m, weights=W, reduce_fn=rf),
         rax.pointwise_sigmoid_loss(S, P, where=m, weights=W, reduce_fn=rf)),
        (L.pairwise_logistic(S, Y, where=m, weights=W, reduce_fn=rf),
         rax.pairwise_logistic_loss(S, Y, where=m, weights=W, reduce_fn=rf)),
        (L.pairwise_logistic(S, Y, where=m, lambdaweight="ndcg", reduce_fn=rf),
         rax.pairwise_logistic_loss(S, Y, where=m, lambdaweight_fn=rax_ndcg_lw, reduce_fn=rf)),
        (L.pairwise_hinge(S, Y, where=m, weights=W, reduce_fn=rf),
         rax.pairwise_hinge_loss(S, Y, where=m, weights=W, reduce_fn=rf)),
        (L.softmax_ce(S, Y, where=m, weights=W, reduce_fn=rf),
         rax.softmax_loss(S, Y, where=m, weights=W, reduce_fn=rf,
                          label_fn=rax.utils.normalize_probabilities)),
        (L.listmle(S, Y, where=m, reduce_fn=rf), rax.listmle_loss(S, Y, where=m, reduce_fn=rf)),
    ]

  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in (s, t, y, w, prob))
    reductions = (jnp.mean, jnp.sum, None)
    outs = jax.jit(lambda *a: [both(*a, rf) for rf in reductions])(*args)  # one compilation
    for rf, out in zip(reductions, outs):
      for k, (mine, theirs) in enumerate(out):
        mine, theirs = np.asarray(mine), np.asarray(theirs)
        assert mine.dtype == np.float64
        if rf is None and theirs.ndim == 1:  # per-list: Rax leaves masked lists unzeroed
          theirs = np.where(m.any(-1), theirs, 0.0)
        if rf is None and mine.ndim == 3:  # per-pair: Rax flattens [..., n, n] to [..., n * n]
          mine = mine.reshape(theirs.shape)
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-12, err_msg=f"{rf} {k}")


# ----------------------------------------------------------------------------------------------
# gradients (float64 finite differences)


def test_gradients_match_finite_differences():
  s, t, y, m = make_case(6, garbage=0.0)
  s = s + np.arange(N) * 1e-2  # tie-free scores (lambdaweight ranks must not flip)
  prob = np.where(m, np.clip(y / 3.0, 0, 1), 0.5)
  with jax.enable_x64(True):
    S, T, Y, P = (jnp.asarray(a, jnp.float64) for a in (s, t, y, prob))

    def all_losses(x, tt=T):
      return jnp.stack([
          L.pointwise_mse(x, tt, where=m),
          L.pointwise_sigmoid_ce(x, P, where=m),
          L.pairwise_logistic(x, Y, where=m, lambdaweight="ndcg"),
          L.pairwise_hinge(x, Y, where=m),
          L.margin_mse(x, tt, where=m),
          L.pairwise_distill_logistic(x, tt, temperature=2.0, where=m),
          L.softmax_ce(x, Y, where=m),
          L.listwise_kl(x, tt, temperature=2.0, where=m),
          L.listmle(x, Y, where=m),
      ])

    jac = np.asarray(jax.jit(jax.jacrev(all_losses))(S))  # [9, B, N]
    # central differences, one coordinate at a time (all coordinates in one vmapped call)
    eps = 1e-6
    basis = np.eye(B * N).reshape(B * N, B, N)
    both = np.asarray(jax.jit(jax.vmap(all_losses))(
        jnp.concatenate([S[None] + eps * basis, S[None] - eps * basis])))
    fd = ((both[:B * N] - both[B * N:]) / (2 * eps)).T.reshape(9, B, N)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-8)
    assert np.all(np.isfinite(jac))
    assert np.all(jac[:, ~m] == 0.0)  # padded items get no gradient
    assert np.abs(jac[:, m]).sum() > 0
    # gradients flow only into the student for the distillation losses (teacher = constant)
    g_t = jax.jit(jax.grad(lambda tt: (L.margin_mse(S, tt, where=m)
                                        + L.pairwise_distill_logistic(S, tt, where=m)
                                        + L.listwise_kl(S, tt, where=m))))(T)
    assert np.all(np.asarray(g_t) == 0.0)


# ----------------------------------------------------------------------------------------------
# invariants, padding, empty lists


def test_margin_mse_invariants_and_pointwise_contrast():
  s, t, _, m = make_case(7)
  base = L.margin_mse(s, t, where=m)
  np.testing.assert_allclose(L.margin_mse(s + 5.0, t, where=m), base, rtol=1e-5)
  assert float(L.margin_mse(t + 3.0, t, where=m)) < 1e-8
  assert float(L.margin_mse(t, t, where=m)) == 0.0
  # pointwise MSE is NOT shift-invariant
  assert float(L.pointwise_mse(t + 3.0, t, where=m)) > 8.9


def test_padded_items_change_nothing():
  s, t, y, m = make_case(8, garbage=0.0)
  s2, t2, y2, _ = make_case(8, garbage=50.0)
  s3 = np.where(m, s, np.nan)  # even NaN at padded positions is fine
  prob = np.where(m, np.clip(y / 3.0, 0, 1), 0.0)
  for f, a, b in [
      (L.pairwise_logistic, y, y2), (L.pairwise_hinge, y, y2), (L.margin_mse, t, t2),
      (L.pairwise_distill_logistic, t, t2), (L.softmax_ce, y, y2), (L.listwise_kl, t, t2),
      (L.listmle, y, y2), (L.pointwise_mse, t, t2), (L.pointwise_sigmoid_ce, prob, prob),
  ]:
    v1 = np.asarray(f(s, a, where=m, reduce_fn=None))
    v2 = np.asarray(f(s2, b, where=m, reduce_fn=None))
    v3 = np.asarray(f(s3, a, where=m, reduce_fn=None))
    np.testing.assert_allclose(v1, v2, rtol=1e-6, atol=1e-7, err_msg=f.__name__)
    np.testing.assert_allclose(v1, v3, rtol=1e-6, atol=1e-7, err_msg=f.__name__)


def test_empty_lists_and_no_valid_pairs_give_zero_not_nan():
  s = jnp.asarray(np.random.default_rng(9).normal(size=(B, N)), jnp.float32)
  none = np.zeros((B, N), bool)
  y_eq = jnp.ones((B, N))
  cases = [(L.pairwise_logistic, y_eq), (L.pairwise_hinge, y_eq), (L.softmax_ce, y_eq),
           (L.listmle, y_eq), (L.pointwise_mse, s), (L.margin_mse, s),
           (L.pairwise_distill_logistic, s), (L.listwise_kl, s)]

  @jax.jit
  def values_and_grads(x):
    out = []
    for f, second in cases:
      for rf in (jnp.mean, jnp.sum):
        out.append(jax.value_and_grad(lambda x: f(x, second, where=none, reduce_fn=rf))(x))
    return out

  for v, g in values_and_grads(s):
    assert float(v) == 0.0
    assert np.all(np.asarray(g) == 0.0)
  # all-equal labels: no labelled pair -> 0 for the hard pairwise losses (no mask)
  assert float(L.pairwise_logistic(s, y_eq)) == 0.0
  assert float(L.pairwise_hinge(s, y_eq)) == 0.0
  # zero label mass: no softmax target -> 0 and not counted
  assert float(L.softmax_ce(s, jnp.zeros((B, N)))) == 0.0


def test_reduce_fn_mean_units():
  s, t, y, m = make_case(10)
  # pairwise: mean over valid pairs of the whole batch == sum / #pairs
  per_pair = np.asarray(L.pairwise_logistic(s, y, where=m, reduce_fn=None))
  n_pairs = sum(1 for b in range(B) for i in range(N) for j in range(N)
                if m[b, i] and m[b, j] and y[b, i] > y[b, j])
  np.testing.assert_allclose(L.pairwise_logistic(s, y, where=m), per_pair.sum() / n_pairs, rtol=1e-6)
  assert per_pair.shape == (B, N, N)
  # listwise: mean over lists with a valid item (the fully masked list 4 is not counted)
  per_list = np.asarray(L.listwise_kl(s, t, where=m, reduce_fn=None))
  assert per_list.shape == (B,) and per_list[4] == 0.0 and per_list[3] == 0.0
  np.testing.assert_allclose(L.listwise_kl(s, t, where=m), per_list.sum() / 5, rtol=1e-6)


def _second(name, t, y):
  kind = L.LOSS_REGISTRY[name].target
  if kind in ("teacher", "target"):
    return t
  return jnp.clip(y / 3, 0, 1) if kind == "probabilities" else y


def test_jit_matches_eager():
  s, t, y, m = make_case(11, garbage=0.0)

  @jax.jit
  def all_losses(s, t, y, m):
    return jnp.stack([L.LOSS_REGISTRY[k](s, _second(k, t, y), where=m) for k in sorted(L.LOSSES)])

  eager = np.asarray([L.LOSSES[k](s, _second(k, t, y), where=m) for k in sorted(L.LOSSES)])
  np.testing.assert_allclose(all_losses(s, t, y, m), eager, rtol=1e-5, atol=1e-6)


def test_registry_one_record_per_loss():
  assert set(L.LOSSES) == set(L.LOSS_TARGETS) == set(L.LOSS_REGISTRY)
  for name in ("pointwise_mse", "pointwise_sigmoid_ce", "pairwise_logistic", "pairwise_hinge",
               "margin_mse", "pairwise_distill_logistic", "softmax_ce", "listwise_kl", "listmle"):
    spec = L.get_loss_spec(name)
    assert spec.fn is getattr(L, name) and L.get_loss(name) is spec.fn and not spec.defaults
  assert L.LOSS_TARGETS["margin_mse"] == "teacher" and L.LOSS_TARGETS["softmax_ce"] == "labels"
  # "lambdarank" = pairwise_logistic with lambdaweight="ndcg" bound, in every view
  s, _, y, m = make_case(12)
  want = float(L.pairwise_logistic(s, y, where=m, lambdaweight="ndcg"))
  assert float(L.LOSS_REGISTRY["lambdarank"](s, y, where=m)) == want
  assert float(L.get_loss("lambdarank")(s, y, where=m)) == want
  assert float(L.LOSS_REGISTRY["lambdarank"](s, y, where=m, lambdaweight=None)) == float(
      L.pairwise_logistic(s, y, where=m))
  with pytest.raises(ValueError, match="name"):
    L.get_loss("nope")
  with pytest.raises(TypeError):
    L.LOSS_REGISTRY["x"] = L.LOSS_REGISTRY["ranknet"]  # read-only


def test_new_callables_do_not_recompile():
  """A fresh lambda ``reduce_fn`` / ``lambdaweight`` per call runs un-jitted (jit is left to the
  caller, as in Rax): repeated eager calls retrace and compile nothing new."""
  s, _, y, m = make_case(13)
  compiles = []

  def listener(event, *args, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  def call():
    return (L.pairwise_logistic(s, y, where=m, lambdaweight=lambda s, y, where: jnp.ones(s.shape + s.shape[-1:]),
                                reduce_fn=lambda v, where: jnp.sum(v, where=where)),
            L.margin_mse(s, y, where=m, reduce_fn=lambda v, where: jnp.max(v, where=where, initial=0.0)))

  first = call()  # compiles the primitives for these shapes
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for _ in range(3):
      again = call()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  want = sum(_softplus(-(s[b, i] - s[b, j])) for b in range(B) for i in range(N) for j in range(N)
             if m[b, i] and m[b, j] and y[b, i] > y[b, j])
  assert float(first[0]) == pytest.approx(want, rel=1e-5)


def test_bf16_inputs_reduce_in_float32():
  """bf16 scores and targets of 300 items: the loss is computed and returned in float32 (the
  count in the mean stays exact above 256), equal to a float64 re-derivation on the same
  bf16-rounded inputs."""
  rng = np.random.default_rng(14)
  n = 300
  s16 = jnp.asarray(rng.normal(size=(1, n)), jnp.bfloat16)
  t16 = jnp.asarray(rng.normal(size=(1, n)) * 2, jnp.bfloat16)
  y16 = jnp.asarray(rng.integers(0, 3, size=(1, n)), jnp.bfloat16)
  s, t, y = (np.asarray(x, np.float64) for x in (s16, t16, y16))
  m = np.ones((1, n), bool)
  e = (s - t)[0]
  log_p, log_q = t[0] - np.logaddexp.reduce(t[0]), s[0] - np.logaddexp.reduce(s[0])
  cases = {  # float64 NumPy re-derivations
      "pointwise_mse": (L.pointwise_mse(s16, t16), np.mean(e ** 2)),
      "margin_mse": (L.margin_mse(s16, t16), np.sum((e[:, None] - e[None, :]) ** 2) / (n * (n - 1))),
      "listwise_kl": (L.listwise_kl(s16, t16), np.sum(np.exp(log_p) * (log_p - log_q))),
      "softmax_ce": (L.softmax_ce(s16, y16), -np.sum(y[0] / y[0].sum() * log_q)),
  }
  for name, (got, want) in cases.items():
    assert got.dtype == jnp.float32, name
    assert float(got) == pytest.approx(want, rel=2e-5), name
  per_item = L.pointwise_mse(s16, t16, reduce_fn=None)
  assert per_item.dtype == jnp.float32
  lw = L.ndcg_lambdaweight(s16, y16)
  assert lw.dtype == jnp.float32


def test_huge_finite_inputs_margin_mse_exact_or_clear_error():
  """margin_mse is finite whenever its value fits in float32, even for inputs of ±3e38 whose
  differences overflow; a loss that does not fit raises a ValueError naming the arguments."""
  s = np.array([[3e38, -3e38, 1e10, 0.0]], np.float32)
  t = s + np.array([[0.0, 0.0, 5e17, 1e18]], np.float32)  # teacher = student + offsets
  # exact rational reference (a float64 loop would cancel catastrophically at 3e38)
  fs, ft = [Fraction(float(v)) for v in s[0]], [Fraction(float(v)) for v in t[0]]
  want = float(sum(((fs[i] - fs[j]) - (ft[i] - ft[j])) ** 2
                   for i in range(4) for j in range(4) if i != j) / 12)
  got = L.margin_mse(s, t)
  assert np.isfinite(float(got)) and float(got) == pytest.approx(want, rel=1e-5)
  got_jit = jax.jit(L.margin_mse)(s, t)
  assert float(got_jit) == pytest.approx(want, rel=1e-5)
  g = jax.grad(lambda x: L.margin_mse(x, t))(s)
  assert np.all(np.isfinite(np.asarray(g)))
  with pytest.raises(ValueError, match="^scores, teacher_scores: margin_mse overflows float32"):
    L.margin_mse(np.array([[1e30, -1e30]], np.float32), np.zeros((1, 2), np.float32))


def test_huge_finite_inputs_pointwise_mse_exact_or_clear_error():
  """The mean of 1000 per-item values of ~1e36 fits float32 though their sum does not: the mean
  is exact; ±1e30 targets give a squared error beyond float32: a ValueError names the inputs."""
  rng = np.random.default_rng(15)
  s = (rng.uniform(0.5, 1.5, size=(2, 500)) * 1e18).astype(np.float32)
  t = np.zeros_like(s)
  want = np.mean(s.astype(np.float64) ** 2)
  assert want * s.size > np.finfo(np.float32).max
  assert float(L.pointwise_mse(s, t)) == pytest.approx(want, rel=1e-5)
  assert float(jax.jit(L.pointwise_mse)(s, t)) == pytest.approx(want, rel=1e-5)
  with pytest.raises(ValueError, match="^scores, targets: pointwise_mse overflows float32.*2e\\+30"):
    L.pointwise_mse(np.array([1e30, 0.0], np.float32), np.array([-1e30, 0.0], np.float32))


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_value_error_naming_argument():
  s = np.zeros((2, 4), np.float32)
  y = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match="^labels: .*\\(2, 4\\).*got \\(2, 3\\)"):
    L.pairwise_logistic(s, np.zeros((2, 3)))
  with pytest.raises(ValueError, match="^teacher_scores:"):
    L.margin_mse(s, np.zeros((4, 2)))
  bad = s.copy()
  bad[0, 1] = np.nan
  with pytest.raises(ValueError, match="^scores: .*NaN"):
    L.listmle(bad, y)
  bad_y = y.copy()
  bad_y[1, 2] = np.inf
  with pytest.raises(ValueError, match="^labels: .*Inf"):
    L.softmax_ce(s, bad_y)
  with pytest.raises(ValueError, match="^where:"):
    L.pointwise_mse(s, y, where=np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match="^where:"):
    L.pointwise_mse(s, y, where=np.ones((3, 4), bool))
  with pytest.raises(ValueError, match="^labels:"):
    L.pointwise_sigmoid_ce(s, y + 2.0)
  with pytest.raises(ValueError, match="^temperature:"):
    L.listwise_kl(s, y, temperature=0.0)
  with pytest.raises(ValueError, match="^lambdaweight:"):
    L.pairwise_logistic(s, y, lambdaweight="dcg")
  # NaN at a padded position is allowed
  m = np.ones((2, 4), bool)
  m[0, 1] = False
  assert np.isfinite(float(L.listmle(bad, y, where=m)))
  # inside jit the value checks are skipped (shape checks still run)
  jax.jit(L.listmle)(bad, y)
  with pytest.raises(ValueError, match="^labels:"):
    jax.jit(L.listmle)(s, np.zeros((2, 3)))


def test_listwise_and_distill_losses_no_nan_at_float32_extremes():
  """Logits of ±3e38: softmax_ce, listwise_kl and pairwise_distill_logistic give the float64
  values (0 log 0 = 0; no inf - inf), never NaN."""
  s = np.array([[3e38, -3e38, 1.0, 0.0]], np.float32)
  y = np.array([[2.0, 0.0, 1.0, 0.0]], np.float32)
  s64 = s[0].astype(np.float64)
  log_q = s64 - np.logaddexp.reduce(s64)
  p = y[0] / y[0].sum()
  want_ce = -np.sum(np.where(p > 0, p * log_q, 0.0))
  assert float(L.softmax_ce(s, y)) == pytest.approx(want_ce, rel=1e-5)
  assert float(L.listwise_kl(s, s)) == 0.0
  t = np.array([[3e38, 1.0, -3e38, 0.0]], np.float32)
  t64 = t[0].astype(np.float64)
  vals = []
  for i in range(4):
    for j in range(4):
      if i != j:
        ds, dt = s64[i] - s64[j], t64[i] - t64[j]
        pij = 0.5 * (1 + math.tanh(dt / 2))
        vals.append(pij * _softplus(-ds) + (1 - pij) * _softplus(ds))
  assert float(L.pairwise_distill_logistic(s, t)) == pytest.approx(np.mean(vals), rel=1e-5)
