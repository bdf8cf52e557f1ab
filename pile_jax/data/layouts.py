"""Collection folders in three layouts, read streaming into on-disk :class:`TextStore` s.

:func:`detect_layout` names the layout of a folder from its files:

* ``"pile_jax"``: ``docs.jsonl``, ``queries.jsonl``, ``qrels.tsv``, ``splits.json`` (see
  :mod:`pile_jax.data.collection`);
* ``"beir"``: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id",
  "text"}``), ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score`` after a header line);
  split ``s`` = the queries of ``qrels/s.tsv`` in order of first appearance;
* ``"msmarco"``: ``collection.tsv`` (``pid<TAB>passage``), ``queries.<split>.tsv``
  (``qid<TAB>text``), ``qrels.<split>.tsv`` (``qid<TAB>0<TAB>pid<TAB>grade``); the split is the
  file name's infix (``queries.dev.small.tsv`` -> ``dev.small``); the queries of all splits share
  one store (an id in two files must have the same text: ``dev.small`` is part of ``dev``).

TSV files are read with ``pyarrow.csv`` in blocks of :data:`BLOCK_BYTES` with quoting **off**
(passages contain ``"``), JSON-lines files line by line in chunks of :data:`CHUNK_LINES`; texts
go to disk as they are read. A malformed line raises ``DataError("<file>:<line>: <what>")``.

The stores live in a folder beside the data (:func:`store_root`): ``<collection>/.pile_jax/``
when the collection folder is writable, else ``$PILE_JAX_STORE_DIR/<name>-<hash>/`` or
``~/.cache/pile_jax/collections/<name>-<hash>/``; inside, ``docs/`` and ``queries/`` are
:class:`TextStore` s and ``tokens/`` the token stores (:mod:`pile_jax.models.token_store`). A
later load re-opens a store when its source files have the sizes and modification times recorded
in its ``meta.json``, and rebuilds it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Iterator

import numpy as np

from pile_jax.data.errors import DataError
from pile_jax.data.textstore import TextStore

__all__ = ["LAYOUTS", "detect_layout", "store_root", "open_or_build", "read_tsv_texts", "read_jsonl_texts",
           "read_tsv_qrels", "load_msmarco", "load_beir", "msmarco_splits", "BLOCK_BYTES", "CHUNK_LINES",
           "STORE_DIR_ENV"]

log = logging.getLogger(__name__)

LAYOUTS = ("pile_jax", "beir", "msmarco")
BLOCK_BYTES = 16 << 20     # bytes per parsed TSV block: ~50k MS MARCO passages
CHUNK_LINES = 1 << 18      # JSON-lines records per chunk
STORE_DIR_ENV = "PILE_JAX_STORE_DIR"
_INT_RE = r"^[+-]?[0-9]+$"


# ============================================================================ layout and store folder
def detect_layout(folder) -> str:
    """``"pile_jax"`` | ``"beir"`` | ``"msmarco"`` from the files of ``folder`` (``DataError``
    naming the folder and the files each layout needs when none matches)."""
    folder = os.fspath(folder)
    has = lambda name: os.path.isfile(os.path.join(folder, name))
    if has("docs.jsonl"):
        return "pile_jax"
    if has("corpus.jsonl"):
        return "beir"
    if has("collection.tsv"):
        return "msmarco"
    raise DataError(folder, None, "not a collection folder: expected docs.jsonl (pile_jax layout), corpus.jsonl + "
                                  "queries.jsonl + qrels/<split>.tsv (BEIR) or collection.tsv + queries.<split>.tsv "
                                  "(MS MARCO passage)")


def store_root(folder, name: str) -> str:
    """Where the stores of the collection at ``folder`` live (module doc)."""
    folder = os.path.abspath(os.fspath(folder))
    if os.access(folder, os.W_OK):
        return os.path.join(folder, ".pile_jax")
    base = os.environ.get(STORE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "pile_jax", "collections")
    return os.path.join(base, f"{name}-{hashlib.sha256(folder.encode()).hexdigest()[:12]}")


def _stats(paths) -> list:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.basename(p), int(st.st_size), int(st.st_mtime_ns)])
    return out


def open_or_build(path: str, sources: list, records, *, source: str, duplicates: str = "error") -> TextStore:
    """The store at ``path`` when its recorded sources (name, size, mtime) equal ``sources``'
    now, else a new one built from ``records()`` (a callable returning the chunk iterator)."""
    stats = _stats(sources)
    try:
        store = TextStore.open(path)
        if store.meta.get("sources") == stats:
            log.info("text store: re-opened %s (%d texts)", path, len(store))
            return store
        log.info("text store: %s was built from other files; rebuilding", path)
    except (DataError, OSError, ValueError):
        pass
    log.info("text store: building %s from %s", path, source)
    store = TextStore.build(path, records(), source=source, duplicates=duplicates, extra_meta={"sources": stats})
    if len(store) == 0:
        raise DataError(source, None, "no records (the file is empty)")
    return store


# ============================================================================ TSV (pyarrow.csv, quoting off)
def _physical_line(path: str, record: int) -> int | None:
    """The file line of the ``record``-th (1-based) non-blank line."""
    k = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                k += 1
                if k == record:
                    return lineno
    return None


def _first_bad_line(path: str, ncols: int, delimiter: str = "\t") -> tuple[int, str] | None:
    """The first non-blank line that is not valid UTF-8 or has not ``ncols`` ``delimiter``-separated fields."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return lineno, f"not valid UTF-8 ({exc.reason})"
            got = text.count(delimiter) + 1
            if got != ncols:
                name = "TAB" if delimiter == "\t" else "space"
                return lineno, f"expected {ncols} {name}-separated columns, found {got}"
    return None


def _line_blocks(path: str, block_bytes: int):
    """The file in blocks of about ``block_bytes``, each ending at a line end (memory: two blocks)."""
    rest = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(block_bytes)
            if not data:
                break
            buf = rest + data if rest else data
            cut = buf.rfind(b"\n")
            if cut < 0:
                rest = buf
                continue
            rest = buf[cut + 1:]
            yield buf[:cut + 1]
    if rest:
        yield rest


def _tsv_batches(path: str, names: list, *, skip_rows: int = 0, block_bytes: int = BLOCK_BYTES,
                 delimiter: str = "\t"):
    """A TAB-separated file with quoting off, all columns strings, parsed by ``pyarrow.csv``
    block by block (each block read, parsed on all cores, handed on and dropped: memory is
    bounded by the block size, whatever the file's); yields ``(first record number (1-based
    among non-blank data lines), pyarrow Table)``. A malformed line -> ``DataError`` naming it."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False, double_quote=False,
                              newlines_in_values=False, ignore_empty_lines=True)
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                  quoted_strings_can_be_null=False)
    record = 1
    try:
        for k, block in enumerate(_line_blocks(path, block_bytes)):
            read = pcsv.ReadOptions(column_names=names, block_size=max(1 << 20, len(block) // 2 + 1),
                                    skip_rows=skip_rows if k == 0 else 0)
            table = pcsv.read_csv(pa.py_buffer(block), read_options=read, parse_options=parse,
                                  convert_options=convert)
            del block
            if table.num_rows:
                yield record, table
            record += table.num_rows
    except pa.ArrowInvalid as exc:
        bad = _first_bad_line(path, len(names), delimiter)
        if bad is not None:
            raise DataError(path, bad[0], bad[1]) from None
        raise DataError(path, None, f"cannot read ({exc})") from None


def read_tsv_texts(path: str, *, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple]:
    """Chunks ``(ids, texts, record numbers, path)`` of an ``id<TAB>text`` file (TextStore.build's
    records); record numbers are turned into file lines by :func:`_fix_line` on errors."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    for first, table in _tsv_batches(path, ["id", "text"], block_bytes=block_bytes):
        yield (table.column(0).combine_chunks(), table.column(1).combine_chunks(),
               np.arange(first, first + table.num_rows, dtype=np.int64), path)


def _fix_line(exc: DataError) -> DataError:
    """A DataError whose ``line`` is a record number of a TSV/JSONL file -> the file line."""
    if exc.path and exc.line is not None and os.path.isfile(exc.path):
        line = _physical_line(exc.path, exc.line)
        return DataError(exc.path, line, exc.message)
    return exc


def _qrels_delimiter(path: str, skip_rows: int) -> str:
    """TAB, or a single space when the first data line has no TAB (TREC-style qrels)."""
    with open(path, "rb") as f:
        for k, raw in enumerate(f):
            if k >= skip_rows and raw.strip():
                return "\t" if b"\t" in raw else " "
    return "\t"


def read_tsv_qrels(path: str, *, columns: int, skip_rows: int = 0, queries=None, docs=None):
    """``{qid: {doc: grade}}`` (qids in order of first appearance) of a qrels TSV (``columns`` 4:
    ``qid 0 doc grade`` (MS MARCO; TAB-separated, or single spaces as TREC writes them), 3: ``qid
    doc grade`` (BEIR, after its header)).
    Grades: integers (negative read as 0); ids checked against ``queries`` / ``docs`` stores
    (vectorised); a repeated (qid, doc) with another grade is an error."""
    import pyarrow.compute as pc

    names = ["qid", "iter", "doc", "grade"] if columns == 4 else ["qid", "doc", "grade"]
    qrels: dict[str, dict[str, int]] = {}
    for first, table in _tsv_batches(path, names, skip_rows=skip_rows, delimiter=_qrels_delimiter(path, skip_rows)):
        batch = table.combine_chunks()
        grade_text = batch.column(names.index("grade")).combine_chunks()
        ok = pc.match_substring_regex(grade_text, _INT_RE).to_numpy(zero_copy_only=False)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise DataError(path, _physical_line(path, first + i + skip_rows),
                            f"grade {grade_text[i].as_py()!r} is not an integer")
        qids, dids = batch.column(0).combine_chunks(), batch.column(names.index("doc")).combine_chunks()
        for store, ids, what in ((queries, qids, "query"), (docs, dids, "doc")):
            if store is None:
                continue
            rows = store.rows(ids, missing="skip")
            if (rows < 0).any():
                i = int(np.flatnonzero(rows < 0)[0])
                raise DataError(path, _physical_line(path, first + i + skip_rows),
                                f"unknown {what} id {ids[i].as_py()!r}")
        grades = np.maximum(pc.cast(grade_text, "int64").to_numpy(zero_copy_only=False), 0).tolist()
        for i, (q, d, g) in enumerate(zip(qids.to_pylist(), dids.to_pylist(), grades)):
            judged = qrels.setdefault(q, {})
            if judged.get(d, g) != g:
                raise DataError(path, _physical_line(path, first + i + skip_rows),
                                f"query {q!r} doc {d!r} judged {g} here and {judged[d]} before")
            judged[d] = g
    return qrels


# ============================================================================ JSON lines
def read_jsonl_texts(path: str, id_field: str, text_fields: tuple, optional: tuple = (),
                     *, chunk: int = CHUNK_LINES) -> Iterator[tuple]:
    """Chunks ``(ids, texts, lines, path)`` of a JSON-lines file; text = the text fields joined by
    a space, stripped. Malformed JSON, a missing field, a non-string value -> ``DataError``."""
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found")
    ids, texts, lines = [], [], []
    with open(path, "r", encoding="utf-8") as handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                key, text = _json_record(path, lineno, line, id_field, text_fields, optional)
                ids.append(key)
                texts.append(text)
                lines.append(lineno)
                if len(ids) >= chunk:
                    yield ids, texts, np.asarray(lines, np.int64), path
                    ids, texts, lines = [], [], []
        except UnicodeDecodeError as exc:
            raise DataError(path, lineno + 1, f"not valid UTF-8 ({exc.reason})") from None
    if ids:
        yield ids, texts, np.asarray(lines, np.int64), path


def _json_record(path, lineno, line, id_field, text_fields, optional):
    """``(id, text)`` of one JSON line: the id a non-empty string (or integer) without whitespace,
    the text the ``text_fields`` joined by a space, stripped (``optional`` ones may be missing or
    null); DataError naming ``path:lineno`` otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, lineno, f"malformed JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(record).__name__}")
    if id_field not in record:
        raise DataError(path, lineno, f"missing field {id_field!r}")
    key = record[id_field]
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise DataError(path, lineno, f"field {id_field!r} must be a string, got {type(key).__name__}")
    key = str(key)
    if not key or any(c.isspace() for c in key):
        raise DataError(path, lineno, f"field {id_field!r} {key!r} must be non-empty, without whitespace")
    parts = []
    for f in text_fields:
        value = record.get(f)
        if f not in record and f not in optional:
            raise DataError(path, lineno, f"missing field {f!r}")
        if value is not None and not isinstance(value, str):
            raise DataError(path, lineno, f"field {f!r} must be a string, got {type(value).__name__}")
        parts.append(value or "")
    return str(key), " ".join(parts).strip()


# ============================================================================ the large layouts
def msmarco_splits(folder: str, prefix: str) -> dict[str, str]:
    """``{split: path}`` of the ``<prefix>.<split>.tsv`` files of ``folder`` (sorted by split)."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(.+)\.tsv$")
    found = {}
    for name in sorted(os.listdir(folder)):
        m = pattern.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found[m.group(1)] = os.path.join(folder, name)
    return found


def _build(path, sources, records, *, source, duplicates="error"):
    try:
        return open_or_build(path, sources, records, source=source, duplicates=duplicates)
    except DataError as exc:
        raise _fix_line(exc) if exc.path in sources and exc.path.endswith(".tsv") else exc from None


def load_msmarco(folder: str, name: str):
    """``(docs, queries, qrels, splits)`` of an MS MARCO passage folder (module doc)."""
    root = store_root(folder, name)
    collection = os.path.join(folder, "collection.tsv")
    docs = _build(os.path.join(root, "docs"), [collection], lambda: read_tsv_texts(collection), source=collection)
    query_files = msmarco_splits(folder, "queries")
    if not query_files:
        raise DataError(folder, None, "no queries.<split>.tsv file (MS MARCO layout)")
    files = list(query_files.values())

    def query_records():
        for path in files:
            yield from read_tsv_texts(path)
    queries = _build(os.path.join(root, "queries"), files, query_records, source=files[0], duplicates="same")
    splits = {}
    for split, path in query_files.items():
        ids = []
        for chunk in read_tsv_texts(path):
            ids.extend(chunk[0].to_pylist())
        splits[split] = ids
    qrels: dict[str, dict[str, int]] = {}
    for split, path in msmarco_splits(folder, "qrels").items():
        _merge_qrels(qrels, read_tsv_qrels(path, columns=4, queries=queries, docs=docs), path)
    return docs, queries, qrels, splits


def _merge_qrels(into: dict, new: dict, path: str) -> None:
    for q, judged in new.items():
        have = into.setdefault(q, {})
        for d, g in judged.items():
            if have.get(d, g) != g:
                raise DataError(path, None, f"query {q!r} doc {d!r} judged {g} here and {have[d]} in another qrels file")
            have[d] = g


def _beir_header(path: str) -> int:
    """1 when the first line of a BEIR qrels file is its header (its score column is not an integer)."""
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", "replace").rstrip("\r\n").split("\t")
    return 0 if (len(first) == 3 and re.match(_INT_RE, first[2])) else 1


def load_beir(folder: str, name: str):
    """``(docs, queries, qrels, splits)`` of a BEIR folder (module doc)."""
    root = store_root(folder, name)
    corpus, qfile = os.path.join(folder, "corpus.jsonl"), os.path.join(folder, "queries.jsonl")
    docs = _build(os.path.join(root, "docs"), [corpus],
                  lambda: read_jsonl_texts(corpus, "_id", ("title", "text"), ("title",)), source=corpus)
    if not os.path.isfile(qfile):
        raise DataError(qfile, None, "file not found")
    queries = _build(os.path.join(root, "queries"), [qfile],
                     lambda: read_jsonl_texts(qfile, "_id", ("text",)), source=qfile)
    qdir = os.path.join(folder, "qrels")
    files = sorted(f for f in os.listdir(qdir) if f.endswith(".tsv")) if os.path.isdir(qdir) else []
    if not files:
        raise DataError(qdir, None, "no qrels/<split>.tsv file (BEIR layout)")
    qrels: dict[str, dict[str, int]] = {}
    splits = {}
    for f in files:
        path = os.path.join(qdir, f)
        split_qrels = read_tsv_qrels(path, columns=3, skip_rows=_beir_header(path), queries=queries, docs=docs)
        splits[f[:-len(".tsv")]] = list(split_qrels)
        _merge_qrels(qrels, split_qrels, path)
    return docs, queries, qrels, splits
