"""Training groups drawn on the fly from a teacher table (``candidates: {from: teachers}``).

A query's training group is ``group_size`` of the documents its teachers score (the rows of a
:class:`pile_jax.data.teacher_table.TeacherTable`), with its judged positives: no candidate list,
no BM25, no groups written to disk. :class:`TableGroupSource` is a random-access source of the
training loader (``len``, ``source[i]``, ``source.__getitems__(indices, epoch=e)``) whose records
have the keys of :mod:`pile_jax.data.groups` records::

    query_id        str
    doc_ids         np.str_  [n]       "" for padding
    labels          float32  [n]       qrels grade (negative -> 0); unjudged -> 0
    label_mask      bool     [n]       False for padding (and unjudged items with unjudged="ignore")
    mask            bool     [n]       real item
    teacher_scores  float32  [T, n]    (s - mu_t) / sd_t where present, 0 where absent or padding
    teacher_mask    bool     [T, n]    teacher t scored the item

Which queries (fixed at construction, in ascending query-row order): those of ``qids`` with at
least one judged positive (grade > 0) and at least one *other* document scored by some teacher.

Record of query ``q`` in epoch ``e`` (a pure function of ``(seed, q, e)`` and the table): the
candidates are the table's documents of ``q`` plus its judged positives the table lacks (no teacher
score: ``teacher_mask`` False). Every positive is kept (highest grade first, at most
``group_size - 1``, so one other document always fits); the other slots are filled by uniform
sampling without replacement from the other candidates with
``numpy.random.default_rng([seed, crc32(qid), epoch])``; the group is then put in that generator's
random order, padding at the end. Host work per record is O(documents of the query), so a batch
costs O(batch); nothing is read for queries outside the batch.

Standardisation (``mu``, ``sd`` per teacher, or None): :func:`table_stats` gives the float64 mean
and std of each teacher's *present* scores over the table's entries of the training queries.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np

__all__ = ["TableGroupSource", "table_stats", "IdIndex"]


class IdIndex:
    """Rows <-> ids of a plain sequence of ids (row = position): the ``rows`` / ``ids_of`` face of a
    :class:`~pile_jax.data.textstore.TextStore`, for small in-memory collections and tests."""

    def __init__(self, ids: Sequence[str]):
        self._ids = np.asarray([str(i) for i in ids], dtype=np.str_)
        self._index = {str(i): r for r, i in enumerate(self._ids.tolist())}

    def __len__(self) -> int:
        return len(self._ids)

    def rows(self, ids, *, missing: str = "error") -> np.ndarray:
        out = np.array([self._index.get(str(i), -1) for i in ids], np.int64)
        if missing == "error" and (out < 0).any():
            raise KeyError(f"unknown id {list(ids)[int(np.argmax(out < 0))]!r}")
        return out

    def ids_of(self, rows) -> list[str]:
        return self._ids[np.asarray(rows, np.int64)].tolist()


def _lookup(ids):
    return ids if hasattr(ids, "ids_of") and hasattr(ids, "rows") else IdIndex(list(ids))


def table_stats(table, query_rows: np.ndarray | None = None, *, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Per-teacher ``(mu, sd)`` (float64 ``[T]``) of the present scores of ``table``'s entries
    (only those of ``query_rows`` when given): ``mu_t = mean(s_t)``, ``sd_t = max(std(s_t), 1e-6)``,
    accumulated in float64 over chunks of ``chunk`` entries (sum and sum of squared deviations from
    a first-chunk shift, so a large common offset loses no precision)."""
    T, nnz = np.asarray(table.scores).shape[0], len(table.doc_rows)
    keep = None
    if query_rows is not None:
        qsel = np.isin(np.asarray(table.query_rows), np.asarray(query_rows))
        keep = np.repeat(qsel, np.diff(np.asarray(table.offsets)))
    n, s1, s2, shift = np.zeros(T), np.zeros(T), np.zeros(T), np.full(T, np.nan)
    for a in range(0, nnz, chunk):
        b = min(a + chunk, nnz)
        for t in range(T):
            sel = np.asarray(table.present[t, a:b], bool)
            if keep is not None:
                sel = sel & keep[a:b]
            x = np.asarray(table.scores[t, a:b], np.float64)[sel]
            if not len(x):
                continue
            if np.isnan(shift[t]):
                shift[t] = x[0]
            x = x - shift[t]
            n[t] += len(x)
            s1[t] += x.sum()
            s2[t] += (x * x).sum()
    if T and (n == 0).any():
        raise ValueError(f"teacher standardisation: teacher(s) {np.nonzero(n == 0)[0].tolist()} score no train pair")
    mean = s1 / np.maximum(n, 1)
    mu = np.nan_to_num(shift) + mean
    sd = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean * mean, 0.0))
    return mu, np.maximum(sd, 1e-6)


class TableGroupSource:
    """The random-access training source of the module docstring.

    Args:
      table: a ``TeacherTable`` (``names``, ``query_rows``, ``offsets``, ``doc_rows``, ``scores``,
        ``present``; memory-mapped arrays are read only where a record needs them).
      qrels: ``{qid: {doc_id: grade}}`` (the collection's).
      qids: the training queries (ids).
      queries, docs: row <-> id lookups of the rows the table holds (``TextStore`` s, or id sequences).
      group_size: n. seed: the sampling seed. unjudged: ``zero`` | ``ignore``.
      mu, sd: per-teacher standardisation (float64 ``[T]``), or None for the raw scores.
    """

    epoch_aware = True      # the loader passes the epoch to __getitems__
    length_aware = False    # no length pass over the whole source (it would sample every group)

    def __init__(self, table, *, qrels: Mapping[str, Mapping[str, int]], qids: Sequence[str], queries, docs,
                 group_size: int, seed: int = 0, unjudged: str = "zero", mu=None, sd=None):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a positive and another document), got {group_size}")
        if unjudged not in ("zero", "ignore"):
            raise ValueError(f"unjudged must be zero or ignore, got {unjudged!r}")
        self.table, self.n, self.seed, self.unjudged = table, int(group_size), int(seed), unjudged
        self.teacher_names = list(table.names)
        self.queries, self.docs = _lookup(queries), _lookup(docs)
        T = len(self.teacher_names)
        self.mu = np.zeros(T) if mu is None else np.asarray(mu, np.float64)
        self.sd = np.ones(T) if sd is None else np.asarray(sd, np.float64)
        self._build_index(qrels, list(qids))

    def _build_index(self, qrels, qids) -> None:
        """The eligible queries and their judgements (CSR over the eligible queries, doc rows)."""
        qids = [q for q in qids if q in qrels]
        qrows = self.queries.rows(qids, missing="skip")
        judged = [(r, d, g) for q, r in zip(qids, qrows.tolist()) if r >= 0 for d, g in qrels[q].items()]
        jq = np.array([j[0] for j in judged], np.int64)
        jd = self.docs.rows([j[1] for j in judged], missing="skip") if judged else np.zeros(0, np.int64)
        jg = np.array([max(int(j[2]), 0) for j in judged], np.float32)
        ok = jd >= 0                           # judged docs outside the collection are ignored
        jq, jd, jg = jq[ok], jd[ok], jg[ok]
        tq = np.asarray(self.table.query_rows, np.int64)
        offsets = np.asarray(self.table.offsets, np.int64)
        ti = np.searchsorted(tq, jq)
        in_table = (ti < len(tq)) & (tq[np.minimum(ti, len(tq) - 1)] == jq) if len(tq) else np.zeros(len(jq), bool)
        scored = self._find(offsets, ti, jd, in_table)      # judged doc is one of the query's table docs
        pos = jg > 0
        order = np.lexsort((jd, jq))
        jq, jd, jg, pos, scored, in_table = (a[order] for a in (jq, jd, jg, pos, scored, in_table))
        uq, start = np.unique(jq, return_index=True)
        bounds = np.append(start, len(jq))
        n_pos = np.add.reduceat(pos.astype(np.int64), start) if len(jq) else np.zeros(0, np.int64)
        n_pos_scored = np.add.reduceat((pos & scored).astype(np.int64), start) if len(jq) else np.zeros(0, np.int64)
        ti_u = np.searchsorted(tq, uq)
        has = (ti_u < len(tq)) & (tq[np.minimum(ti_u, max(len(tq) - 1, 0))] == uq) if len(tq) else np.zeros(len(uq), bool)
        count = np.where(has, offsets[np.minimum(ti_u + 1, len(offsets) - 1)] - offsets[np.minimum(ti_u, len(offsets) - 1)], 0)
        eligible = has & (n_pos > 0) & (count - n_pos_scored >= 1)
        self.query_rows = uq[eligible]                       # ascending query rows
        self._table_index = ti_u[eligible]
        self._judged = (bounds[:-1][eligible], bounds[1:][eligible], jd, jg)
        self.query_ids = None                                  # ids resolved per record
        self.skipped = int(len(set(qids)) - len(self.query_rows))

    def _find(self, offsets, ti, jd, in_table) -> np.ndarray:
        """For judged pairs (table query index ``ti``, doc row ``jd``): whether the doc is among the
        query's table docs (vectorised binary search; doc rows are sorted within a query)."""
        doc_rows = self.table.doc_rows
        lo = np.where(in_table, offsets[np.minimum(ti, len(offsets) - 2)], 0)
        hi = np.where(in_table, offsets[np.minimum(ti + 1, len(offsets) - 1)], 0)
        a, b = lo.copy(), hi.copy()
        while (a < b).any():
            mid = (a + b) // 2
            go = a < b
            val = np.asarray(doc_rows[np.minimum(mid, max(len(doc_rows) - 1, 0))], np.int64) if len(doc_rows) else mid
            right = go & (val < jd)
            a = np.where(right, mid + 1, a)
            b = np.where(go & ~right, mid, b)
        found = in_table & (a < hi)
        if found.any():
            found[found] = np.asarray(doc_rows[a[found]], np.int64) == jd[found]
        return found

    def __len__(self) -> int:
        return len(self.query_rows)

    def __getitem__(self, i: int) -> dict:
        return self.record(int(i), epoch=0)

    def __getitems__(self, indices, epoch: int = 0) -> list:
        return [self.record(int(i), epoch=epoch) for i in indices]

    def record(self, i: int, *, epoch: int = 0) -> dict:
        """The group of eligible query ``i`` in ``epoch`` (module docstring)."""
        if not 0 <= i < len(self):
            raise IndexError(f"group {i} not in [0, {len(self)})")
        t = self.table
        a, b = int(t.offsets[self._table_index[i]]), int(t.offsets[self._table_index[i] + 1])
        rows = np.asarray(t.doc_rows[a:b], np.int64)
        scores = np.asarray(t.scores[:, a:b], np.float64)
        present = np.asarray(t.present[:, a:b], bool)
        ja, jb, jd, jg = self._judged
        jrows, grades = jd[ja[i]:jb[i]], jg[ja[i]:jb[i]]
        extra = np.setdiff1d(jrows[grades > 0], rows)          # positives no teacher scored
        T = len(self.teacher_names)
        rows = np.concatenate([rows, extra])
        scores = np.concatenate([scores, np.zeros((T, len(extra)))], axis=1)
        present = np.concatenate([present, np.zeros((T, len(extra)), bool)], axis=1)
        k = np.searchsorted(jrows, rows)
        hit = (k < len(jrows)) & (jrows[np.minimum(k, len(jrows) - 1)] == rows)
        grade = np.where(hit, grades[np.minimum(k, len(jrows) - 1)], 0.0)
        qid = self.queries.ids_of([self.query_rows[i]])[0]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, zlib.crc32(qid.encode("utf-8")), int(epoch)])
        pos = np.nonzero(grade > 0)[0]
        pos = pos[np.lexsort((rows[pos], -grade[pos]))][:self.n - 1]
        others = np.setdiff1d(np.arange(len(rows)), pos)
        fill = rng.choice(others, size=min(self.n - len(pos), len(others)), replace=False)
        pick = rng.permutation(np.concatenate([pos, fill]))
        return self._assemble(qid, rows[pick], grade[pick], hit[pick], scores[:, pick], present[:, pick])

    def _assemble(self, qid, rows, grade, judged, scores, present) -> dict:
        n, k, T = self.n, len(rows), len(self.teacher_names)
        doc_ids = np.full(n, "", dtype=object)
        doc_ids[:k] = self.docs.ids_of(rows)
        mask = np.arange(n) < k
        labels = np.zeros(n, np.float32)
        labels[:k] = grade
        label_mask = mask.copy()
        if self.unjudged == "ignore":
            label_mask[:k] = judged
        ts = np.zeros((T, n), np.float32)
        tm = np.zeros((T, n), bool)
        tm[:, :k] = present
        ts[:, :k] = np.where(present, (scores - self.mu[:, None]) / self.sd[:, None], 0.0)
        return {"query_id": qid, "doc_ids": doc_ids.astype(np.str_), "labels": labels, "label_mask": label_mask,
                "mask": mask, "teacher_scores": ts, "teacher_mask": tm}
