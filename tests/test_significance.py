"""Paired tests and Holm's correction against SciPy / statsmodels-free hand-computed values."""

import itertools

import numpy as np
import pytest

from pile_jax import significance as S

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("a, b, x", [(0.5, 0.5, 0.3), (2.0, 0.5, 0.99), (161.0, 0.5, 0.97), (3.0, 7.0, 0.01),
                                     (0.5, 0.5, 1e-9)])
def test_betainc_matches_scipy(a, b, x):
    assert S.betainc(a, b, x) == pytest.approx(float(scipy_special.betainc(a, b, x)), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("n, shift", [(5, 0.1), (40, 0.02), (323, 0.01), (323, 0.0)])
def test_paired_t_matches_scipy(n, shift):
    rng = np.random.default_rng(n)
    b = rng.random(n)
    a = np.clip(b + shift + rng.normal(0, 0.1, n), 0, 1)
    got = S.paired_t_test(a, b)
    want = scipy_stats.ttest_rel(a, b)
    assert got["t"] == pytest.approx(float(want.statistic), rel=1e-10)
    assert got["p"] == pytest.approx(float(want.pvalue), rel=1e-8, abs=1e-15)
    assert got["df"] == n - 1


def test_paired_t_degenerate_differences():
    assert S.paired_t_test([0.3, 0.5], [0.3, 0.5])["p"] == 1.0
    assert S.paired_t_test([1.5, 2.5], [1.0, 2.0])["p"] == 0.0  # d = (0.5, 0.5) exactly: infinite t
    with pytest.raises(ValueError, match="equal length"):
        S.paired_t_test([1.0, 2.0], [1.0])


def test_permutation_exact_by_hand():
    # d = (1, 2, 3): |mean| = 2; of the 8 sign vectors only (+,+,+) and (-,-,-) reach |sum| 6 -> p = 2/8
    assert S.permutation_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])["p"] == pytest.approx(0.25)
    # d = (1, -1, 2): count the sign vectors with |sum| >= 2 by enumeration (sums 2, 4, 0, 2, -2, 0, -4, -2: 6 of 8)
    d = np.array([1.0, -1.0, 2.0])
    hits = sum(abs(np.dot(s, d)) >= 2 for s in itertools.product([-1, 1], repeat=3))
    assert hits == 6 and S.permutation_test(d, np.zeros(3))["p"] == pytest.approx(6 / 8)


def test_permutation_random_draws_near_t_test_and_scipy():
    rng = np.random.default_rng(3)
    b = rng.random(200)
    a = b + 0.015 + rng.normal(0, 0.1, 200)
    got = S.permutation_test(a, b, draws=20000, seed=1)
    want = scipy_stats.permutation_test((a - b,), np.mean, permutation_type="samples", n_resamples=20000,
                                        alternative="two-sided", random_state=0).pvalue
    assert not got["exact"] and got["p"] == pytest.approx(float(want), abs=0.01)


def test_holm_hand_computed():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 0.5)
    got = S.holm({"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02})
    assert got == pytest.approx({"a": 0.06, "b": 0.04, "c": 0.5, "d": 0.06})
    assert S.holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_against_reference_matches_scipy_and_hand_holm():
    rng = np.random.default_rng(7)
    qids = [f"q{i}" for i in range(30)]
    ref = {q: float(rng.random()) for q in qids}
    sys_a = {q: ref[q] + 0.05 + float(rng.normal(0, 0.1)) for q in reversed(qids)}   # another key order
    sys_b = {q: ref[q] + float(rng.normal(0, 0.1)) for q in qids}
    got = S.against_reference({"ref": ref, "a": sys_a, "b": sys_b}, {"ref": "ref", "a": "ref", "b": "ref"})
    p = {n: float(scipy_stats.ttest_rel([s[q] for q in qids], [ref[q] for q in qids]).pvalue)
         for n, s in (("a", sys_a), ("b", sys_b))}
    lo, hi = sorted(p, key=p.get)
    holm_want = {lo: min(1.0, 2 * p[lo]), hi: max(min(1.0, 2 * p[lo]), min(1.0, p[hi]))}
    assert got["ref"]["p"] is None and got["ref"]["p_holm"] is None and got["ref"]["reference"] == "ref"
    for n in ("a", "b"):
        assert got[n]["p"] == pytest.approx(p[n], rel=1e-8)
        assert got[n]["p_holm"] == pytest.approx(holm_want[n], rel=1e-8)
        assert got[n]["test"] == "paired_t" and got[n]["reference"] == "ref"
    with pytest.raises(ValueError, match="same queries"):
        S.against_reference({"ref": ref, "a": {q: 0.0 for q in qids[:-1]}}, {"a": "ref"})


def test_run_results_significance_on_seed_averaged_ndcg(tmp_path):
    """pile-jax run's paired tests: per-query NDCG@10 (one relevant document at rank r: 1/log2(r+1),
    computed here by hand) averaged over seeds, each student vs the reference, Holm across them."""
    from pile_jax.pipeline import _RunBook, _significance
    from pile_jax.report import markdown_table

    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(12)]
    qrels = {q: {"rel": 1} for q in qids}
    book = _RunBook(tmp_path / "runs", qids, qrels, lambda m: None)
    ranks = {}

    def add(system, seed):
        r = {q: int(rng.integers(1, 9)) for q in qids}   # the relevant document's rank (1-based, top 8)
        run = {q: {**{f"d{j}": 10.0 - j for j in range(1, 9) if j < r[q]}, "rel": 10.0 - r[q],
                   **{f"d{j}": 9.0 - j for j in range(r[q], 8)}} for q in qids}
        ranks.setdefault(system, []).append(r)
        book.add(system, seed, run)

    book.add("bm25", None, {q: {"rel": 1.0} for q in qids})        # not a student: untested
    for seed in (0, 1):
        add("student_mean_margin_mse", seed)
        add("student_pile_margin_mse", seed)
    add("student_init", None)
    out = _significance({"reference": "mean_margin_mse"}, book, lambda m: None)
    ndcg = {s: {q: np.mean([1.0 / np.log2(r[q] + 1) for r in rs]) for q in qids} for s, rs in ranks.items()}
    ref = [ndcg["student_mean_margin_mse"][q] for q in qids]
    p = {s: float(scipy_stats.ttest_rel([ndcg[s][q] for q in qids], ref).pvalue)
         for s in ("student_pile_margin_mse", "student_init")}
    lo, hi = sorted(p, key=p.get)
    holm_want = {lo: min(1.0, 2 * p[lo]), hi: max(min(1.0, 2 * p[lo]), min(1.0, p[hi]))}
    sig = out["significance"]
    assert set(sig) == {"student_mean_margin_mse", "student_pile_margin_mse", "student_init"}
    assert sig["student_mean_margin_mse"]["p"] is None
    for s in p:
        # trec_eval's NDCG carries ~1e-8 rounding (its log2 and sums), hence 1e-6 here
        assert sig[s]["p"] == pytest.approx(p[s], rel=1e-6) and sig[s]["p_holm"] == pytest.approx(holm_want[s], rel=1e-6)
        assert out["per_query"][s] == pytest.approx(ndcg[s], rel=1e-6)
    assert out["significance_setup"]["family"] == ["student_init", "student_pile_margin_mse"]
    assert _significance({}, book, lambda m: None) == {}
    table = markdown_table(book.summary(), sig).splitlines()
    assert table[0].endswith("| p | Holm p |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert rows["student_mean_margin_mse"].endswith("| ref | ref |") and rows["bm25"].endswith("| | |")
    assert rows["student_init"].endswith(f"| {sig['student_init']['p']:.3f} | {sig['student_init']['p_holm']:.3f} |") \
        or sig["student_init"]["p"] < 0.001


def test_paired_test_settings_do_not_change_a_students_run_spec():
    """students.reference / students.test only choose the report's tests: a rerun that adds them (or
    another run) resumes the finished students instead of training them again; a training key does not."""
    from pile_jax.workfolders import student_run_spec

    base = {"students": {"seeds": [0, 1], "train": {"steps": 4}, "runs": {"a": {"label_losses": {"x": 1.0}}}}}
    more = {"students": dict(base["students"], reference="a", test="permutation",
                             runs={**base["students"]["runs"], "b": {"label_losses": {"y": 1.0}}})}
    assert student_run_spec(more, "a", 0) == student_run_spec(base, "a", 0)
    changed = {"students": dict(base["students"], train={"steps": 5})}
    assert student_run_spec(changed, "a", 0) != student_run_spec(base, "a", 0)
