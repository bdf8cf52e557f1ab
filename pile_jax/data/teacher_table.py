"""Several teachers' scores joined on (query, doc) into one CSR table.

:class:`TeacherTable` holds, for every query row that any teacher scores, the sorted doc rows
that at least one teacher scores, with a ``[T, nnz]`` float32 score matrix and a ``[T, nnz]``
bool presence matrix: a teacher that did not score a pair is **absent** there (``present`` False,
the score slot 0.0 and never read), never a score of 0.

Entry ``j`` of query ``query_rows[i]`` lies in ``[offsets[i], offsets[i + 1])``. Memory per
joined pair: 4 (doc row) + 5 T bytes (score + presence per teacher), e.g. 14 bytes for 2 teachers;
the join itself (:func:`join_teachers`) sorts one int64 key per input entry.

Saved as one folder of ``.npy`` files (``query_rows``, ``offsets``, ``doc_rows``, ``scores``,
``present``) plus ``names.json`` written last, so a folder with ``names.json`` is complete;
:meth:`TeacherTable.load` memory-maps the arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["TeacherTable", "join_teachers"]

_ARRAYS = ("query_rows", "offsets", "doc_rows", "scores", "present")


@dataclasses.dataclass
class TeacherTable:
    """CSR over queries: query ``query_rows[i]``'s entries are ``[offsets[i], offsets[i+1])``."""

    names: list[str]           # [T]
    query_rows: np.ndarray     # int32 [Q], sorted ascending, unique
    offsets: np.ndarray        # int64 [Q + 1]
    doc_rows: np.ndarray       # int32 [nnz], sorted within a query
    scores: np.ndarray         # float32 [T, nnz] (0.0 where absent)
    present: np.ndarray        # bool [T, nnz]

    @property
    def nnz(self) -> int:
        return int(self.doc_rows.shape[0])

    def __len__(self) -> int:
        """Number of queries."""
        return int(self.query_rows.shape[0])

    def query(self, qrow: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(doc_rows [k], scores [T, k], present [T, k])`` of one query row (k = 0 when the
        table has no entry for it)."""
        i = int(np.searchsorted(self.query_rows, qrow))
        if i >= len(self.query_rows) or int(self.query_rows[i]) != int(qrow):
            T = len(self.names)
            return np.zeros((0,), np.int32), np.zeros((T, 0), np.float32), np.zeros((T, 0), bool)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.doc_rows[lo:hi], self.scores[:, lo:hi], self.present[:, lo:hi]

    def save(self, folder) -> None:
        """Write the arrays as ``.npy`` files (each to a temporary name, then renamed) and
        ``names.json`` last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "names.json").unlink(missing_ok=True)
        for name in _ARRAYS:
            tmp = folder / f".{name}.tmp.npy"
            np.save(tmp, np.asarray(getattr(self, name)))
            os.replace(tmp, folder / f"{name}.npy")
        tmp = folder / ".names.json.tmp"
        tmp.write_text(json.dumps({"names": list(self.names), "nnz": self.nnz}))
        os.replace(tmp, folder / "names.json")

    @classmethod
    def load(cls, folder, mmap: bool = True) -> "TeacherTable":
        """The table saved in ``folder`` (arrays memory-mapped read-only when ``mmap``)."""
        folder = Path(folder)
        if not (folder / "names.json").is_file():
            raise FileNotFoundError(f"{folder}: no complete teacher table (names.json missing)")
        meta = json.loads((folder / "names.json").read_text())
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None) for n in _ARRAYS}
        return cls(names=list(meta["names"]), **arrays)


def _sorted_keys(triples) -> np.ndarray:
    """int64 keys ``query_row << 32 | doc_row`` of one teacher, checked strictly increasing
    (sorted + distinct, as :func:`pile_jax.data.teacher_files.read_teacher_file` returns them)."""
    q = np.asarray(triples.query_rows)
    d = np.asarray(triples.doc_rows)
    if q.size and (q.min() < 0 or d.min() < 0):
        raise ValueError(f"{triples.source}: negative row (unknown id not dropped?)")
    key = (q.astype(np.int64) << 32) | d.astype(np.int64)
    if key.size > 1 and not (key[1:] > key[:-1]).all():
        raise ValueError(f"{triples.source}: entries must be distinct (query, doc) pairs sorted by (query, doc)")
    return key


def _union(keys: list[np.ndarray]) -> np.ndarray:
    """The sorted distinct keys of several sorted arrays: a stable sort of the concatenation (a
    merge of sorted runs, near linear; ``np.unique`` sorts from scratch and is ~100x slower on
    8M int64 keys here), then adjacent duplicates dropped."""
    if not keys:
        return np.zeros((0,), np.int64)
    union = np.concatenate(keys)
    union.sort(kind="stable")
    if len(union) > 1:
        keep = np.empty(len(union), bool)
        keep[0] = True
        np.not_equal(union[1:], union[:-1], out=keep[1:])
        union = union[keep]
    return union


def join_teachers(names: Sequence[str], triples: Sequence) -> TeacherTable:
    """Join teachers' :class:`~pile_jax.data.teacher_files.ScoreTriples` on (query row, doc row).

    The pairs are the union of every teacher's pairs; ``present[t, j]`` says whether teacher
    ``t`` scored pair ``j``. Vectorised: one int64 key ``query_row << 32 | doc_row`` per entry, the
    union by a merge sort of the teachers' sorted keys, each teacher placed by ``np.searchsorted``.
    """
    names = list(names)
    if len(names) != len(triples):
        raise ValueError(f"{len(names)} names for {len(triples)} teachers")
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must be distinct, got {names}")
    keys = [_sorted_keys(t) for t in triples]
    union = _union(keys)
    nnz = len(union)
    scores = np.zeros((len(names), nnz), np.float32)
    present = np.zeros((len(names), nnz), bool)
    for t, (key, tr) in enumerate(zip(keys, triples)):
        at = np.searchsorted(union, key)
        scores[t, at] = np.asarray(tr.scores, np.float32)
        present[t, at] = True
    del keys
    q = (union >> 32).astype(np.int32)
    doc_rows = (union & 0xFFFFFFFF).astype(np.int32)
    del union
    starts = np.flatnonzero(np.concatenate([[True], q[1:] != q[:-1]])) if nnz else np.zeros((0,), np.int64)
    return TeacherTable(names=names, query_rows=q[starts], offsets=np.append(starts, nnz).astype(np.int64),
                        doc_rows=doc_rows, scores=scores, present=present)
