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
