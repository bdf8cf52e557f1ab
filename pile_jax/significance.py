"""Paired significance tests over queries, and Holm's step-down correction (NumPy only).

Used by ``pile-jax study`` to compare each system's per-query metric with a reference system's
on the same queries.

* :func:`paired_t_test`: Student's paired t-test, ``d_q = a_q - b_q``,
  ``t = mean(d) / (sd(d) / sqrt(n))`` (``sd`` with ``n - 1``), two-sided
  ``p = I_{ν/(ν+t²)}(ν/2, 1/2)`` with ``ν = n - 1`` (the regularised incomplete beta function,
  evaluated here by its continued fraction).
* :func:`permutation_test`: the sign-flip randomisation test of the mean difference,
  ``p = (1 + #{b : |mean(ε_b d)| >= |mean(d)|}) / (1 + B)`` over ``B`` random sign vectors ``ε_b``
  (exact enumeration of all ``2^n`` sign vectors when ``2^n <= B``, then ``p = #{...} / 2^n``).
* :func:`holm`: Holm–Bonferroni adjusted p-values, ``p_(i)^adj = max_{j <= i} min(1, (m - j + 1) p_(j))``
  over the p-values sorted ascending.
* :func:`against_reference`: each system's paired test against its reference system on the same
  queries, Holm-corrected across all the tested systems (the family); used by ``pile-jax study``
  and the results table of ``pile-jax run``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["paired_t_test", "permutation_test", "holm", "paired_test", "against_reference", "TESTS", "betainc"]

TESTS = ("paired_t", "permutation")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, relative tol 1e-15)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc: need a, b > 0, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired test: need two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired test: values must be finite")
    return a - b


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided paired t-test of ``mean(a - b) = 0``: ``{t, df, p, mean_diff, n}``.

    All differences equal: ``p = 1`` when they are all 0, else ``p = 0`` (an infinite t).
    """
    d = _diffs(a, b)
    n = d.size
    if n < 2:
        raise ValueError(f"paired t-test: need at least 2 pairs, got {n}")
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return {"t": t, "df": n - 1, "p": 1.0 if mean == 0.0 else 0.0, "mean_diff": mean, "n": n}
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    p = betainc(df / 2.0, 0.5, df / (df + t * t))
    return {"t": t, "df": df, "p": float(min(1.0, max(0.0, p))), "mean_diff": mean, "n": n}


def permutation_test(a: Sequence[float], b: Sequence[float], *, draws: int = 10_000, seed: int = 0) -> dict:
    """Two-sided sign-flip randomisation test of the mean paired difference:
    ``{p, mean_diff, n, draws, exact}`` (module docstring)."""
    d = _diffs(a, b)
    n = d.size
    if n < 1:
        raise ValueError("permutation test: need at least 1 pair")
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= 20 and 2 ** n <= draws:
        signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1)
        stats = np.abs(signs @ d) / n
        return {"p": float(np.mean(stats >= obs - tol)), "mean_diff": float(d.mean()), "n": n,
                "draws": int(2 ** n), "exact": True}
    rng = np.random.default_rng(seed)
    count = 0
    chunk = 1000
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
        count += int(np.sum(np.abs(signs @ d) / n >= obs - tol))
    return {"p": (1 + count) / (1 + draws), "mean_diff": float(d.mean()), "n": n, "draws": int(draws),
            "exact": False}


def paired_test(test: str, a: Sequence[float], b: Sequence[float], **kw) -> dict:
    """``paired_t`` or ``permutation`` by name."""
    if test == "paired_t":
        return paired_t_test(a, b)
    if test == "permutation":
        return permutation_test(a, b, **kw)
    raise ValueError(f"unknown paired test {test!r} (known: {', '.join(TESTS)})")


def holm(pvalues: Mapping[str, float] | Sequence[float]):
    """Holm–Bonferroni adjusted p-values (same keys / order as the input)."""
    keys = list(pvalues) if isinstance(pvalues, Mapping) else None
    p = np.asarray([pvalues[k] for k in keys] if keys is not None else list(pvalues), np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    if keys is not None:
        return {k: float(v) for k, v in zip(keys, adj)}
    return [float(v) for v in adj]


def against_reference(per_query: Mapping[str, Mapping[str, float]], reference: Mapping[str, str],
                      test: str = "paired_t", **kw) -> dict[str, dict]:
    """Paired tests of systems against their references over the same queries, Holm-corrected.

    ``per_query``: system -> {query id -> metric}; ``reference``: tested system -> its reference
    system (a system mapped to itself is the reference: ``p`` and ``p_holm`` are None). Each
    test pairs ``a_q`` (system) with ``b_q`` (reference) over the reference's queries, which the
    system must have exactly. Returns system -> ``{reference, test, p, p_holm, mean_diff, ...}``
    (the test's own fields), with ``p_holm`` by :func:`holm` over every tested system.
    """
    if test not in TESTS:
        raise ValueError(f"unknown paired test {test!r} (known: {', '.join(TESTS)})")
    out: dict[str, dict] = {}
    raw: dict[str, float] = {}
    for name, ref in reference.items():
        out[name] = {"reference": ref, "test": test, "p": None, "p_holm": None}
        if name == ref:
            continue
        for s in (name, ref):
            if s not in per_query:
                raise ValueError(f"paired test: no per-query values for system {s!r}")
        qids = sorted(per_query[ref])
        if sorted(per_query[name]) != qids:
            raise ValueError(f"paired test: {name!r} and {ref!r} are not scored on the same queries")
        r = paired_test(test, [per_query[name][q] for q in qids], [per_query[ref][q] for q in qids], **kw)
        out[name].update(r)
        raw[name] = r["p"]
    for name, p in (holm(raw) if raw else {}).items():
        out[name]["p_holm"] = p
    return out
