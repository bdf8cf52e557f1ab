"""Teacher score files in the public shapes, read streaming into integer row triples.

:func:`read_teacher_file` reads one teacher file and returns :class:`ScoreTriples`: int32 query
rows, int32 doc rows and float32 scores (its transform applied), one entry per distinct
(query, doc) pair, sorted by (query row, doc row). Rows are positions in the collection: a
:class:`~pile_jax.data.textstore.TextStore` maps ids through its ``rows(ids, missing="skip")``; a
plain mapping (the small in-memory collections) through an index of its keys in dict order.

Formats (``format:`` of a ``kind: file`` teacher):

``tsv``               pile_jax's own teacher file: ``qid docid score`` (tabs or spaces).
``margin_tsv``        ``pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`` (Hofstaetter et
                      al. 2020, the Margin-MSE teacher files): each line gives the two entries
                      ``(qid, pos_pid, pos_score)`` and ``(qid, neg_pid, neg_score)``; a passage
                      repeated on later lines with the same score is kept once.
``score_map``         JSON Lines, one object per query: ``{"query_id": Q, "scores": {doc: score}}``
                      (``"qid"`` is accepted for ``"query_id"``; ids are strings or integers, scores
                      numbers; other keys are ignored).
``score_map_pickle``  sentence-transformers' hard-negative score file: a pickled ``{qid: {pid:
                      score}}`` (``.gz`` read through gzip). Loading a pickle runs code from the
                      file, so it is refused unless the teacher sets ``allow_pickle: true``; the
                      whole pickle is one Python object in memory (the format's own limit).
``listwise_parquet``  Parquet rows ``{query_id, doc_ids: list, scores: list}`` (read in row batches).
``trec_run``          ``qid Q0 docid rank score tag`` (whitespace separated; the rank column must be an
                      integer and is otherwise ignored, as trec_eval does).

Every text file may be gzip-compressed (``.gz``). Blank lines are ignored. Transforms
(``transform:``), applied after the checks below:

``raw``     the score as written (default).
``logit``   the file holds logits: ``s' = sigmoid(s) = 1 / (1 + exp(-s))``, in [0, 1].
``rank``    rank-only teachers (e.g. LLM listwise runs): per query, ``r = 1 + #{docs of that query
            with a strictly higher score}`` (ties share the best rank) and ``s' = -ln(r)``: 0 for the
            top document, strictly decreasing in the rank, equal for tied scores.

Checks: a malformed line (column count, a non-number, NaN/Inf, an empty id, invalid UTF-8) is a
:class:`DataError` ``"file:line: ..."`` (for Parquet ``"file:row: ..."``, the 1-based row). A
(query, doc) pair given twice with the same score (as float32) is kept once; with a different score
it is a DataError naming the later line, unless ``duplicates="first"`` (config ``duplicates:
first``; e.g. a published file whose repeated pairs were scored in different GPU batches): then
the first score in file order is kept and the clashes are counted in the log. Unknown ids: ``on_unknown="error"`` (default) raises a
DataError naming the first line with an unknown id, ``"skip"`` drops those entries (counted in
``ScoreTriples.skipped``). The outlier check of :func:`pile_jax.data.trec.score_outlier` runs on
the raw scores of the file (``outliers="accept"`` turns it off).

Work is done in chunks of ``chunk`` lines (Parquet: rows; score maps: queries): each chunk is
parsed by pyarrow's CSV reader (quoting off) or column-wise, its ids are dictionary-encoded and
only the distinct ids are looked up. When the fast parse of a chunk fails, the chunk is parsed
line by line, which either succeeds (e.g. a mix of tabs and spaces) or names the bad line.
Nothing is kept per pair but NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import itertools
import json
import logging
import math
import os
import pickle
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pile_jax.data.errors import DataError, check_on_unknown
from pile_jax.data.trec import _INT_RE, OUTLIER_K, OUTLIERS, _score, score_outlier

__all__ = ["FORMATS", "TRANSFORMS", "ScoreTriples", "read_teacher_file", "apply_transform", "RowIndex",
           "row_index"]

_log = logging.getLogger(__name__)

FORMATS = ("tsv", "margin_tsv", "score_map", "score_map_pickle", "listwise_parquet", "trec_run")
DUPLICATES = ("error", "first")
TRANSFORMS = ("raw", "logit", "rank")
#: (number of columns, what they are) of the line formats
_LINE_FORMATS = {"tsv": (3, "qid docid score"),
                 "margin_tsv": (5, "pos_score neg_score qid pos_pid neg_pid, tab-separated"),
                 "trec_run": (6, "qid Q0 docid rank score tag")}


@dataclasses.dataclass
class ScoreTriples:
    """One teacher file as rows: entry ``i`` is (query ``query_rows[i]``, doc ``doc_rows[i]``,
    score ``scores[i]``), distinct pairs sorted by (query row, doc row)."""

    query_rows: np.ndarray  # int32 [n]
    doc_rows: np.ndarray    # int32 [n]
    scores: np.ndarray      # float32 [n], transform applied
    source: str             # the file
    skipped: int = 0        # entries dropped for an unknown id (on_unknown="skip")

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# ----------------------------------------------------------------------------- id -> row
class RowIndex:
    """id -> row for a mapping's keys (row = position in dict order), by binary search over the
    sorted keys (no per-id dict). ``rows(ids, missing="skip")`` gives -1 for unknown ids."""

    def __init__(self, mapping: Mapping[str, Any]):
        self.keys = np.asarray([str(k) for k in mapping], dtype=np.str_)
        self.order = np.argsort(self.keys, kind="stable")
        self.sorted = self.keys[self.order]

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def rows(self, ids, *, missing: str = "error") -> np.ndarray:
        ids = np.asarray(ids, dtype=np.str_)
        if not len(self.keys) or not ids.size:
            out = np.full(ids.shape, -1, np.int64)
        else:
            at = np.minimum(np.searchsorted(self.sorted, ids), len(self.keys) - 1)
            out = np.where(self.sorted[at] == ids, self.order[at], -1).astype(np.int64)
        if missing == "error" and (out < 0).any():
            raise KeyError(str(ids.reshape(-1)[np.flatnonzero(out.reshape(-1) < 0)[0]]))
        return out

    def ids_of(self, rows) -> list[str]:
        return [str(k) for k in self.keys[np.asarray(rows, np.int64)]]


def row_index(ids_source) -> Any:
    """Something with ``rows(ids, missing=...)``: the source itself (a TextStore), else a
    :class:`RowIndex` of its keys."""
    return ids_source if hasattr(ids_source, "rows") else RowIndex(ids_source)


@dataclasses.dataclass
class _Encoded:
    """A dictionary-encoded id column: ``ids[i] = uniq[indices[i]]``."""

    uniq: Any                 # pyarrow string array of the distinct ids
    indices: np.ndarray       # int [n]

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> str:
        return self.uniq[int(self.indices[i])].as_py()


def _encode(ids) -> _Encoded:
    """Dictionary-encode a pyarrow string array (or chunked array, or list of str)."""
    import pyarrow as pa

    arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr.dictionary_encode()
    return _Encoded(enc.dictionary, enc.indices.to_numpy(zero_copy_only=False))


def _plain(ids) -> _Encoded:
    """A string column as is (identity indices): for doc ids, mostly distinct within a block,
    where hashing them first costs more than it saves."""
    if hasattr(ids, "combine_chunks"):
        ids = ids.combine_chunks()
    return _Encoded(ids, np.arange(len(ids)))


def _lookup(index, ids) -> np.ndarray:
    """int64 rows of ``ids`` (an :class:`_Encoded` column, a pyarrow string array or a list), -1
    for unknown; each distinct id is looked up once."""
    enc = ids if isinstance(ids, _Encoded) else _encode(ids)
    if not len(enc):
        return np.zeros((0,), np.int64)
    # a TextStore (it has id_array) takes the pyarrow string array as is; others get NumPy str objects
    uniq = enc.uniq if hasattr(index, "id_array") else enc.uniq.to_numpy(zero_copy_only=False)
    rows = np.asarray(index.rows(uniq, missing="skip"), np.int64)
    return rows[enc.indices]


# ------------------------------------------------------------------------------ transforms
def apply_transform(transform: str, query_rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """float32 scores after ``transform`` (see the module docstring); ``logit`` is computed in
    float64 blocks, ``rank`` from the scores' order (~30 bytes per entry at the peak).

    >>> [round(float(v), 4) for v in apply_transform("logit", np.array([0, 0]), np.array([0.0, 2.0]))]
    [0.5, 0.8808]
    >>> [round(float(v), 4) for v in apply_transform("rank", np.array([0, 0, 0, 1]), np.array([3.0, 5.0, 3.0, -1.0]))]
    [-0.6931, 0.0, -0.6931, 0.0]
    """
    s = np.asarray(scores)
    if transform == "raw":
        return s.astype(np.float32)
    if transform == "logit":
        out = np.empty(s.shape, np.float32)
        for i in range(0, s.size, 1 << 20):
            x = s[i:i + (1 << 20)].astype(np.float64)
            out[i:i + (1 << 20)] = 0.5 * (1.0 + np.tanh(0.5 * x))      # sigmoid, no overflow for large |s|
        return out
    if transform == "rank":
        return _rank_scores(np.asarray(query_rows), s)
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def _rank_scores(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``-ln r`` with ``r = 1 + #{entries of the same query with a strictly higher score}``."""
    n = len(s)
    if n == 0:
        return np.zeros((0,), np.float32)
    order = np.lexsort((-s, q))                      # by query, then score descending
    qs = q if (n < 2 or bool(np.all(q[1:] >= q[:-1]))) else q[order]    # q sorted: the same
    ss = s[order]
    idx = np.int32 if n < 2**31 else np.int64
    pos = np.arange(n, dtype=idx)
    new = np.ones(n, bool)
    np.not_equal(qs[1:], qs[:-1], out=new[1:])        # first entry of a query
    start = np.maximum.accumulate(np.where(new, pos, 0))
    new[1:] |= ss[1:] != ss[:-1]                      # ... or of a run of equal scores
    del ss
    tie_start = np.maximum.accumulate(np.where(new, pos, 0))
    del new, pos
    rank = np.empty(n, np.float32)
    rank[order] = (tie_start - start + 1).astype(np.float32)
    return (0.0 - np.log(rank)).astype(np.float32)    # 0.0 (not -0.0) for rank 1


# ---------------------------------------------------------------------------- line parsing
def _open_binary(path: str):
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    return gzip.open(handle) if str(path).endswith(".gz") else handle


#: a finite plain decimal number or DataError (the rules of :mod:`pile_jax.data.trec`)
_number = _score


def _parse_line(path, fmt: str, lineno: int, raw: bytes) -> list[tuple[str, str, float]]:
    """The entries ``(qid, docid, score)`` of one line, or [] for a blank line; DataError if
    malformed. The line-by-line reference parser."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, lineno, f"not valid UTF-8 ({exc.reason})") from None
    if not line.strip():
        return []
    ncols, what = _LINE_FORMATS[fmt]
    fields = [f.strip() for f in line.split("\t")] if fmt == "margin_tsv" else line.split()
    if len(fields) != ncols:
        raise DataError(path, lineno, f"expected {ncols} columns ({what}), found {len(fields)}")
    if fmt == "tsv":
        qid, docid, s = fields
        return [(qid, docid, _number(path, lineno, s, "score"))]
    if fmt == "trec_run":
        qid, _, docid, rank, s, _ = fields
        if not _INT_RE.match(rank):
            raise DataError(path, lineno, f"rank {rank!r} is not an integer")
        return [(qid, docid, _number(path, lineno, s, "score"))]
    pos, neg, qid, pid, nid = fields
    pos_s, neg_s = _number(path, lineno, pos, "pos_score"), _number(path, lineno, neg, "neg_score")
    for value, name in ((qid, "qid"), (pid, "pos_pid"), (nid, "neg_pid")):
        if not value:
            raise DataError(path, lineno, f"empty {name}")
    return [(qid, pid, pos_s), (qid, nid, neg_s)]


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with _open_binary(path) as handle:
        yield from enumerate(handle, 1)


def _slow_chunk(path, fmt: str, start: int, block: bytes):
    """Line-by-line parse of one block of whole lines: ``(qids, docids, scores)`` lists."""
    q, d, s = [], [], []
    for lineno, raw in enumerate(block.split(b"\n"), start):
        for qid, docid, score in _parse_line(path, fmt, lineno, raw):
            q.append(qid)
            d.append(docid)
            s.append(score)
    return q, d, np.asarray(s, np.float64)


def _fast_chunk(fmt: str, block: bytes):
    """pyarrow's CSV parse of one block of whole lines (quoting off) into ``(qids, docids,
    scores)`` with dictionary-encoded ids, or None when it does not apply or fails."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    first = next((ln for ln in block[:65536].split(b"\n") if ln.strip()), None)
    if first is None:
        return None if block.strip() else ([], [], np.zeros((0,), np.float64))
    delim = "\t" if (fmt == "margin_tsv" or b"\t" in first) else " "
    ncols = _LINE_FORMATS[fmt][0]
    names = [f"c{i}" for i in range(ncols)]
    score_cols = {"tsv": ("c2",), "trec_run": ("c4",), "margin_tsv": ("c0", "c1")}[fmt]
    types = {n: (pa.float64() if n in score_cols else pa.string()) for n in names}
    if fmt == "trec_run":
        types["c3"] = pa.int64()
    try:
        table = pcsv.read_csv(
            io.BytesIO(block),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=True),
            parse_options=pcsv.ParseOptions(delimiter=delim, quote_char=False, escape_char=False,
                                            newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if any(table.column(n).null_count for n in names):
        return None
    score = {n: table.column(n).to_numpy() for n in score_cols}
    if not all(np.isfinite(v).all() for v in score.values()):
        return None
    qcol, *dcols = {"tsv": ("c0", "c1"), "trec_run": ("c0", "c2"), "margin_tsv": ("c2", "c3", "c4")}[fmt]
    qid = _encode(table.column(qcol))           # few distinct query ids per block: look each up once
    docs = _plain(pa.concat_arrays([table.column(c).combine_chunks() for c in dcols]))
    if any(pc.min(pc.binary_length(a)).as_py() == 0 for a in (qid.uniq, docs.uniq)):
        return None     # an empty id: the line-by-line parse names it
    if fmt == "margin_tsv":
        qid = _Encoded(qid.uniq, np.concatenate([qid.indices, qid.indices]))
    return qid, docs, (np.concatenate([score["c0"], score["c1"]]) if fmt == "margin_tsv"
                       else score["c2" if fmt == "tsv" else "c4"])


#: bytes read per block: about ``chunk`` lines of a teacher file (~35-60 bytes a line)
_BYTES_PER_LINE = 48


def _blocks(handle, nbytes: int) -> Iterator[tuple[int, bytes]]:
    """``(first line number, block)``: blocks of about ``nbytes`` bytes cut after a newline (the
    last may lack one)."""
    start, rest = 1, b""
    while True:
        data = handle.read(nbytes)
        if not data:
            if rest:
                yield start, rest
            return
        buf = rest + data
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
            continue
        block, rest = buf[:cut + 1], buf[cut + 1:]
        yield start, block
        start += block.count(b"\n")


def _line_chunks(path: str, fmt: str, chunk: int):
    """``(first line number, qids, docids, scores)`` per block of about ``chunk`` lines."""
    with _open_binary(path) as handle:
        for start, block in _blocks(handle, max(chunk * _BYTES_PER_LINE, 1)):
            got = _fast_chunk(fmt, block)
            if got is None:
                got = _slow_chunk(path, fmt, start, block)
            yield (start, *got)


# ------------------------------------------------------------------------- other formats
def _query_id(path, lineno, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DataError(path, lineno, f"query id {value!r} must be a non-empty string or an integer")
    return str(value)


def _map_entries(path, lineno, qid, scores) -> tuple[list, list, list]:
    """The entries of one ``{doc: score}`` map (score_map / score_map_pickle)."""
    if not isinstance(scores, Mapping):
        raise DataError(path, lineno, f"scores of query {qid!r} must be an object {{doc: score}}")
    docs, vals = [], []
    for doc, s in scores.items():
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            raise DataError(path, lineno, f"score of query {qid!r} doc {doc!r} is {s!r} (need a finite number)")
        docs.append(_query_id(path, lineno, doc))
        vals.append(float(s))
    return [qid] * len(docs), docs, vals


def _json_chunks(path: str, chunk: int):
    """score_map (JSON Lines): ``(first line, qids, docids, scores)`` per ``chunk`` lines."""
    buf: tuple[list, list, list] = ([], [], [])
    start = 1
    for lineno, raw in _iter_lines(path):
        if raw.strip():
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(path, lineno, f"not a JSON object ({exc})") from None
            if not isinstance(obj, dict):
                raise DataError(path, lineno, "not a JSON object {\"query_id\": ..., \"scores\": {doc: score}}")
            key = "query_id" if "query_id" in obj else "qid"
            if key not in obj or "scores" not in obj:
                raise DataError(path, lineno, "needs keys \"query_id\" (or \"qid\") and \"scores\"")
            for acc, part in zip(buf, _map_entries(path, lineno, _query_id(path, lineno, obj[key]), obj["scores"])):
                acc.extend(part)
        if lineno - start + 1 >= chunk:
            yield start, buf[0], buf[1], np.asarray(buf[2], np.float64)
            buf, start = ([], [], []), lineno + 1
    if buf[0]:
        yield start, buf[0], buf[1], np.asarray(buf[2], np.float64)


def _pickle_chunks(path: str, chunk: int, allow_pickle: bool):
    """score_map_pickle: ``(first query number, qids, docids, scores)`` per ``chunk`` queries."""
    if not allow_pickle:
        raise DataError(path, None, "format score_map_pickle loads a pickle, which runs code from the file: "
                                    "set allow_pickle: true on this teacher only if you trust the file")
    with _open_binary(path) as handle:
        try:
            data = pickle.load(handle)  # noqa: S301 -- explicit opt-in above
        except Exception as exc:  # noqa: BLE001 -- any unpickling failure is a bad file
            raise DataError(path, None, f"cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, Mapping):
        raise DataError(path, None, f"expected a pickled {{qid: {{pid: score}}}}, got {type(data).__name__}")
    items = iter(data.items())
    n = 0
    while True:
        part = list(itertools.islice(items, chunk))
        if not part:
            return
        q, d, s = [], [], []
        for i, (qid, scores) in enumerate(part, n + 1):
            for acc, got in zip((q, d, s), _map_entries(path, i, _query_id(path, i, qid), scores)):
                acc.extend(got)
        yield n + 1, q, d, np.asarray(s, np.float64)
        n += len(part)


def _parquet_chunks(path: str, chunk: int):
    """listwise_parquet: ``(first row, qids, docids, scores)`` per batch of ``chunk`` rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, None, f"not a Parquet file ({exc})") from None
    missing = [c for c in ("query_id", "doc_ids", "scores") if c not in pf.schema_arrow.names]
    if missing:
        raise DataError(path, None, f"missing column(s) {', '.join(missing)} (need query_id, doc_ids, scores)")
    start = 1
    for batch in pf.iter_batches(batch_size=chunk, columns=["query_id", "doc_ids", "scores"]):
        qcol, dcol, scol = (batch.column(i) for i in range(3))
        bad = _parquet_bad_row(qcol, dcol, scol)
        if bad is not None:
            raise DataError(path, start + bad[0], bad[1])
        parents = pc.list_parent_indices(dcol)
        docs = pc.cast(pc.list_flatten(dcol), pa.string())
        scores = pc.list_flatten(scol).to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(scores).all():
            row = int(parents.to_numpy()[np.flatnonzero(~np.isfinite(scores))[0]])
            raise DataError(path, start + row, "a score is not finite (NaN/Inf not allowed)")
        qids = pc.take(pc.cast(qcol, pa.string()), parents)
        yield start, qids, docs, scores
        start += batch.num_rows


def _parquet_bad_row(qcol, dcol, scol) -> tuple[int, str] | None:
    """(0-based row, problem) of the first malformed row of a batch, or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_list(dcol.type) or pa.types.is_large_list(dcol.type)) or \
            not (pa.types.is_list(scol.type) or pa.types.is_large_list(scol.type)):
        return 0, f"doc_ids and scores must be lists, got {dcol.type} and {scol.type}"
    if not (pa.types.is_integer(scol.type.value_type) or pa.types.is_floating(scol.type.value_type)):
        return 0, f"scores must be numbers, got {scol.type.value_type}"
    checks = [(pc.is_null(qcol), "query_id is null"), (pc.is_null(dcol), "doc_ids is null"),
              (pc.is_null(scol), "scores is null"),
              (pc.not_equal(pc.list_value_length(dcol), pc.list_value_length(scol)),
               "doc_ids and scores have different lengths")]
    for mask, what in checks:
        hit = np.flatnonzero(mask.to_numpy(zero_copy_only=False).astype(bool, copy=False)) \
            if mask.null_count == 0 else np.flatnonzero(mask.fill_null(True).to_numpy(zero_copy_only=False))
        if hit.size:
            return int(hit[0]), what
    for col, what in ((dcol, "a doc id"), (scol, "a score")):
        inner = pc.is_null(pc.list_flatten(col)).to_numpy(zero_copy_only=False)
        if inner.any():
            return int(pc.list_parent_indices(col).to_numpy()[np.flatnonzero(inner)[0]]), f"{what} in the list is null"
    return None


# ---------------------------------------------------------------------------- the reader
def _chunks(path: str, fmt: str, chunk: int, allow_pickle: bool):
    if fmt in _LINE_FORMATS:
        return _line_chunks(path, fmt, chunk)
    if fmt == "score_map":
        return _json_chunks(path, chunk)
    if fmt == "score_map_pickle":
        return _pickle_chunks(path, chunk, allow_pickle)
    return _parquet_chunks(path, chunk)


def _entries(path: str, fmt: str, allow_pickle: bool) -> Iterator[tuple[int, str, str, float]]:
    """Every entry ``(line, qid, docid, score)`` in file order, one at a time (slow; used only to
    name the line of a problem found by the chunked reader)."""
    if fmt in _LINE_FORMATS:
        for lineno, raw in _iter_lines(path):
            for qid, docid, score in _parse_line(path, fmt, lineno, raw):
                yield lineno, qid, docid, score
        return
    for start, qids, docids, scores in _chunks(path, fmt, 1, allow_pickle):
        qids = qids.to_pylist() if hasattr(qids, "to_pylist") else qids
        docids = docids.to_pylist() if hasattr(docids, "to_pylist") else docids
        for qid, docid, score in zip(qids, docids, scores):
            yield start, qid, docid, float(score)


def _locate(path, fmt, allow_pickle, found: Callable[[str, str, float], bool], start: int = 1) -> int | None:
    """The first line (at or after ``start``) with an entry for which ``found`` holds."""
    for lineno, qid, docid, score in _entries(path, fmt, allow_pickle):
        if lineno >= start and found(qid, docid, score):
            return lineno
    return None


def _check_unknown(path, fmt, allow_pickle, start, qidx, didx, on_unknown, qids, docids, qrows, drows):
    """Keep-mask of a chunk's entries; raises DataError naming the first unknown id's line."""
    ok = (qrows >= 0) & (drows >= 0)
    if on_unknown == "skip" or ok.all():
        return ok
    qids = qids if isinstance(qids, _Encoded) else list(qids)
    docids = docids if isinstance(docids, _Encoded) else list(docids)

    def unknown(qid, docid, _):
        return (qidx.rows([qid], missing="skip")[0] < 0) or (didx.rows([docid], missing="skip")[0] < 0)

    line = _locate(path, fmt, allow_pickle, unknown, start)
    i = int(np.flatnonzero(~ok)[0])
    qid, docid = (str(x[i].as_py() if hasattr(x[i], "as_py") else x[i]) for x in (qids, docids))
    if line is not None:       # name what that line has (the first unknown in file order)
        for lineno, q, d, _ in _entries(path, fmt, allow_pickle):
            if lineno == line and unknown(q, d, None):
                qid, docid = q, d
                break
    known_q = qidx.rows([qid], missing="skip")[0] >= 0
    what = f"unknown doc id {docid!r} (query {qid!r})" if known_q else f"unknown query id {qid!r}"
    raise DataError(path, line, what + " (on_unknown: skip drops such entries)")


def _sorted_block(qrows: np.ndarray, drows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One block's ``(key int64, score float32)`` sorted by ``key = query_row << 32 | doc_row``
    (stable: file order among equal keys)."""
    key = (qrows.astype(np.int64) << 32) | drows.astype(np.int64)
    order = np.argsort(key, kind="stable")
    return key[order], np.asarray(scores, np.float32)[order]


def _dedupe(path, fmt, allow_pickle, qidx, didx, duplicates, clashes, key, s):
    """``(key, s)`` (blocks of sorted runs, in file order) sorted by key, a pair kept once (its
    first score); two different scores: DataError, or (``duplicates="first"``) counted in
    ``clashes[0]``. Memory: ~32 bytes per entry at the peak."""
    order = np.argsort(key, kind="stable")     # a merge of sorted runs
    key = key[order]
    s = s[order]
    del order
    keep = np.ones(len(key), bool)
    keep[1:] = key[1:] != key[:-1]
    if not keep.all():
        clash = np.flatnonzero(~keep[1:] & (s[1:] != s[:-1]))
        if clash.size and duplicates == "first":
            clashes[0] += int(clash.size)
        elif clash.size:
            k = int(key[clash[0] + 1])
            qid, docid = qidx.ids_of([k >> 32])[0], didx.ids_of([k & 0xFFFFFFFF])[0]
            first: list[float] = []

            def second(qq, dd, ss):
                if qq != qid or dd != docid:
                    return False
                first.append(ss)
                return len(first) > 1 and np.float32(ss) != np.float32(first[0])

            line = _locate(path, fmt, allow_pickle, second)
            raise DataError(path, line, f"query {qid!r} doc {docid!r} has two different scores "
                                        f"({first[0]!r} and {first[-1]!r})" if len(first) > 1 else
                                        f"query {qid!r} doc {docid!r} has two different scores")
        key, s = key[keep], s[keep]
    return key, s


def _outlier(x: np.ndarray) -> int | None:
    """:func:`pile_jax.data.trec.score_outlier`'s rule (the farthest score, if more than
    ``OUTLIER_K`` robust standard deviations from the median) in the scores' own float32, so a
    file of 80M scores needs ~8 bytes per score, not 24."""
    if x.size < 3:
        return None
    if x.size < 1_000_000:
        return score_outlier(x)
    med = np.median(x)
    dev = np.abs(x - med)
    scale = 1.4826 * float(np.median(dev))
    if scale == 0.0:
        scale = 1.2533 * float(dev.mean(dtype=np.float64))
    if not scale > 0.0:
        return None
    i = int(np.argmax(dev))
    return i if float(dev[i]) > OUTLIER_K * scale else None


def _check_outliers(path, fmt, allow_pickle, qidx, didx, q, d, raw) -> None:
    i = _outlier(raw)
    if i is None:
        return
    qid, docid = qidx.ids_of([q[i]])[0], didx.ids_of([d[i]])[0]
    line = _locate(path, fmt, allow_pickle, lambda qq, dd, _: qq == qid and dd == docid)
    med = float(np.median(raw))
    raise DataError(path, line, f"score {float(raw[i]):.7g} is far outside the rest of the file (median {med:.4g}; "
                                f"more than {OUTLIER_K:g} robust standard deviations away); fix the file, or "
                                "accept it (teachers[i].outliers: accept)")


def read_teacher_file(path, *, format: str = "tsv", transform: str = "raw", queries, docs,  # noqa: A002
                      chunk: int = 1 << 20, on_unknown: str = "error", outliers: str = "error",
                      allow_pickle: bool = False, duplicates: str = "error") -> ScoreTriples:
    """Read one teacher file (``format``, see the module docstring) into :class:`ScoreTriples`.

    ``queries`` / ``docs``: the collection's queries and documents, each a TextStore (anything
    with ``rows(ids, missing=...)``) or a mapping keyed by id. ``chunk``: lines (rows, queries)
    parsed at a time. ``on_unknown``: ``"error"`` | ``"skip"``; ``outliers``: ``"error"`` |
    ``"accept"``; ``allow_pickle``: required for ``score_map_pickle``; ``duplicates``: ``"error"``
    | ``"first"``. Malformed input raises :class:`DataError` naming the file and line."""
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if outliers not in OUTLIERS:
        raise ValueError(f"outliers must be one of {OUTLIERS}, got {outliers!r}")
    check_on_unknown(on_unknown)
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    path = os.fspath(path)
    qidx, didx = row_index(queries), row_index(docs)
    runs: list[tuple[np.ndarray, np.ndarray]] = []   # sorted, deduplicated runs, in file order
    skipped = 0
    clashes = [0]
    dedupe = functools.partial(_dedupe, path, format, allow_pickle, qidx, didx, duplicates, clashes)
    for start, qids, docids, scores in _chunks(path, format, int(chunk), allow_pickle):
        qrows, drows = _lookup(qidx, qids), _lookup(didx, docids)
        ok = _check_unknown(path, format, allow_pickle, start, qidx, didx, on_unknown, qids, docids, qrows, drows)
        skipped += int((~ok).sum())
        runs.append(dedupe(*_sorted_block(qrows[ok], drows[ok], np.asarray(scores)[ok])))
        del qids, docids, qrows, drows, ok
        # merge the last two runs while the newer is at least half the older (a binary-counter
        # merge: O(n log n) work, and repeated pairs, e.g. margin_tsv's positives, dropped early)
        while len(runs) > 1 and 2 * len(runs[-1][0]) >= len(runs[-2][0]):
            (k1, s1), (k2, s2) = runs.pop(-2), runs.pop()
            runs.append(dedupe(np.concatenate([k1, k2]), np.concatenate([s1, s2])))
            del k1, s1, k2, s2
    while len(runs) > 1:
        (k1, s1), (k2, s2) = runs.pop(-2), runs.pop()
        runs.append(dedupe(np.concatenate([k1, k2]), np.concatenate([s1, s2])))
        del k1, s1, k2, s2
    key, raw = runs.pop() if runs else (np.zeros((0,), np.int64), np.zeros((0,), np.float32))
    q, d = (key >> 32).astype(np.int32), (key & 0xFFFFFFFF).astype(np.int32)
    del key
    if outliers == "error":
        _check_outliers(path, format, allow_pickle, qidx, didx, q, d, raw)
    if skipped:
        _log.info("teacher file %s: %d entries with unknown ids skipped", path, skipped)
    if clashes[0]:
        _log.warning("teacher file %s: %d repeated (query, doc) pairs with a different score; the first score "
                     "in file order kept (duplicates: first)", path, clashes[0])
    return ScoreTriples(q, d, apply_transform(transform, q, raw), path, skipped)
