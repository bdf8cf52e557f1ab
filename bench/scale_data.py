"""Synthetic MS MARCO passage-layout collection for ``bench/scale.py`` (vectorised NumPy + Arrow).

``write_collection(folder, fraction)`` writes, at ``fraction`` of MS MARCO passage (1.0 = 8.8M
passages of ~56 words, 500k training queries, 40M margin lines, 7,000 dev queries with a first-stage
run of 1,000 candidates each):

    collection.tsv           pid<TAB>passage
    queries.train.tsv        qid<TAB>text           queries.dev.small.tsv
    qrels.train.tsv          qid<TAB>0<TAB>pid<TAB>1 qrels.dev.small.tsv
    teacher_margin.tsv       pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid   (80 lines per train query)
    teacher_run.trec         qid Q0 pid rank score tag   (the positive + half of the margin negatives)
    dev_run.trec             qid Q0 pid rank score tag   (1,000 candidates per dev query, positive included)

What is learnable: every query is 4 words (drawn from the less frequent part of the vocabulary)
planted at random positions of its one positive passage; the other words of every passage follow
a Zipf law over the vocabulary (words of all-MiniLM-L6-v2's WordPiece vocabulary, so one word is one
token). The margin teacher gives the positive ``N(8, 1.5)`` and a negative ``N(0, 2)``; the second
teacher (a "listwise LLM" TREC run) is the margin teacher plus noise ``N(0, 1)``, ranked, and
scores the positive and a random half of the negatives only (so absent scores occur). Negatives of a
query are distinct random passages. The generator is for the benchmark only: nothing here is
imported by the library or by the tests.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

FULL = {"passages": 8_800_000, "train_queries": 500_000, "margin_per_query": 80, "dev_queries": 7_000,
        "dev_depth": 1_000}
QUERY_WORDS = 4
MIN_WORDS, MAX_WORDS = 40, 72          # passage length uniform in [40, 72] words: mean 56
CHUNK = 200_000                        # passages (or queries) per write


def sizes(fraction: float) -> dict:
    """The counts at ``fraction`` of MS MARCO passage (dev queries at least 10)."""
    n = max(int(round(FULL["passages"] * fraction)), 2_000)
    return {"passages": n, "train_queries": max(int(round(FULL["train_queries"] * fraction)), 20),
            "margin_per_query": FULL["margin_per_query"], "dev_queries": max(int(round(FULL["dev_queries"] * fraction)), 10),
            "dev_depth": min(FULL["dev_depth"], n - 1)}


def vocabulary() -> np.ndarray:
    """Whole-word WordPiece tokens of all-MiniLM-L6-v2 (lowercase letters, 3-12 characters)."""
    from pile_jax.models.hub import resolve_model_path

    with open(os.path.join(resolve_model_path("all-MiniLM-L6-v2"), "vocab.txt"), encoding="utf-8") as f:
        words = [w.strip() for w in f]
    return np.array([w for w in words if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 12])


def _join(vocab: pa.Array, idx: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Rows of word indices (``idx [n, W]``, the first ``lengths[i]`` used) as space-joined strings."""
    keep = np.arange(idx.shape[1])[None, :] < lengths[:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    words = vocab.take(pa.array(idx[keep].astype(np.int32)))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")


def _write(path: str, columns: dict, *, delimiter: str = "\t", append: bool) -> None:
    table = pa.table(columns)
    opts = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
    with open(path, "ab" if append else "wb") as f:
        pacsv.write_csv(table, f, write_options=opts)


def _distinct_others(rng, anchor: np.ndarray, k: int, n: int) -> np.ndarray:
    """``[len(anchor), k]`` distinct passages per row, none equal to the row's anchor:
    ``(anchor + cumsum(gaps)) % n`` with gaps in ``[1, (n - 1) // k]``."""
    gaps = rng.integers(1, max((n - 1) // k, 1) + 1, size=(len(anchor), k))
    return (anchor[:, None] + np.cumsum(gaps, axis=1)) % n


def write_collection(folder: str, fraction: float, *, seed: int = 0, log=print) -> dict:
    """Writes the files of the module docstring into ``folder``; returns the sizes (and seconds)."""
    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    s = sizes(fraction)
    rng = np.random.default_rng(seed)
    words = vocabulary()
    vocab = pa.array(words)
    V = len(words)
    zipf = 1.0 / (np.arange(V) + 20.0)
    cdf = np.cumsum(zipf / zipf.sum())
    n, qt, qd = s["passages"], s["train_queries"], s["dev_queries"]
    positives = rng.permutation(n)[:qt + qd]                    # one positive passage per query, distinct
    qwords = rng.integers(min(2000, V // 4), V, size=(qt + qd, QUERY_WORDS))
    qpos = np.argsort(rng.random((qt + qd, MIN_WORDS)), axis=1)[:, :QUERY_WORDS]
    owner = np.full(n, -1, np.int64)
    owner[positives] = np.arange(qt + qd)
    # passages
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        lengths = rng.integers(MIN_WORDS, MAX_WORDS + 1, size=stop - start)
        idx = np.searchsorted(cdf, rng.random((stop - start, MAX_WORDS))).astype(np.int64)
        rows = np.nonzero(owner[start:stop] >= 0)[0]
        q = owner[start:stop][rows]
        idx[rows[:, None], qpos[q]] = qwords[q]
        _write(os.path.join(folder, "collection.tsv"),
               {"pid": np.arange(start, stop), "text": _join(vocab, idx, lengths)}, append=start > 0)
    log(f"collection.tsv: {n} passages ({time.perf_counter() - t0:.0f}s)")
    qids = np.arange(1, qt + qd + 1) * 7 + 3                   # sparse integer ids, as MS MARCO's
    for split, lo, hi in (("train", 0, qt), ("dev.small", qt, qt + qd)):
        _write(os.path.join(folder, f"queries.{split}.tsv"),
               {"qid": qids[lo:hi], "text": _join(vocab, qwords[lo:hi], np.full(hi - lo, QUERY_WORDS))}, append=False)
        _write(os.path.join(folder, f"qrels.{split}.tsv"),
               {"qid": qids[lo:hi], "z": np.zeros(hi - lo, np.int64), "pid": positives[lo:hi],
                "grade": np.ones(hi - lo, np.int64)}, append=False)
    _write_teachers(folder, rng, qids[:qt], positives[:qt], n, s["margin_per_query"])
    log(f"teachers: {qt * s['margin_per_query']} margin lines ({time.perf_counter() - t0:.0f}s)")
    _write_dev_run(folder, rng, qids[qt:], positives[qt:], n, s["dev_depth"])
    s["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"dev_run.trec: {qd} queries x {s['dev_depth']} ({s['seconds']}s in all)")
    return s


def _write_teachers(folder, rng, qids, positives, n, k) -> None:
    """``teacher_margin.tsv`` (k lines per query, lines shuffled within each chunk of queries) and
    ``teacher_run.trec`` (the positive + a random half of the negatives, ranked)."""
    per = CHUNK // k * 4
    for start in range(0, len(qids), per):
        q, pos = qids[start:start + per], positives[start:start + per]
        neg = _distinct_others(rng, pos, k, n)
        pos_s = rng.normal(8.0, 1.5, size=len(q)).astype(np.float32)
        neg_s = rng.normal(0.0, 2.0, size=neg.shape).astype(np.float32)
        order = rng.permutation(neg.size)
        _write(os.path.join(folder, "teacher_margin.tsv"),
               {"pos": np.repeat(pos_s, k)[order], "neg": neg_s.ravel()[order], "qid": np.repeat(q, k)[order],
                "pos_pid": np.repeat(pos, k)[order], "neg_pid": neg.ravel()[order]}, append=start > 0)
        half = np.argsort(rng.random(neg.shape), axis=1)[:, :k // 2]
        docs = np.concatenate([pos[:, None], np.take_along_axis(neg, half, 1)], axis=1)
        score = np.concatenate([pos_s[:, None], np.take_along_axis(neg_s, half, 1)], axis=1)
        score = (score + rng.normal(0.0, 1.0, size=score.shape)).astype(np.float32)
        _write_ranked(os.path.join(folder, "teacher_run.trec"), q, docs, score, "llm", append=start > 0)


def _write_ranked(path, qids, docs, score, tag, *, append) -> None:
    """A TREC run of ``docs [Q, k]`` scored ``score [Q, k]``: per query by score descending, ranks 1..k."""
    order = np.argsort(-score, axis=1, kind="stable")
    docs, score = np.take_along_axis(docs, order, 1), np.take_along_axis(score, order, 1)
    m = docs.size
    _write(path, {"qid": np.repeat(qids, docs.shape[1]), "q0": pa.repeat(pa.scalar("Q0"), m), "pid": docs.ravel(),
                  "rank": np.tile(np.arange(1, docs.shape[1] + 1), len(qids)), "score": score.ravel(),
                  "tag": pa.repeat(pa.scalar(tag), m)}, delimiter=" ", append=append)


def _write_dev_run(folder, rng, qids, positives, n, depth) -> None:
    """``dev_run.trec``: per dev query its positive + ``depth - 1`` distinct others; the positive's
    first-stage score ``N(12, 2)``, the others' ``N(8, 2)`` (the positive usually in the top 20)."""
    per = max(CHUNK // depth * 4, 1)
    for start in range(0, len(qids), per):
        q, pos = qids[start:start + per], positives[start:start + per]
        docs = np.concatenate([pos[:, None], _distinct_others(rng, pos, depth - 1, n)], axis=1)
        score = rng.normal(8.0, 2.0, size=docs.shape)
        score[:, 0] += 4.0
        _write_ranked(os.path.join(folder, "dev_run.trec"), q, docs, score.astype(np.float32), "bm25",
                      append=start > 0)


if __name__ == "__main__":
    import sys

    write_collection(sys.argv[1], float(sys.argv[2]))
