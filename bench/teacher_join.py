"""Teacher files at scale: read a synthetic margin TSV / TREC run, and join two teachers.

    python bench/teacher_join.py join --pairs 4000000          # 2 teachers x 4M pairs, synthetic rows
    python bench/teacher_join.py read --lines 4000000 --dir /tmp/tj   # writes then reads the files

Run each stage under ``/usr/bin/time -v`` for its peak RSS. ``join`` builds two teachers'
:class:`~pile_jax.data.teacher_files.ScoreTriples` directly (teacher b shares half of teacher a's
pairs and adds as many new ones) and times :func:`~pile_jax.data.teacher_table.join_teachers` and
the table's save/load. ``read`` writes a margin TSV of ``--lines`` lines (``--per-query``
negatives per query, one positive each) and a TREC run of the same size, then times
:func:`~pile_jax.data.teacher_files.read_teacher_file` on each (ids are decimal integers, looked
up by a store-like object: row = int(id), as a TextStore with integer ids does by binary search).

Measured 2026-12-06 on the shared 2-core / 24 GiB machine (load average ~15, ``nice -n 10``,
``/usr/bin/time -v``):

* join, 2 teachers x 4M pairs (6M joined): 1.0 s; the join's own allocations peak at 33.5 bytes
  per input pair (inputs 12 bytes per pair); the table is 15 bytes per joined pair on disk
  (14.3 at 12M x 2 pairs: 3.8 s, 767 MB allocation peak, process peak RSS 1.25 GB).
* read, margin TSV 4M lines (8.1M entries -> 4.05M distinct): 6.0 s; 12M lines: 12.7 s, process
  peak RSS 1.35 GB (~44 bytes per extra line); TREC run 12M lines with ``transform: rank``: 11.9 s,
  1.05 GB.
* extrapolated to MS MARCO (40M margin lines + a second teacher of ~40M pairs): reading ~2.6 GB
  peak, joining ~80M input pairs x 45.5 bytes ~ 3.7 GB peak, the joined table ~60M x 14 bytes
  ~ 0.9 GB (memory-mapped afterwards): under the 8 GiB target.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import time
import tracemalloc

import numpy as np

from pile_jax.data.teacher_files import ScoreTriples, read_teacher_file
from pile_jax.data.teacher_table import TeacherTable, join_teachers

_log = logging.getLogger("bench.teacher_join")


class DecimalIds:
    """``rows(ids, missing=...)`` for ids ``"0" .. str(n - 1)``: row = the integer."""

    def __init__(self, n: int):
        self.n = n

    def rows(self, ids, *, missing="error"):
        rows = np.asarray(ids).astype(np.int64)
        return np.where((rows >= 0) & (rows < self.n), rows, -1)

    def ids_of(self, rows):
        return [str(int(r)) for r in rows]


def _triples(q, d, seed, source):
    key = np.sort((q.astype(np.int64) << 32) | d)
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    s = np.random.default_rng(seed).normal(size=len(key)).astype(np.float32)
    return ScoreTriples((key >> 32).astype(np.int32), (key & 0xFFFFFFFF).astype(np.int32), s, source)


def bench_join(pairs: int, queries: int, docs: int, folder: str) -> None:
    rng = np.random.default_rng(0)
    qa, da = rng.integers(0, queries, pairs), rng.integers(0, docs, pairs)
    a = _triples(qa, da, 1, "a")
    half = len(a) // 2
    qb = np.concatenate([a.query_rows[:half], rng.integers(0, queries, len(a) - half)])
    db = np.concatenate([a.doc_rows[:half], rng.integers(0, docs, len(a) - half)])
    b = _triples(qb, db, 2, "b")
    del qa, da, qb, db
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()   # NumPy reports its buffers to tracemalloc: the join's own allocations
    t0 = time.perf_counter()
    table = join_teachers(["a", "b"], [a, b])
    t1 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _log.info("join: allocations peak %.0f MB (%.1f bytes per input pair, inputs %.1f bytes per pair); process "
              "peak RSS %.0f MB before the join, %.0f MB after", peak / 2**20, peak / (len(a) + len(b)), 12.0, rss0, rss1)
    table.save(folder)
    t2 = time.perf_counter()
    back = TeacherTable.load(folder)
    n = sum(int(back.query(int(q))[0].shape[0]) for q in back.query_rows[:1000])
    t3 = time.perf_counter()
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    _log.info("join: %d + %d pairs -> %d joined pairs, %d queries in %.2f s; save %.2f s (%.1f MB, %.1f bytes per "
              "joined pair); load + 1000 query lookups (%d entries) %.3f s", len(a), len(b), table.nnz, len(table),
              t1 - t0, t2 - t1, size / 1e6, size / table.nnz, n, t3 - t2)


def bench_read(lines: int, per_query: int, docs: int, folder: str, reuse: bool = False) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    nq = max(lines // per_query, 1)
    margin, run = os.path.join(folder, "teacher_margin.tsv"), os.path.join(folder, "teacher_run.trec")
    t0 = time.perf_counter()
    if reuse and os.path.exists(margin) and os.path.exists(run):
        lines = 0   # (the files of an earlier call)
    with open(margin, "a" if reuse else "w") as fm, open(run, "a" if reuse else "w") as fr:
        for start in range(0, lines, 1 << 20):
            k = min(1 << 20, lines - start)
            j = np.arange(start, start + k)
            q = j // per_query
            pos = (q * 7919) % docs
            neg = (q * 7919 + 1 + j % per_query * 104729) % docs   # distinct per query (a pair never repeats)
            ps, ns = 5.0 + (q % 97) / 97.0, rng.normal(size=k)
            fm.write("".join(f"{a:.4f}\t{b:.4f}\t{c}\t{d}\t{e}\n" for a, b, c, d, e in zip(ps, ns, q, pos, neg)))
            rank = j % per_query + 1
            fr.write("".join(f"{c} Q0 {e} {r} {-r} llm\n" for c, e, r in zip(q, neg, rank)))
    t1 = time.perf_counter()
    _log.info("wrote %d margin lines + %d run lines (%d queries) in %.1f s", lines, lines, nq, t1 - t0)
    qs, ds = DecimalIds(nq), DecimalIds(docs)
    for path, fmt, transform in ((margin, "margin_tsv", "raw"), (run, "trec_run", "rank")):
        t0 = time.perf_counter()
        tr = read_teacher_file(path, format=fmt, transform=transform, queries=qs, docs=ds, outliers="accept")
        _log.info("read %s (%s, %s): %d entries in %.1f s", os.path.basename(path), fmt, transform, len(tr),
                  time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("join", "read"))
    p.add_argument("--pairs", type=int, default=4_000_000)
    p.add_argument("--lines", type=int, default=4_000_000)
    p.add_argument("--per-query", type=int, default=80)
    p.add_argument("--queries", type=int, default=500_000)
    p.add_argument("--docs", type=int, default=8_841_823)
    p.add_argument("--dir", default="/tmp/pile_jax_teacher_join")
    p.add_argument("--reuse", action="store_true", help="read: keep the files an earlier call wrote")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.stage == "join":
        bench_join(args.pairs, args.queries, args.docs, args.dir)
    else:
        bench_read(args.lines, args.per_query, args.docs, args.dir, args.reuse)


if __name__ == "__main__":
    main()
