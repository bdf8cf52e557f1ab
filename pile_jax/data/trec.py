"""TREC-style text files: qrels, runs, teacher score files and Hofstaetter triples.

Every reader checks every line and raises :class:`DataError` with ``"path:line: message"``
for a wrong column count, a non-numeric / non-integer field, a NaN or infinite score, or a
duplicate entry. Blank lines are ignored everywhere.

Id checking: readers take an optional ``collection`` (anything with ``.queries`` and ``.docs``
mappings keyed by id, e.g. :class:`pile_jax.data.collection.Collection`). Unknown ids then
either raise (``on_unknown="error"``, the default) or the line is dropped and counted
(``on_unknown="skip"``). With ``return_skipped=True`` a reader returns ``(data, n_skipped)``.

Paths may be local or URLs (``gs://...``; :mod:`pile_jax.io`); writers are atomic (a temporary
name, then a rename), so a crash never leaves a half-written file under the final name.

Tie-breaking (one convention, :func:`rank_order`): ranked lists are ordered by score
descending, equal scores by doc id *descending* (code-point order, i.e. the byte order of UTF-8
``strcmp``) -- trec_eval's own order, which ignores the rank column. The rank column that
:func:`write_run` writes is therefore the rank at which trec_eval (and
:func:`pile_jax.train.evaluate.run_metrics`) evaluates each document.
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from pile_jax import io as pio
from pile_jax.data.errors import DataError, check_on_unknown

__all__ = [
    "DataError",
    "read_qrels",
    "read_run",
    "write_run",
    "write_qrels",
    "read_teacher_scores",
    "write_teacher_scores",
    "read_triples",
    "write_triples",
    "candidates_from_run",
    "rank_order",
    "read_run_queries",
]

PathLike = str | os.PathLike
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
# A decimal number as trec_eval's C parser reads it: no '_' digit separators, no hex, no spaces.
_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
NEGATIVE_GRADES = ("clamp", "error", "keep")


def _lines(path: PathLike, sep: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for the non-blank lines of a UTF-8 text file."""
    try:
        handle = pio.as_path(path).open("r", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    with handle:
        lineno = 0
        try:
            for lineno, raw in enumerate(handle, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                yield lineno, (line.split(sep) if sep is not None else line.split())
        except UnicodeDecodeError as exc:
            raise DataError(path, lineno + 1, f"not valid UTF-8 ({exc.reason})") from None


def _ncols(path: PathLike, lineno: int, fields: list[str], expected: int, what: str) -> None:
    if len(fields) != expected:
        raise DataError(
            path, lineno, f"expected {expected} columns ({what}), found {len(fields)}"
        )


def _score(path: PathLike, lineno: int, text: str, column: str) -> float:
    """Parse a finite decimal float (``1.5``, ``-2e3``; not ``1_000``, ``0x1p3``, ``nan``, ``inf``)
    or raise DataError."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, lineno, f"{column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, lineno, f"{column} {text!r} is not finite (NaN/Inf not allowed)")
    if not _FLOAT_RE.match(text):
        raise DataError(path, lineno, f"{column} {text!r} is not a plain decimal number")
    return value


def _integer(path: PathLike, lineno: int, text: str, column: str) -> int:
    if not _INT_RE.match(text):
        raise DataError(path, lineno, f"{column} {text!r} is not an integer")
    return int(text)


class _IdCheck:
    """Unknown-id policy for one reader call."""

    def __init__(self, path: PathLike, collection, on_unknown: str):
        check_on_unknown(on_unknown)
        self.path = path
        self.queries = None if collection is None else collection.queries
        self.docs = None if collection is None else collection.docs
        self.on_unknown = on_unknown
        self.skipped = 0

    def ok(self, lineno: int, qid: str, *docids: str) -> bool:
        """True when the ids are known (or unchecked); False = skip this line."""
        if self.queries is None:
            return True
        problem = None
        if qid not in self.queries:
            problem = f"unknown query id {qid!r}"
        else:
            for docid in docids:
                if docid not in self.docs:
                    problem = f"unknown doc id {docid!r} (query {qid!r})"
                    break
        if problem is None:
            return True
        if self.on_unknown == "error":
            raise DataError(self.path, lineno, problem)
        self.skipped += 1
        return False


def _ret(data, check: _IdCheck, return_skipped: bool):
    return (data, check.skipped) if return_skipped else data


# --------------------------------------------------------------------------------- qrels


def read_qrels(
    path: PathLike,
    *,
    collection=None,
    on_unknown: str = "error",
    negative: str = "clamp",
    return_skipped: bool = False,
) -> dict[str, dict[str, int]]:
    """Read TREC qrels ``qid iteration docid grade`` (whitespace separated).

    Returns ``{qid: {docid: grade}}`` in file order. Grades must be integers. Negative grades
    (TREC's -1 / -2 for junk or spam) are non-relevant: ``negative="clamp"`` (the default, the
    one rule of pile_jax) stores them as 0, so training labels, label pairs and evaluation all
    see grade 0; ``"error"`` rejects them; ``"keep"`` returns them as they are. A repeated
    (qid, docid) pair is an error.
    """
    if negative not in NEGATIVE_GRADES:
        raise ValueError(f"negative must be one of {NEGATIVE_GRADES}, got {negative!r}")
    check = _IdCheck(path, collection, on_unknown)
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for lineno, fields in _lines(path):
        _ncols(path, lineno, fields, 4, "qid iteration docid grade")
        qid, _, docid, grade_text = fields
        grade = _integer(path, lineno, grade_text, "grade")
        if grade < 0 and negative == "error":
            raise DataError(path, lineno, f"grade {grade} is negative")
        if grade < 0 and negative == "clamp":
            grade = 0
        if (qid, docid) in first_line:
            raise DataError(
                path, lineno,
                f"duplicate judgment for query {qid!r} doc {docid!r} "
                f"(first at line {first_line[(qid, docid)]})",
            )
        first_line[(qid, docid)] = lineno
        if not check.ok(lineno, qid, docid):
            continue
        qrels.setdefault(qid, {})[docid] = grade
    return _ret(qrels, check, return_skipped)


def write_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``{qid: {docid: grade}}`` as ``qid 0 docid grade`` lines (dict order)."""
    out = io.StringIO()
    for qid, judged in qrels.items():
        for docid, grade in judged.items():
            _check_id(qid, "query id")
            _check_id(docid, "doc id")
            out.write(f"{qid} 0 {docid} {int(grade)}\n")
    pio.write_text(path, out.getvalue())


# ---------------------------------------------------------------------------------- runs


def rank_order(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """``[(docid, score), ...]`` by score descending, ties by doc id descending.

    This is trec_eval's ranking (``sim`` descending, then ``strcmp(docno)`` descending; the rank
    column of a run file is ignored), used for every ranked list pile_jax writes or evaluates,
    so the rank column of a written run is the rank trec_eval evaluates.

    >>> rank_order({"d1": 0.5, "d3": 2.0, "d2": 0.5, "d10": 0.5})
    [('d3', 2.0), ('d2', 0.5), ('d10', 0.5), ('d1', 0.5)]
    """
    return sorted(((d, float(s)) for d, s in scores.items()), key=lambda x: (x[1], x[0]),
                  reverse=True)


def read_run(
    path: PathLike,
    *,
    collection=None,
    on_unknown: str = "error",
    return_skipped: bool = False,
) -> dict[str, list[tuple[str, float]]]:
    """Read a TREC run ``qid Q0 docid rank score tag`` (whitespace separated).

    Returns ``{qid: [(docid, score), ...]}``, each list sorted by score descending (ties by doc
    id descending, :func:`rank_order`); query order is first appearance in the file. The rank column must be an
    integer but is otherwise ignored (as trec_eval does). A doc listed twice for one query is
    an error.
    """
    check = _IdCheck(path, collection, on_unknown)
    run: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for lineno, fields in _lines(path):
        _ncols(path, lineno, fields, 6, "qid Q0 docid rank score tag")
        qid, _, docid, rank_text, score_text, _ = fields
        _integer(path, lineno, rank_text, "rank")
        score = _score(path, lineno, score_text, "score")
        if (qid, docid) in first_line:
            raise DataError(
                path, lineno,
                f"doc {docid!r} listed twice for query {qid!r} (first at line "
                f"{first_line[(qid, docid)]})",
            )
        first_line[(qid, docid)] = lineno
        if not check.ok(lineno, qid, docid):
            continue
        run.setdefault(qid, {})[docid] = score
    return _ret({q: rank_order(s) for q, s in run.items()}, check, return_skipped)


def read_run_queries(path: PathLike, qids: Iterable[str], *, chunk: int = 1 << 16) -> dict[str, np.ndarray]:
    """Streaming read of a (large) TREC run ``qid Q0 docid rank score tag`` keeping only the
    queries ``qids``: ``{qid: doc ids np.str_ [k]}`` ranked as :func:`rank_order` (score
    descending, ties by doc id descending), queries in the order of ``qids`` (those the run lacks
    are left out).

    Every line is checked (column count, integer rank, finite decimal score): a malformed line
    raises :class:`DataError` naming the file and line; a doc listed twice for a kept query too.
    Memory: the kept queries' entries only, packed into NumPy arrays every ``chunk`` kept lines
    (an MS MARCO dev run of 7M lines is read for the 7k dev queries, or just the first K)."""
    keep = {str(q) for q in qids}
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    buf_q: list[str] = []
    buf_d: list[str] = []
    buf_s: list[float] = []
    buf_l: list[int] = []

    def flush():
        if not buf_q:
            return
        q_arr, d_arr = np.asarray(buf_q), np.asarray(buf_d)
        s_arr, l_arr = np.asarray(buf_s, np.float64), np.asarray(buf_l, np.int64)
        for q in np.unique(q_arr).tolist():
            sel = q_arr == q
            parts.setdefault(q, []).append((d_arr[sel], s_arr[sel], l_arr[sel]))
        for b in (buf_q, buf_d, buf_s, buf_l):
            b.clear()

    for lineno, fields in _lines(path):
        _ncols(path, lineno, fields, 6, "qid Q0 docid rank score tag")
        _integer(path, lineno, fields[3], "rank")
        score = _score(path, lineno, fields[4], "score")
        if fields[0] in keep:
            buf_q.append(fields[0])
            buf_d.append(fields[2])
            buf_s.append(score)
            buf_l.append(lineno)
            if len(buf_q) >= chunk:
                flush()
    flush()
    out = {}
    for q in dict.fromkeys(str(q) for q in qids):
        if q not in parts:
            continue
        docs, scores, lines = (np.concatenate(a) for a in zip(*parts.pop(q)))
        order = np.lexsort((docs, scores))[::-1]          # score descending, ties doc id descending
        docs, lines = docs[order], lines[order]
        by_doc = np.argsort(docs, kind="stable")
        dup = np.nonzero(docs[by_doc][1:] == docs[by_doc][:-1])[0]
        if len(dup):
            a, b = sorted((int(lines[by_doc][dup[0]]), int(lines[by_doc][dup[0] + 1])))
            raise DataError(path, b, f"doc {str(docs[by_doc][dup[0]])!r} listed twice for query {q!r} "
                                     f"(first at line {a})")
        out[q] = docs
    return out


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} must be a non-empty string without whitespace")


def _as_score_dict(entries) -> Mapping[str, float]:
    """Accept ``{docid: score}`` or ``[(docid, score), ...]``."""
    if isinstance(entries, Mapping):
        return entries
    out: dict[str, float] = {}
    for docid, score in entries:
        if docid in out:
            raise ValueError(f"doc id {docid!r} listed twice")
        out[docid] = score
    return out


def write_run(
    path: PathLike,
    run: Mapping[str, Mapping[str, float] | Sequence[tuple[str, float]]],
    tag: str = "pile_jax",
) -> None:
    """Write a TREC run: ``qid Q0 docid rank score tag``, ranks 1..n per query.

    ``run`` is ``{qid: {docid: score}}`` (or ``{qid: [(docid, score), ...]}``). Docs are ranked by
    score descending, ties by doc id descending (:func:`rank_order`, trec_eval's order); queries in
    dict order. Scores are written with
    ``repr(float)`` so :func:`read_run` gets the exact same floats back. Non-finite scores or ids
    with whitespace raise ValueError.
    """
    _check_id(tag, "tag")
    out = io.StringIO()
    for qid, entries in run.items():
        _check_id(qid, "query id")
        for rank, (docid, score) in enumerate(rank_order(_as_score_dict(entries)), 1):
            _check_id(docid, "doc id")
            if not math.isfinite(score):
                raise ValueError(f"score for query {qid!r} doc {docid!r} is {score}")
            out.write(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n")
    pio.write_text(path, out.getvalue())


def candidates_from_run(
    run: Mapping[str, Sequence[tuple[str, float]] | Mapping[str, float]], depth: int | None = None
) -> dict[str, list[str]]:
    """First-stage candidate lists ``{qid: [docid, ...]}``: the top ``depth`` docs per query.

    Lists given as ``[(docid, score), ...]`` are taken to be ranked already (as :func:`read_run`
    returns them); ``{docid: score}`` dicts are ranked with :func:`rank_order`. ``depth=None``
    keeps every doc.
    """
    if depth is not None and (not isinstance(depth, int) or depth <= 0):
        raise ValueError(f"depth must be a positive int or None, got {depth!r}")
    out = {}
    for qid, entries in run.items():
        ranked = rank_order(entries) if isinstance(entries, Mapping) else list(entries)
        out[qid] = [d for d, _ in ranked[:depth]]
    return out


# ----------------------------------------------------------------------- teacher scores


#: a teacher score is "far outside the rest of its file" when |s - median| > OUTLIER_K x the robust
#: scale (1.4826 x the median absolute deviation; when that is 0, 1.2533 x the mean absolute
#: deviation from the median; when that is 0 too, no score is an outlier). 1e5 robust standard
#: deviations: no real teacher's score distribution comes near it (raw BM25 scores with median 10
#: and MAD 3 would need a score above ~4.4e5), a stray 1e30 (or 1e10 among logits) always does.
OUTLIER_K = 1e5
OUTLIERS = ("error", "accept")


def score_outlier(values) -> int | None:
    """The index of the score farthest outside the rest (see :data:`OUTLIER_K`), or None."""
    x = np.asarray(values, np.float64)
    if x.size < 3:
        return None
    dev = np.abs(x - np.median(x))
    scale = 1.4826 * float(np.median(dev))
    if scale == 0.0:
        scale = 1.2533 * float(dev.mean())
    if not scale > 0.0:
        return None
    i = int(np.argmax(dev))
    return i if dev[i] > OUTLIER_K * scale else None


def read_teacher_scores(
    path: PathLike,
    *,
    collection=None,
    on_unknown: str = "error",
    return_skipped: bool = False,
    outliers: str = "error",
) -> dict[str, dict[str, float]]:
    """Read a teacher score file: ``qid docid score`` per line (tabs or spaces).

    Returns ``{qid: {docid: score}}`` in file order. Scores must be finite numbers; a repeated
    (qid, docid) pair is an error. A score far outside the rest of the file
    (:func:`score_outlier`: more than :data:`OUTLIER_K` robust standard deviations from the
    median; one such score would flatten the teacher after standardisation) is a
    :class:`DataError` naming its line, unless ``outliers="accept"``.
    """
    if outliers not in OUTLIERS:
        raise ValueError(f"outliers must be one of {OUTLIERS}, got {outliers!r}")
    check = _IdCheck(path, collection, on_unknown)
    scores: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    values: list[float] = []
    lines: list[int] = []
    for lineno, fields in _lines(path):
        _ncols(path, lineno, fields, 3, "qid docid score")
        qid, docid, score_text = fields
        score = _score(path, lineno, score_text, "score")
        values.append(score)
        lines.append(lineno)
        if (qid, docid) in first_line:
            raise DataError(
                path, lineno,
                f"duplicate score for query {qid!r} doc {docid!r} (first at line "
                f"{first_line[(qid, docid)]})",
            )
        first_line[(qid, docid)] = lineno
        if not check.ok(lineno, qid, docid):
            continue
        scores.setdefault(qid, {})[docid] = score
    if outliers == "error":
        i = score_outlier(values)
        if i is not None:
            med = float(np.median(values))
            raise DataError(path, lines[i], f"score {values[i]!r} is far outside the rest of the file (median {med:.4g}; "
                                            f"more than {OUTLIER_K:g} robust standard deviations away); fix the "
                                            "file, or accept it (teachers[i].outliers: accept, "
                                            "pile-jax ensemble --accept-outliers)")
    return _ret(scores, check, return_skipped)


def write_teacher_scores(path: PathLike, scores: Mapping[str, Mapping[str, float]]) -> None:
    """Write ``{qid: {docid: score}}`` as ``qid<TAB>docid<TAB>score`` lines (dict order).

    Scores are written with ``repr(float)``: a round trip through :func:`read_teacher_scores`
    is exact. Non-finite scores raise ValueError.
    """
    out = io.StringIO()
    for qid, per_doc in scores.items():
        _check_id(qid, "query id")
        for docid, score in per_doc.items():
            _check_id(docid, "doc id")
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"score for query {qid!r} doc {docid!r} is {score}")
            out.write(f"{qid}\t{docid}\t{score!r}\n")
    pio.write_text(path, out.getvalue())


# ------------------------------------------------------------------------------ triples


def read_triples(
    path: PathLike,
    *,
    collection=None,
    on_unknown: str = "error",
    return_skipped: bool = False,
) -> dict[str, np.ndarray]:
    """Read Hofstaetter-style teacher triples: ``pos_score<TAB>neg_score<TAB>qid<TAB>pos_id<TAB>neg_id``.

    Returns ``{"pos_score": float32 [N], "neg_score": float32 [N], "query_id": str [N],
    "pos_id": str [N], "neg_id": str [N]}`` in file order. Columns must be tab-separated.
    """
    check = _IdCheck(path, collection, on_unknown)
    cols: dict[str, list] = {k: [] for k in ("pos_score", "neg_score", "query_id", "pos_id", "neg_id")}
    for lineno, fields in _lines(path, sep="\t"):
        _ncols(path, lineno, fields, 5, "pos_score neg_score qid pos_id neg_id, tab-separated")
        pos_text, neg_text, qid, pos_id, neg_id = (f.strip() for f in fields)
        pos = _score(path, lineno, pos_text, "pos_score")
        neg = _score(path, lineno, neg_text, "neg_score")
        for value, what in ((qid, "qid"), (pos_id, "pos_id"), (neg_id, "neg_id")):
            if not value:
                raise DataError(path, lineno, f"empty {what}")
        if not check.ok(lineno, qid, pos_id, neg_id):
            continue
        for key, value in zip(cols, (pos, neg, qid, pos_id, neg_id)):
            cols[key].append(value)
    out = {
        "pos_score": np.asarray(cols["pos_score"], dtype=np.float32),
        "neg_score": np.asarray(cols["neg_score"], dtype=np.float32),
    }
    for key in ("query_id", "pos_id", "neg_id"):
        out[key] = np.asarray(cols[key], dtype=np.str_) if cols[key] else np.zeros((0,), np.str_)
    return _ret(out, check, return_skipped)


def write_triples(path: PathLike, triples: Mapping[str, Iterable]) -> None:
    """Write the dict :func:`read_triples` returns back as tab-separated lines."""
    keys = ("pos_score", "neg_score", "query_id", "pos_id", "neg_id")
    columns = [list(triples[k]) for k in keys]
    if len({len(c) for c in columns}) != 1:
        raise ValueError("triples columns have different lengths")
    out = io.StringIO()
    for pos, neg, qid, pid, nid in zip(*columns):
        out.write(f"{float(pos)!r}\t{float(neg)!r}\t{qid}\t{pid}\t{nid}\n")
    pio.write_text(path, out.getvalue())
