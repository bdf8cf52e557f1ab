"""Absent teacher scores (issue 20): a teacher that did not score an item is absent there, never
a score of 0. Every ensemble (with ``teacher_where``), the distillation loss, the teacher
statistics and the groups/TFDS path are checked against float64 NumPy re-derivations that only
ever look at the scores that are present (absent slots hold NaN, so reading one would show)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pile_jax import ensemble as E

T, B, N = 3, 3, 6


def make_case():
    """[T, B, n] logits, labels, mask and presence. List 0: item 2 is scored by no teacher and
    item 5 is padding; list 1: teacher 2 scores nothing, the others everything; list 2: scattered absences. Absent and
    padded slots hold NaN."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=(B, N)).astype(np.float64)
    s = 0.7 * y[None] + rng.normal(0, 1.2, size=(T, B, N))
    m = np.ones((B, N), bool)
    m[0, 5] = False
    tw = rng.random((T, B, N)) > 0.25
    tw[:, 0, 2] = False
    tw[2, 1, :] = False
    tw[:2, 1, :] = True
    tw[:, 0, 0] = True
    s = np.where(tw & m[None], s, np.nan)
    return s, y, m, tw


def present(s, tw, m, b):
    """Teacher k's scores of list b as a dict {item: score} of the present, valid items only."""
    return [{i: float(s[k, b, i]) for i in range(N) if m[b, i] and tw[k, b, i]} for k in range(T)]


def pairs(S, y, b):
    idx = sorted({i for Sk in S for i in Sk})
    return idx, [(i, j) for i in idx for j in idx if y[b, i] > y[b, j]]


def pnr(Sk, P):
    """metrics.pnr's convention on the pairs teacher k scores both items of."""
    both = [(i, j) for i, j in P if i in Sk and j in Sk]
    c = sum(Sk[i] > Sk[j] for i, j in both)
    d = sum(Sk[i] < Sk[j] for i, j in both)
    t = sum(Sk[i] == Sk[j] for i, j in both)
    return (c + t / 2) / max(d + t / 2, 1)


# ---------------------------------------------------------------------- baseline references
def ref_baseline(name, s, y, m, tw, weights=None):
    out = np.zeros((B, N))
    for b in range(B):
        S = present(s, tw, m, b)
        idx, P = pairs(S, y, b)
        for i in idx:
            ks = [k for k in range(T) if i in S[k]]
            if name == "mean":
                out[b, i] = sum(S[k][i] for k in ks) / len(ks)
            elif name == "weighted_mean":
                out[b, i] = sum(weights[k] * S[k][i] for k in ks) / sum(weights[k] for k in ks)
            elif name == "max":
                out[b, i] = max(S[k][i] for k in ks)
            elif name == "zscore_mean":
                vals = []
                for k in ks:
                    v = np.array(list(S[k].values()))
                    sd = v.std() if v.std() > 0 else 1.0
                    vals.append((S[k][i] - v.mean()) / sd)
                out[b, i] = sum(vals) / len(vals)
            elif name == "rank_average":
                vals = []
                for k in ks:
                    nv = len(S[k])
                    rank = 1 + sum(v > S[k][i] for v in S[k].values()) + 0.5 * (sum(v == S[k][i] for v in S[k].values()) - 1)
                    vals.append((nv - rank) / max(nv - 1, 1))
                out[b, i] = sum(vals) / len(vals)
            else:  # best_teacher_per_list: the present teacher with the best PNR, ties lowest index
                best = max(ks, key=lambda k: (pnr(S[k], P), -k))
                out[b, i] = S[best][i]
    return out


@pytest.mark.parametrize("name", ["mean", "weighted_mean", "max", "zscore_mean", "rank_average",
                                  "best_teacher_per_list"])
def test_baselines_ignore_absent_scores(name):
    """Each baseline equals its float64 re-derivation over the teachers present at each item
    (weights renormalised over them; z-score/rank statistics per teacher over the items it scores)."""
    s, y, m, tw = make_case()
    opts = {"weights": [0.5, 0.3, 0.2]} if name == "weighted_mean" else {}
    with jax.enable_x64(True):
        got = np.asarray(E.ensemble(name, jnp.asarray(s), jnp.asarray(y), where=m, teacher_where=tw, **opts))
    want = ref_baseline(name, s, y, m, tw, weights=opts.get("weights"))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[0, 2] == 0.0  # no teacher scored it: no target


def test_mean_by_hand():
    """Teacher 1 did not score item 1: the mean there is teacher 0's score, not (4 + 0) / 2."""
    s = np.array([[1.0, 4.0, 3.0], [5.0, np.nan, 7.0]], np.float32)
    tw = np.array([[True, True, True], [True, False, True]])
    np.testing.assert_array_equal(np.asarray(E.mean(s, teacher_where=tw)), [3.0, 4.0, 5.0])


# -------------------------------------------------------------------------- PILE references
def _ell(loss, d):
    if loss == "logistic":
        return math.log1p(math.exp(-d)) if d > -30 else -d
    if loss == "hinge":
        return max(0.0, 1.0 - d)
    return 1.0 if d <= 0 else 0.0


def ref_pile_list(S, idx, P, variant, K=10, eta=0.5, tau=1.0, eps=0.0, lam=1.0, gamma=1.0, loss="logistic"):
    """docs/pile.md's loops with every sum over teachers running over the teachers that have the
    item (consensus: that have both items of the pair); ρ is a softmax over the present teachers."""
    have = {i: [k for k in range(T) if i in S[k]] for i in idx}
    z = {i: sum(S[k][i] for k in have[i]) / len(have[i]) for i in idx}
    zmean = dict(z)
    if variant == "consensus":
        info = {}
        for i, j in P:
            agree = [k for k in range(T) if i in S[k] and j in S[k] and S[k][i] > S[k][j]]
            if agree:
                info[(i, j)] = (sum(S[k][i] for k in agree) / len(agree), sum(S[k][j] for k in agree) / len(agree))
        for _ in range(K):
            V = [(i, j) for (i, j) in info if z[i] - z[j] <= eps]
            new = {}
            for i in idx:
                r = sum(info[v][0] - z[i] for v in V if v[0] == i) + sum(info[v][1] - z[i] for v in V if v[1] == i)
                c = sum(v[0] == i for v in V) + sum(v[1] == i for v in V)
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
                L = {k: sum(_ell(loss, S[k][i] - z[b]) if a == i else _ell(loss, z[a] - S[k][i]) for a, b in partners)
                     for k in have[i]}
                mx = max(-v / tau for v in L.values())
                w = {k: math.exp(-v / tau - mx) for k, v in L.items()}
                new[i] = (1 - eta) * z[i] + eta * sum(w[k] * S[k][i] for k in w) / sum(w.values())
            z = new
    else:
        step = 1.0 / (2.0 + lam * (max(len(idx), 1) - 1) / (2 * tau))
        for _ in range(K):
            grad = {i: 2.0 * (z[i] - zmean[i]) for i in idx}
            for i, j in P:
                x = (z[i] - z[j] - gamma) / tau
                g = 1.0 / (1.0 + math.exp(x)) if x < 700 else 0.0
                grad[i] -= lam * g
                grad[j] += lam * g
            z = {i: z[i] - step * grad[i] for i in idx}
    return z


def _credit(d):
    return 2 if d > 0 else (1 if d == 0 else 0)


def ref_sequential_list(S, idx, P):
    """Teachers by PNR on the pairs they score both items of (ties: index); from the best, merge
    the next one: items both have -> (1 - w) z + w s, items only z has -> z, items only the
    teacher has -> s. w = the smallest maximiser of the pair accuracy over the labelled pairs of
    the merged list, searched over w = 0, 1 and the midpoints between the roots of every pair's
    (linear in w) difference -- each candidate scored by building the merged list directly."""
    if not P:
        return {i: sum(S[k][i] for k in range(T) if i in S[k]) / sum(i in S[k] for k in range(T)) for i in idx}
    order = sorted(range(T), key=lambda k: (-pnr(S[k], P), k))
    z = dict(S[order[0]])
    for k in order[1:]:
        sk = S[k]

        def merged(w):
            out = {i: v for i, v in sk.items() if i not in z}
            out.update({i: (v if i not in sk else (v if w == 0.0 else sk[i] if w == 1.0 else (1 - w) * v + w * sk[i]))
                        for i, v in z.items()})
            return out

        at0, at1 = merged(0.0), merged(1.0)
        Pw = [(i, j) for i, j in P if i in at0 and j in at0]
        roots = set()
        for i, j in Pw:
            dz, ds = at0[i] - at0[j], at1[i] - at1[j]
            if (dz > 0 > ds) or (dz < 0 < ds):
                roots.add(dz / (dz - ds))
        bounds = [0.0] + sorted(roots) + [1.0]
        cands = [0.0] + [(a + b) / 2 for a, b in zip(bounds, bounds[1:]) if a < b] + [1.0]
        best_w, best = None, -1
        for w in cands:
            v = merged(w)
            score = sum(_credit(v[i] - v[j]) for i, j in Pw)
            if score > best:
                best_w, best = w, score
        z = merged(best_w)
    return z


VARIANTS = [("consensus", {}), ("responsibility", {"loss": "hinge", "temperature": 0.5}),
            ("regularised", {"lam": 0.5}), ("sequential", {})]


@pytest.mark.parametrize("variant,opts", VARIANTS)
def test_pile_variants_ignore_absent_scores(variant, opts):
    """Each PILE variant with absent scores equals a float64 loop re-derivation of docs/pile.md in
    which each teacher's list is a dict of the items it scored (so an absent score cannot be
    read): the reference is written from the spec, not from the vectorised code. A list where a
    teacher scores nothing (list 1) must also equal PILE run without that teacher (the code path
    with no mask at all)."""
    s, y, m, tw = make_case()
    kw = {"damping": "eta", "temperature": "tau", "lam": "lam", "loss": "loss"}
    with jax.enable_x64(True):
        got = np.asarray(E.pile(jnp.asarray(s), jnp.asarray(y), where=m, teacher_where=tw, variant=variant, **opts))
    for b in range(B):
        S = present(s, tw, m, b)
        idx, P = pairs(S, y, b)
        z = (ref_sequential_list(S, idx, P) if variant == "sequential"
             else ref_pile_list(S, idx, P, variant, **{kw[k]: v for k, v in opts.items()}))
        want = np.array([z.get(i, 0.0) for i in range(N)])
        np.testing.assert_allclose(got[b], want, rtol=1e-9, atol=1e-9, err_msg=f"list {b}")
    dropped = np.asarray(E.pile(np.float32(s[:2, 1:2]), np.float32(y[1:2]), variant=variant, **opts))
    np.testing.assert_allclose(got[1:2], dropped, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- distillation and statistics
def test_distillation_loss_ignores_an_item_no_teacher_scored():
    """margin_mse against the mean target: item 1 of list 0 has no teacher score (its slots hold
    999 garbage) and must get no target: the loss is the float64 mean over lists of the mean over
    ordered pairs of the other valid items of ((s_i - s_j) - (t_i - t_j))^2, t = the mean of the
    present teachers; with target: teacher 1 only teacher 1's scored items count."""
    from pile_jax.train.objective import compute_loss

    ts = np.array([[[1.0, 999.0, 3.0, 0.5], [2.0, 999.0, 1.0, 0.0]],
                   [[0.0, 1.0, 2.0, 3.0], [4.0, 2.0, 2.5, 1.0]]], np.float32)          # [B, T, n]
    tm = np.array([[[True, False, True, True], [True, False, False, True]],
                   [[True, True, True, True], [True, True, True, False]]])
    batch = {"labels": np.zeros((2, 4), np.float32), "label_mask": np.ones((2, 4), bool),
             "mask": np.ones((2, 4), bool), "teacher_scores": ts, "teacher_mask": tm}
    scores = np.array([[0.3, -1.0, 0.8, 0.1], [1.0, 0.2, -0.4, 0.6]], np.float32)

    def ref(target_of):
        per_list = []
        for b in range(2):
            t = {i: target_of(b, i) for i in range(4)}
            t = {i: v for i, v in t.items() if v is not None}
            pr = [(i, j) for i in t for j in t if i != j]
            per_list.append(np.mean([((scores[b, i] - scores[b, j]) - (t[i] - t[j])) ** 2 for i, j in pr]))
        return float(np.mean(per_list))

    def mean_target(b, i):
        v = [float(ts[b, k, i]) for k in range(2) if tm[b, k, i]]
        return sum(v) / len(v) if v else None

    obj = {"distill_losses": {"margin_mse": 1.0}, "ensemble": {"name": "mean"}}
    loss, _ = compute_loss(jnp.asarray(scores), batch, obj)
    assert float(loss) == pytest.approx(ref(mean_target), rel=1e-5)
    obj = {"distill_losses": {"margin_mse": 1.0}, "target": "teacher", "teacher_index": 1}
    loss, _ = compute_loss(jnp.asarray(scores), batch, obj)
    assert float(loss) == pytest.approx(ref(lambda b, i: float(ts[b, 1, i]) if tm[b, 1, i] else None), rel=1e-5)


def test_teacher_stats_use_only_present_scores():
    from pile_jax.prepare import standardise, teacher_stats

    groups = {"mask": np.array([[True, True, True]]), "teacher_names": ["a", "b"],
              "teacher_scores": np.array([[[1.0, 2.0, 6.0], [4.0, 0.0, 8.0]]], np.float32),
              "teacher_mask": np.array([[[True, True, True], [True, False, True]]])}
    mu, sd = teacher_stats(groups)
    np.testing.assert_allclose(mu, [3.0, 6.0])                        # b: (4 + 8) / 2, not (4 + 0 + 8) / 3
    np.testing.assert_allclose(sd, [math.sqrt(14 / 3), 2.0])
    out = standardise(groups, mu, sd)["teacher_scores"]
    np.testing.assert_allclose(out[0, 1], [-1.0, 0.0, 1.0])          # the absent slot stays 0


def test_groups_and_tfds_carry_the_teacher_mask(tmp_path):
    """build_groups(missing_scores="absent") marks a missing score absent (score 0, mask False)
    instead of raising; the mask survives take/iter/stack and an ArrayRecord round trip."""
    from pile_jax.data import build_groups, stack_group_examples, take_groups, teacher_mask_of
    from pile_jax.data.groups import iter_group_examples
    from pile_jax.data.tfds_builder import build_ranking_groups_dataset, records_to_groups

    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 2, "d": 0}}
    cands = {"q1": ["a", "b", "x"], "q2": ["c", "d"]}
    teachers = {"t1": {"q1": {"a": 1.0, "b": 2.0, "x": 3.0}, "q2": {"c": 1.0, "d": 0.5}},
                "t2": {"q1": {"a": 5.0, "x": 4.0}, "q2": {"c": 2.0, "d": 1.5}}}
    groups, _ = build_groups(qrels, cands, teachers, group_size=3, missing_scores="absent")
    np.testing.assert_array_equal(groups["teacher_mask"][0], [[True, True, True], [True, False, True]])
    np.testing.assert_array_equal(groups["teacher_mask"][1], [[True, True, False], [True, True, False]])
    assert groups["teacher_scores"][0, 1, 1] == 0.0
    back = stack_group_examples(list(iter_group_examples(take_groups(groups, [1, 0]))))
    np.testing.assert_array_equal(back["teacher_mask"], groups["teacher_mask"][[1, 0]])
    builder = build_ranking_groups_dataset({"train": groups}, tmp_path, "absent_n3_t2")
    src = builder.as_data_source()["train"]
    read = records_to_groups([src[i] for i in range(len(src))])
    np.testing.assert_array_equal(read["teacher_mask"], groups["teacher_mask"])
    plain = {k: v for k, v in groups.items() if k != "teacher_mask"}
    np.testing.assert_array_equal(teacher_mask_of(plain), np.broadcast_to(groups["mask"][:, None], (2, 2, 3)))


def test_global_weight_fits_use_complete_cases_only():
    """pile_carry / weighted_fit weights: an item a teacher did not score (garbage 1e6 there) is
    left out; on the rest s0 = [1, 2], s1 = [3, 2] and the target [2, 2] is w = (1/2, 1/2) exactly
    (mse 0); with labels [0, 1, 2] the only complete labelled pair is (1, 0), which s0 orders
    (margin +1) and s1 reverses (-1): accuracy 1 needs w0 > 1/2 (the grid's nearest to uniform:
    0.51). Reading the absent 1e6 would favour s1 instead."""
    from pile_jax import ensemble_fit as F

    ts = np.array([[[1.0, 2.0, 3.0]], [[3.0, 2.0, 1e6]]])
    tw = np.array([[[True, True, True]], [[True, True, False]]])
    w, mse = F.fit_mse_weights(ts, np.array([[2.0, 2.0, 0.0]]), np.ones((1, 3), bool), teacher_where=tw)
    np.testing.assert_allclose(w, [0.5, 0.5])
    assert mse == pytest.approx(0.0, abs=1e-12)
    w, acc = F.fit_pair_accuracy_weights(ts, np.array([[0.0, 1.0, 2.0]]), np.ones((1, 3), bool), teacher_where=tw)
    assert acc == 1.0
    np.testing.assert_allclose(w, [0.51, 0.49])
