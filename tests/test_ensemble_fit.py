"""Global teacher weights fitted on labelled lists (pile_jax.ensemble_fit) against hand-computed
values and brute-force float64 loops."""

import math

import numpy as np
import pytest

from pile_jax import ensemble_fit as F


def test_simplex_grid_points_and_size():
    g = F.simplex_grid(3, max_points=5000)
    assert g.shape == (math.comb(98 + 2, 2), 3) and math.comb(99 + 2, 2) > 5000 and np.allclose(g.sum(1), 1.0) and (g >= 0).all()
    assert F.simplex_grid(4, max_points=2000).shape[0] <= 2000
    assert F.simplex_grid(1).tolist() == [[1.0]]


def test_pair_accuracy_weights_hand_computed():
    # one list, labels (2, 1, 0); teacher 0 = (0, 1, 2) reverses all 3 pairs, teacher 1 = (2, 1, 0)
    # orders them all: w = (0, 1) reaches accuracy 1; every w with w1 > 1/2 does too, and the point
    # nearest the uniform (1/2, 1/2) among them is w1 = 0.51 on the 1/100 grid
    s = np.array([[[0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]]])
    y = np.array([[2.0, 1.0, 0.0]])
    w, acc = F.fit_pair_accuracy_weights(s, y, np.ones((1, 3), bool))
    assert acc == 1.0 and w == pytest.approx([0.49, 0.51])
    # pooled accuracy of an explicit scoring, ties half: (1, 1, 0) -> pairs (0,1) tie, (0,2) ok, (1,2) ok
    assert F.pooled_pair_accuracy(np.array([[1.0, 1.0, 0.0]]), y, np.ones((1, 3), bool)) == pytest.approx(2.5 / 3)


def test_pair_accuracy_weights_match_brute_force():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 30, 6))
    y = rng.integers(0, 3, size=(30, 6)).astype(float)
    m = rng.random((30, 6)) < 0.9
    w, acc = F.fit_pair_accuracy_weights(s, y, m, max_points=300)

    def brute(wv):
        ok = tot = 0.0
        for b in range(30):
            z = np.tensordot(wv, s[:, b], 1)
            for i in range(6):
                for j in range(6):
                    if m[b, i] and m[b, j] and y[b, i] > y[b, j]:
                        tot += 1
                        ok += 1.0 if z[i] > z[j] else (0.5 if z[i] == z[j] else 0.0)
        return ok / tot

    assert acc == pytest.approx(brute(w), abs=1e-12)
    grid = F.simplex_grid(3, 300)
    assert acc >= max(brute(g) for g in grid[::7]) - 1e-12


def test_mse_weights_recover_a_convex_combination():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 10, 5))
    target = 0.25 * s[0] + 0.0 * s[1] + 0.75 * s[2]
    m = np.ones((10, 5), bool)
    m[0, 2] = False
    target[0, 2] = 99.0          # outside `where`: ignored
    w, mse = F.fit_mse_weights(s, target, m, max_points=6000)  # the 1/100 grid
    assert w == pytest.approx([0.25, 0.0, 0.75]) and mse == pytest.approx(0.0, abs=1e-12)
