"""An on-disk, memory-mapped ``id -> text`` table for corpora too large for a dict of strings.

A :class:`TextStore` is a folder::

    meta.json          {"format": 1, "count": N, "id_kind": "int64" | "bytes", "fingerprint": ..., ...}
    ids.npy            ids in row order: int64 when every id is a canonical decimal integer
                       (``str(int(s)) == s``), else fixed-width UTF-8 bytes ``S<k>``
    sorted_ids.npy     the same ids sorted ascending
    sorted_rows.npy    int64: the row of each sorted id (``ids[sorted_rows] == sorted_ids``)
    offsets.npy        int64 [N + 1]: text ``r`` is ``texts.bin[offsets[r]:offsets[r + 1]]`` (UTF-8)
    texts.bin          the texts, concatenated

Every file is memory-mapped when opened, so opening costs nothing and a lookup touches only the
pages it reads. :meth:`TextStore.rows` maps ids to rows with one vectorised ``np.searchsorted``
over ``sorted_ids`` (no per-id Python dict): ``O(m log N)`` for ``m`` ids. A store is a
``Mapping[str, str]`` (``store[id]``, ``id in store``, ``len``, iteration in row order), so code
written for the in-memory collections' dicts keeps working on small lookups.

:meth:`TextStore.build` writes a store from chunks of ``(ids, texts)`` (bounded memory: one chunk
of texts at a time; the ids of the whole corpus are held as one compact NumPy array, 8 bytes per
id for integer ids), into a temporary folder renamed into place at the end, so a folder named
``path`` is always complete. A SIGTERM during the build raises
:class:`~pile_jax.data.errors.Preempted` (the CLI exits 75) and leaves no partial store.
``fingerprint``: sha256 (16 hex digits) of the ids (as decimal/UTF-8 text, row order), the text
lengths and the texts.
"""

from __future__ import annotations

import collections.abc
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from typing import Iterable

import numpy as np

from pile_jax.data.errors import DataError, sigterm_stops

__all__ = ["TextStore", "id_array_of", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = 1
_FILES = ("ids.npy", "sorted_ids.npy", "sorted_rows.npy", "offsets.npy", "texts.bin", "meta.json")
_SMALL = 64          # rows() of at most this many str/bytes ids: a Python loop instead of pyarrow
_CANONICAL = re.compile(r"^(0|-?[1-9][0-9]{0,18})$")


# ============================================================================ id arrays
def _arrow_strings(values):
    """``values`` (list / tuple / NumPy array of str or bytes / pyarrow array) -> a pyarrow
    ``binary`` array (UTF-8) without nulls; ``None`` entries are an error."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
        if arr.dtype.kind in "iu":
            values = pa.array(arr.astype(np.int64).ravel()).cast(pa.string())
        elif arr.dtype.kind == "S":
            values = pa.array(arr.ravel(), pa.binary())
        elif arr.dtype.kind == "U":
            values = pa.array(arr.ravel(), pa.string())
        else:
            flat = arr.ravel().tolist()
            try:
                values = pa.array(flat)
            except (pa.ArrowInvalid, pa.ArrowTypeError):   # mixed str / bytes
                values = pa.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat], pa.string())
            if len(flat) == 0 or values.type == pa.null():
                values = pa.array([str(v) for v in flat], pa.string())
    if pa.types.is_integer(values.type):
        values = values.cast(pa.string())
    if values.null_count:
        raise ValueError("ids may not be null")
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        values = values.cast(pa.large_binary())
    elif not pa.types.is_binary(values.type):
        values = values.cast(pa.binary())
    return values


def _fixed_bytes(values, width: int | None = None) -> np.ndarray:
    """A pyarrow binary array -> NumPy ``S<width>`` (default: the longest value), vectorised."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    off_dtype = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    bufs = values.buffers()
    offsets = np.frombuffer(bufs[1], off_dtype, n + 1, values.offset * np.dtype(off_dtype).itemsize).astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    k = int(lengths.max()) if n else 1
    width = max(k, 1) if width is None else int(width)
    if k > width:
        raise ValueError(f"an id is longer than {width} bytes")
    out = np.zeros((n, width), np.uint8)
    if n and offsets[-1] > offsets[0]:
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        cols = np.arange(int(offsets[-1] - offsets[0]), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
        out[rows, cols] = data[offsets[0]:offsets[-1]]
    return out.view(f"S{width}").reshape(n)


def _canonical_ints(values) -> np.ndarray | None:
    """int64 array when every value of the binary array is a canonical decimal integer
    (``str(int(s)) == s``), else ``None``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(values) == 0:
        return np.zeros(0, np.int64)
    text = values.cast(pa.string()) if pa.types.is_binary(values.type) else values.cast(pa.large_string())
    ok = pc.match_substring_regex(text, r"^(0|-?[1-9][0-9]{0,18})$")
    if not pc.all(ok).as_py():
        return None
    try:
        ints = pc.cast(text, pa.int64())
    except (pa.ArrowInvalid, OverflowError):
        return None
    return ints.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def id_array_of(ids) -> np.ndarray:
    """The compact form of a chunk of ids: int64 when all are canonical decimal integers, else
    fixed-width UTF-8 bytes ``S<k>``."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False).ravel()
    values = _arrow_strings(ids)
    ints = _canonical_ints(values)
    return ints if ints is not None else _fixed_bytes(values)


def _as_text_bytes(ids: np.ndarray) -> np.ndarray:
    """int64 or ``S<k>`` ids -> ``S<k>`` (decimal text for integers)."""
    return ids.astype("S20") if ids.dtype.kind in "iu" else ids


def _merge_id_chunks(chunks: list) -> np.ndarray:
    if not chunks:
        return np.zeros(0, np.int64)
    if all(c.dtype.kind in "iu" for c in chunks):
        return np.concatenate(chunks).astype(np.int64, copy=False)
    parts = [_as_text_bytes(c) for c in chunks]
    width = max(p.dtype.itemsize for p in parts)
    return np.concatenate([p.astype(f"S{width}") for p in parts])


def _text_chunk(texts) -> tuple[bytes | memoryview, np.ndarray]:
    """``(utf-8 bytes of the concatenated texts, byte length of each)``; pyarrow string arrays
    are taken from their buffers without a Python string per text."""
    import pyarrow as pa

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array) and (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        if texts.null_count:
            texts = texts.fill_null("")
        off_dtype = np.int64 if pa.types.is_large_string(texts.type) else np.int32
        bufs = texts.buffers()
        n = len(texts)
        offsets = np.frombuffer(bufs[1], off_dtype, n + 1, texts.offset * np.dtype(off_dtype).itemsize).astype(np.int64)
        data = memoryview(bufs[2])[offsets[0]:offsets[-1]] if bufs[2] is not None and n else b""
        return data, np.diff(offsets)
    encoded = [("" if t is None else str(t)).encode("utf-8") for t in texts]
    return b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(encoded))


# ============================================================================ the store
class TextStore(collections.abc.Mapping):
    """``id -> text`` on disk (module doc). ``TextStore.open(path)`` / ``TextStore.build(...)``."""

    def __init__(self, path, *, _meta=None):
        self.path = os.fspath(path)
        meta = _meta if _meta is not None else _read_meta(self.path)
        self.meta = meta
        self.fingerprint = str(meta["fingerprint"])
        self._n = int(meta["count"])
        load = lambda name: np.load(os.path.join(self.path, name), mmap_mode="r")
        self._ids = load("ids.npy")
        self._sorted = load("sorted_ids.npy")
        self._sorted_rows = load("sorted_rows.npy")
        self._offsets = load("offsets.npy")
        size = os.path.getsize(os.path.join(self.path, "texts.bin"))
        self._blob = (np.memmap(os.path.join(self.path, "texts.bin"), np.uint8, "r") if size
                      else np.zeros(0, np.uint8))
        if self._offsets.shape != (self._n + 1,) or int(self._offsets[-1]) != size or len(self._ids) != self._n:
            raise DataError(self.path, None, "text store is inconsistent (sizes of ids / offsets / texts.bin differ); "
                                             "delete the folder to rebuild it")

    # --- Mapping
    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key) -> str:
        if isinstance(key, (bytes, str, int, np.integer)) and not isinstance(key, bool):
            row = int(self.rows([key], missing="skip")[0])
            if row >= 0:
                return self.texts([row])[0]
        raise KeyError(key)

    def __iter__(self):
        step = 1 << 16
        for start in range(0, self._n, step):
            yield from self.ids_of(np.arange(start, min(start + step, self._n)))

    def __contains__(self, key) -> bool:
        try:
            return int(self.rows([key], missing="skip")[0]) >= 0
        except (ValueError, TypeError):
            return False

    def __repr__(self) -> str:
        return f"TextStore({self.path!r}, {self._n} texts, ids {self.meta['id_kind']})"

    # --- vectorised access
    @property
    def id_kind(self) -> str:
        return str(self.meta["id_kind"])

    def id_array(self) -> np.ndarray:
        """All ids in row order (memory-mapped): int64, or ``S<k>`` UTF-8 bytes."""
        return self._ids

    def rows(self, ids, *, missing: str = "error") -> np.ndarray:
        """int64 rows of ``ids`` (any shape; str, bytes, integers, NumPy or pyarrow arrays), same
        shape. Unknown ids: ``missing="error"`` raises ``KeyError`` naming the first one,
        ``"skip"`` gives ``-1``."""
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        shape = _shape_of(ids)
        keys, valid = self._keys(ids)
        rows = np.full(len(keys), -1, np.int64)
        if self._n and len(keys):
            pos = np.searchsorted(self._sorted, keys)
            pos_c = np.minimum(pos, self._n - 1)
            hit = valid & (np.asarray(self._sorted[pos_c]) == keys)
            rows[hit] = self._sorted_rows[pos_c[hit]]
        if missing == "error" and (rows < 0).any():
            first = int(np.flatnonzero(rows < 0)[0])
            raise KeyError(f"id {_show(ids, first)!r} is not in the text store {self.path} ({self._n} texts)")
        return rows.reshape(shape)

    def _keys(self, ids):
        """``(keys in the sorted array's dtype, valid bool)`` for a flat view of ``ids``."""
        if isinstance(ids, (str, bytes, int, np.integer)):
            ids = [ids]
        if isinstance(ids, (list, tuple)) and len(ids) <= _SMALL and all(isinstance(i, (str, bytes)) for i in ids):
            return self._small_keys(ids)
        if self.id_kind == "int64":
            if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
                return ids.astype(np.int64, copy=False).ravel(), np.ones(ids.size, bool)
            values = _arrow_strings(ids)
            return _parse_ints(values)
        values = _arrow_strings(ids)
        width = self._sorted.dtype.itemsize
        import pyarrow.compute as pc

        lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
        valid = (lengths <= width) & (lengths > 0)
        if not valid.all():
            import pyarrow as pa

            values = pc.if_else(pa.array(valid), values, pa.scalar(b"", values.type))
        return _fixed_bytes(values, width), valid

    def _small_keys(self, ids):
        """:meth:`_keys` of a few str / bytes ids without pyarrow (a Python loop is cheaper)."""
        text = [i.decode("utf-8", "replace") if isinstance(i, bytes) else i for i in ids]
        if self.id_kind == "int64":
            valid = np.fromiter((bool(_CANONICAL.match(t)) and int(t) < 2 ** 63 for t in text), bool, len(text))
            return np.fromiter((int(t) if v else 0 for t, v in zip(text, valid)), np.int64, len(text)), valid
        width = self._sorted.dtype.itemsize
        raw = [t.encode("utf-8") for t in text]
        valid = np.fromiter((0 < len(b) <= width for b in raw), bool, len(raw))
        return np.asarray([b if v else b"" for b, v in zip(raw, valid)], dtype=f"S{width}"), valid

    def ids_of(self, rows) -> list[str]:
        """The ids (str) of ``rows``."""
        ids = np.asarray(self._ids[np.asarray(rows, np.int64).ravel()])
        if ids.dtype.kind in "iu":
            return [str(i) for i in ids.tolist()]
        return [b.decode("utf-8") for b in ids.tolist()]

    def texts(self, rows) -> list[str]:
        """The texts of ``rows`` (flat list, in order)."""
        rows = np.asarray(rows, np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"row out of range [0, {self._n}) in the text store {self.path}")
        start, end = self._offsets[rows].tolist(), self._offsets[rows + 1].tolist()
        blob = self._blob
        return [bytes(blob[a:b]).decode("utf-8") for a, b in zip(start, end)]

    def text_range(self, start: int, stop: int) -> list[str]:
        """The texts of rows ``start .. stop - 1``, read with one ``pread`` (not through the memory
        map: a sequential pass over the corpus, e.g. tokenising it, then leaves no file pages
        counted as this process' resident memory)."""
        start, stop = max(0, int(start)), min(int(stop), self._n)
        if stop <= start:
            return []
        offs = np.asarray(self._offsets[start:stop + 1])
        fd = os.open(os.path.join(self.path, "texts.bin"), os.O_RDONLY)
        try:
            data = os.pread(fd, int(offs[-1] - offs[0]), int(offs[0]))
        finally:
            os.close(fd)
        rel = (offs - offs[0]).tolist()
        return [data[a:b].decode("utf-8") for a, b in zip(rel[:-1], rel[1:])]

    def text_lengths(self) -> np.ndarray:
        """UTF-8 byte length of every text, int64 [N] (memory-mapped diff)."""
        return np.diff(self._offsets)

    # --- build / open
    @classmethod
    def open(cls, path) -> "TextStore":
        """Open a built store (``DataError`` naming the folder if it is not one)."""
        return cls(path)

    @classmethod
    def build(cls, path, records: Iterable, *, source: str, duplicates: str = "error",
              extra_meta: dict | None = None) -> "TextStore":
        """Write a store at ``path`` from chunks ``(ids, texts)`` or ``(ids, texts, lines)`` or
        ``(ids, texts, lines, source)`` (``lines``: the source line of each record, for
        messages; ``source``: the file of the chunk, default ``source``).

        ``duplicates="error"``: a repeated id raises ``DataError("<source>:<line>: duplicate id
        ...")``; ``"same"``: a repeated id with the same text is kept once (its first row), with
        another text it is an error. ``extra_meta`` is stored in ``meta.json`` (e.g. the source
        files' sizes and mtimes). The store is written to a temporary folder beside ``path`` and
        renamed into place; an existing ``path`` is replaced (its sub-folders, e.g. the token
        stores in ``tokens/``, are kept when the new store has the same fingerprint)."""
        if duplicates not in ("error", "same"):
            raise ValueError(f"duplicates must be 'error' or 'same', got {duplicates!r}")
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            with sigterm_stops(f"stopped building the text store {path}; nothing of it was kept, "
                               "rerun the same command"):
                meta = _write_store(tmp, records, source=source, duplicates=duplicates)
                meta.update(extra_meta or {})
                with open(os.path.join(tmp, "meta.json"), "w") as f:
                    json.dump(meta, f, indent=1)
                if os.path.exists(path):
                    _keep_derived(path, tmp, meta["fingerprint"])
                    shutil.rmtree(path)
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("text store: %d texts written to %s", meta["count"], path)
        return cls(path)


def _keep_derived(old: str, new: str, fingerprint: str) -> None:
    """Move the folders derived from the texts (``tokens/``: token stores, document vectors) of
    the store being replaced into the new one when both hold the same ids and texts (e.g. the
    source files were only touched or copied)."""
    try:
        same = _read_meta(old).get("fingerprint") == fingerprint
    except (DataError, OSError, ValueError):
        return
    for name in os.listdir(old) if same else ():
        if os.path.isdir(os.path.join(old, name)):
            os.replace(os.path.join(old, name), os.path.join(new, name))


def _read_meta(path: str) -> dict:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise DataError(path, None, "not a text store (no meta.json)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise DataError(path, None, f"text store format {meta.get('format')!r}, expected {FORMAT}; delete it to rebuild")
    return meta


def _shape_of(ids) -> tuple:
    if isinstance(ids, (str, bytes, int, np.integer)):
        return (1,)
    if isinstance(ids, np.ndarray):
        return ids.shape
    try:
        import pyarrow as pa

        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            return (len(ids),)
    except ImportError:   # pragma: no cover
        pass
    if isinstance(ids, list) and ids and isinstance(ids[0], (list, tuple, np.ndarray)):
        return np.asarray(ids, dtype=object).shape
    return (len(ids),)


def _show(ids, i: int):
    if isinstance(ids, (str, bytes, int)):
        return ids
    try:
        flat = np.asarray(ids, dtype=object).ravel() if not isinstance(ids, np.ndarray) else ids.ravel()
        v = flat[i]
    except Exception:   # pyarrow
        v = ids[i].as_py()
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _parse_ints(values):
    """binary ids -> (int64 keys, valid): canonical decimal integers only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = values.cast(pa.string()) if pa.types.is_binary(values.type) else values.cast(pa.large_string())
    valid = pc.match_substring_regex(text, r"^(0|-?[1-9][0-9]{0,18})$")
    valid_np = valid.to_numpy(zero_copy_only=False).astype(bool)
    safe = pc.if_else(valid, text, pa.scalar("0", text.type))
    try:
        keys = pc.cast(safe, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, OverflowError):   # 19 digits beyond int64
        keys = np.asarray([int(s) if v and int(s) < 2 ** 63 else 0 for s, v in
                           zip(safe.to_pylist(), valid_np.tolist())], np.int64)
        valid_np &= np.asarray([v and int(s) < 2 ** 63 for s, v in zip(safe.to_pylist(), valid_np.tolist())], bool)
    return np.asarray(keys, np.int64), valid_np


def _check_ids(values, source, lines, start_row):
    """Non-empty ids without whitespace (``DataError`` naming the source line)."""
    import pyarrow.compute as pc

    bad = pc.or_(pc.equal(pc.binary_length(values), 0),
                 pc.match_substring_regex(values.cast("string"), r"\s")).to_numpy(zero_copy_only=False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        line = None if lines is None else int(lines[i])
        raise DataError(source, line, f"id {values[i].as_py().decode('utf-8', 'replace')!r} must be non-empty, "
                                      f"without whitespace (record {start_row + i + 1})")


def _write_store(folder: str, records: Iterable, *, source: str, duplicates: str) -> dict:
    """Stream the chunks into ``folder`` (texts.bin, offsets, ids) and index them; -> meta."""
    id_chunks, length_chunks, line_chunks, chunk_sources = [], [], [], []
    text_hash = hashlib.sha256()
    n = 0
    with open(os.path.join(folder, "texts.bin"), "wb") as blob:
        for chunk in records:
            ids, texts = chunk[0], chunk[1]
            lines = None if len(chunk) < 3 or chunk[2] is None else np.asarray(chunk[2], np.int64)
            chunk_source = chunk[3] if len(chunk) > 3 else source
            values = ids if (isinstance(ids, np.ndarray) and ids.dtype.kind in "iu") else _arrow_strings(ids)
            if not isinstance(values, np.ndarray):
                _check_ids(values, chunk_source, lines, n)
            ids_np = id_array_of(values)
            data, lengths = _text_chunk(texts)
            if len(lengths) != len(ids_np):
                raise ValueError(f"{source}: a chunk has {len(ids_np)} ids and {len(lengths)} texts")
            blob.write(data)
            text_hash.update(data)
            id_chunks.append(ids_np)
            length_chunks.append(lengths.astype(np.int64))
            line_chunks.append(_compact_lines(lines, len(ids_np)))
            chunk_sources.append((n, chunk_source))
            n += len(ids_np)
    ids = _merge_id_chunks(id_chunks)
    del id_chunks
    lengths = np.concatenate(length_chunks) if length_chunks else np.zeros(0, np.int64)
    del length_chunks
    lines = _Lines(line_chunks)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1 if n > 1 else np.zeros(0, np.int64)
    if dup.size:
        ids, lengths, order, sorted_ids = _drop_duplicates(folder, ids, lengths, lines, order, sorted_ids, dup,
                                                           chunk_sources, duplicates)
        text_hash = _hash_file(os.path.join(folder, "texts.bin"))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    id_kind = "int64" if ids.dtype.kind in "iu" else "bytes"
    np.save(os.path.join(folder, "ids.npy"), ids)
    np.save(os.path.join(folder, "sorted_ids.npy"), sorted_ids)
    np.save(os.path.join(folder, "sorted_rows.npy"), order.astype(np.int64))
    np.save(os.path.join(folder, "offsets.npy"), offsets)
    h = hashlib.sha256()
    for start in range(0, len(ids), 1 << 16):
        h.update(b"\x00".join(_as_text_bytes(ids[start:start + (1 << 16)]).tolist()) + b"\x00")
    h.update(lengths.astype("<i8").tobytes())
    h.update(text_hash.digest())
    return {"format": FORMAT, "count": int(len(ids)), "id_kind": id_kind, "fingerprint": h.hexdigest()[:16],
            "source": str(source), "text_bytes": int(offsets[-1])}


def _compact_lines(lines, n: int):
    """A chunk's line numbers: ``(first, n)`` when consecutive (TSV records), else an int64 array
    (``(-1, n)``: unknown)."""
    if lines is None:
        return (-1, n)
    if n and int(lines[-1]) - int(lines[0]) == n - 1 and (n < 3 or bool((np.diff(lines) == 1).all())):
        return (int(lines[0]), n)
    return np.asarray(lines, np.int64)


class _Lines:
    """``lines[row]`` over the chunks' compact line numbers (-1: unknown); only read for messages."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [c[1] if isinstance(c, tuple) else len(c) for c in chunks])

    def __getitem__(self, row: int) -> int:
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        c = self.chunks[k]
        if isinstance(c, tuple):
            return -1 if c[0] < 0 else c[0] + row - int(self.starts[k])
        return int(c[row - int(self.starts[k])])


def _source_of(chunk_sources, row: int) -> str:
    src = chunk_sources[0][1]
    for start, s in chunk_sources:
        if start <= row:
            src = s
    return src


def _drop_duplicates(folder, ids, lengths, lines, order, sorted_ids, dup, chunk_sources, duplicates):
    """Repeated ids: an error (naming the later line), or (``"same"``) later copies with the
    same text dropped and texts.bin rewritten without them."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    path = os.path.join(folder, "texts.bin")
    blob = np.memmap(path, np.uint8, "r") if offsets[-1] else np.zeros(0, np.uint8)
    # each duplicate sorted position p: its first copy is the run's first (stable sort: lowest row)
    run_start = np.maximum.accumulate(np.where(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]],
                                               np.arange(len(sorted_ids)), 0))
    later, first = order[dup], order[run_start[dup]]
    for lr, fr in zip(later.tolist(), first.tolist()):
        same = bytes(blob[offsets[lr]:offsets[lr + 1]]) == bytes(blob[offsets[fr]:offsets[fr + 1]])
        if duplicates == "error" or not same:
            shown = ids[lr].decode("utf-8", "replace") if ids.dtype.kind == "S" else str(ids[lr])
            where = f"line {lines[fr]}" if lines[fr] >= 0 else f"record {fr + 1}"
            src_first = _source_of(chunk_sources, fr)
            src = _source_of(chunk_sources, lr)
            where = where if src_first == src else f"{src_first} {where}"
            what = "duplicate id" if duplicates == "error" else "id repeated with another text"
            raise DataError(src, int(lines[lr]) if lines[lr] >= 0 else None,
                            f"{what} {shown!r} (first at {where})")
    keep = np.ones(len(ids), bool)
    keep[later] = False
    rows = np.flatnonzero(keep)
    tmp = path + ".compact"
    with open(tmp, "wb") as out:
        for start in range(0, len(rows), 1 << 16):
            part = rows[start:start + (1 << 16)]
            out.write(b"".join(bytes(blob[a:b]) for a, b in zip(offsets[part].tolist(), offsets[part + 1].tolist())))
    del blob
    os.replace(tmp, path)
    ids, lengths = ids[rows], lengths[rows]
    order = np.argsort(ids, kind="stable")
    return ids, lengths, order, ids[order]


def _hash_file(path: str):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h
