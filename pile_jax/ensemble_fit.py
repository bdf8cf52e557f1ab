"""Global teacher weights fitted on labelled lists (NumPy, float64), for weighted-mean targets.

Teachers ``s[k, b, i]`` (k = 1..T, lists b, items i), graded labels ``y[b, i]``, mask
``m[b, i]`` (items that take part in labelled pairs). Labelled pairs
``P = {(b, i, j): m_bi ∧ m_bj ∧ y_bi > y_bj}`` and their teacher margins
``D[p, k] = s[k, b, i] − s[k, b, j]``.

* :func:`fit_pair_accuracy_weights`: ``w* = argmax_{w ∈ Δ} acc(w)``,
  ``acc(w) = (1/|P|) Σ_p (1[D_p·w > 0] + ½·1[D_p·w = 0])`` (the pooled label pair accuracy of
  ``Σ_k w_k s_k``), over a regular grid of the simplex ``Δ = {w ≥ 0, Σ w = 1}``; ties go to the
  point nearest the uniform weights (the mean), then to grid order.
* :func:`fit_mse_weights`: ``w* = argmin_{w ∈ Δ} Σ_{b,i: v_bi} (Σ_k w_k s[k,b,i] − z[b,i])²``
  over the same grid: the convex combination of the teachers closest to a target ``z`` (e.g. the
  PILE ensemble on labelled lists), i.e. the per-teacher trust the target implies.

Absent teacher scores (``teacher_where [T, B, n]`` False): a global weight vector mixes every
teacher, so both fits use only the complete cases -- pairs whose two items, items whose score,
every teacher has (an absent score is never read as 0).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["simplex_grid", "labelled_pair_margins", "pooled_pair_accuracy", "fit_pair_accuracy_weights",
           "fit_mse_weights"]


def simplex_grid(t: int, max_points: int = 5000) -> np.ndarray:
    """All ``w = c / G`` with non-negative integers ``c`` summing to ``G``, for the largest ``G``
    (<= 100) giving at most ``max_points`` points: ``[N, t]`` float64 (``t = 1``: ``[[1.0]]``)."""
    if t < 1:
        raise ValueError(f"simplex_grid: need t >= 1, got {t}")
    g = 100
    while g > 1 and math.comb(g + t - 1, t - 1) > max_points:
        g -= 1
    pts = [c + (g - sum(c),) for c in itertools.product(range(g + 1), repeat=t - 1) if sum(c) <= g]
    return np.asarray(pts, np.float64) / g


def labelled_pair_margins(scores: np.ndarray, labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``D [P, T]`` (``scores [T, B, n]``) or ``[P]`` (``scores [B, n]``): upper minus lower score
    of every labelled pair, lists in order, pairs in (i, j) order within a list."""
    s = np.asarray(scores, np.float64)
    single = s.ndim == 2
    s = s[None] if single else s
    y = np.asarray(labels, np.float64)
    m = np.asarray(where, bool)
    pair = m[:, :, None] & m[:, None, :] & (y[:, :, None] > y[:, None, :])   # [B, n, n]
    b, i, j = np.nonzero(pair)
    d = (s[:, b, i] - s[:, b, j]).T                                         # [P, T]
    return d[:, 0] if single else d


def pooled_pair_accuracy(scores: np.ndarray, labels: np.ndarray, where: np.ndarray) -> float:
    """Pooled label pair accuracy of ``scores [B, n]`` (ties count ½; NaN without pairs)."""
    d = labelled_pair_margins(scores, labels, where)
    if d.size == 0:
        return float("nan")
    return float(np.mean(d > 0) + 0.5 * np.mean(d == 0))


def _pick(values: np.ndarray, grid: np.ndarray, *, maximise: bool) -> int:
    best = values.max() if maximise else values.min()
    tol = 1e-12 * max(1.0, abs(best))
    ties = np.flatnonzero(np.abs(values - best) <= tol)
    dist = np.sum((grid[ties] - 1.0 / grid.shape[1]) ** 2, axis=1)
    return int(ties[np.argmin(dist)])


def _complete(where: np.ndarray, teacher_where) -> np.ndarray:
    """``where`` restricted to the items every teacher scores."""
    m = np.asarray(where, bool)
    return m if teacher_where is None else m & np.all(np.asarray(teacher_where, bool), axis=0)


def fit_pair_accuracy_weights(teacher_scores: np.ndarray, labels: np.ndarray, where: np.ndarray,
                              *, max_points: int = 5000, teacher_where=None) -> tuple[np.ndarray, float]:
    """``(w [T], acc)``: the simplex-grid weights of the best pooled label pair accuracy (on the
    items every teacher scores, when ``teacher_where`` is given)."""
    d = labelled_pair_margins(teacher_scores, labels, _complete(where, teacher_where))
    if d.shape[0] == 0:
        raise ValueError("fit_pair_accuracy_weights: no labelled pair to fit on")
    grid = simplex_grid(d.shape[1], max_points)
    acc = np.empty(len(grid))
    for a in range(0, len(grid), 64):
        z = d @ grid[a:a + 64].T
        acc[a:a + 64] = np.mean(z > 0, axis=0) + 0.5 * np.mean(z == 0, axis=0)
    k = _pick(acc, grid, maximise=True)
    return grid[k], float(acc[k])


def fit_mse_weights(teacher_scores: np.ndarray, target: np.ndarray, where: np.ndarray,
                    *, max_points: int = 5000, teacher_where=None) -> tuple[np.ndarray, float]:
    """``(w [T], mse)``: the simplex-grid weights whose ``Σ_k w_k s_k`` is nearest ``target`` in
    mean squared error over the items in ``where`` (that every teacher scores, with ``teacher_where``)."""
    s = np.asarray(teacher_scores, np.float64)
    m = _complete(where, teacher_where)
    x = s[:, m].T                                   # [N, T]
    z = np.asarray(target, np.float64)[m]
    if z.size == 0:
        raise ValueError("fit_mse_weights: no item to fit on")
    grid = simplex_grid(s.shape[0], max_points)
    gram, xz, zz = x.T @ x, x.T @ z, z @ z
    mse = (np.einsum("gk,kl,gl->g", grid, gram, grid) - 2.0 * grid @ xz + zz) / z.size
    k = _pick(mse, grid, maximise=False)
    return grid[k], float(mse[k])
