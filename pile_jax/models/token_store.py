"""One on-disk token store per (corpus, tokenizer, length), shared by every run, seed and host.

:func:`token_store_for` tokenises the texts of a :class:`~pile_jax.data.textstore.TextStore` into
``<text store folder>/tokens/<tokenizer hash>_L<max_tokens>/``::

    meta.json     {"fingerprint": <the text store's>, "tokenizer": <hash>, "max_tokens": L | null, "count": N, ...}
    tokens.npy    int32 [T]: content tokens (no special tokens) of every text, at most L per text
    offsets.npy   int64 [N + 2]: text r is tokens[offsets[r]:offsets[r + 1]]; row N is the empty
                  padding text "" (the key padding items carry)
    lengths.npy   int64 [N + 1]: offsets' differences

It is built in chunks of ``chunk`` texts (each tokenised with the Rust batch path in batches of
``batch`` texts, so the tokenizer's per-token objects stay bounded), each chunk saved as
``parts/<k>.npz`` (atomically) before the next starts: a build stopped by SIGTERM (the chunk in
progress dropped, :class:`~pile_jax.data.errors.Preempted`, exit 75) or killed restarts at its
first missing chunk. When every chunk is there the parts are joined into the three arrays,
``meta.json`` is written last and the parts are deleted. The token ids equal
:func:`~pile_jax.models.tokenize.tokenize_texts`' (then cut to ``L``), whatever the chunk size.

:class:`DiskTokenStore` opens it memory-mapped: the duck type of
:class:`~pile_jax.models.tokenize.TokenStore` (``tokens``, ``offsets``, ``lengths``,
``rows(keys)``, ``ids(row)``, ``index[""]``, ``len``) whose ``rows`` maps ids through the text
store's sorted-id index (no per-text dict). Cutting documents at ``L = `` the featuriser's
document budget (:func:`document_budget`) changes no batch: the assemblers never read further.

Several processes (every process calls): process 0 builds or re-opens the store, a barrier, the
others open what it wrote (the store folder must be shared).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import uuid
from typing import Sequence

import numpy as np

from pile_jax.data.errors import sigterm_stops

__all__ = ["DiskTokenStore", "token_store_for", "encode_tokens", "tokenizer_key", "document_budget", "is_text_store",
           "DEFAULT_CHUNK", "DEFAULT_BATCH"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 1 << 16    # texts per saved part (the unit of restart)
DEFAULT_BATCH = 1 << 13    # texts per encode_batch call (bounds the tokenizer's Encoding objects)
FORMAT = 1


def is_text_store(texts) -> bool:
    """True for an on-disk text store (the duck type :class:`~pile_jax.data.textstore.TextStore`)."""
    return hasattr(texts, "rows") and hasattr(texts, "texts") and hasattr(texts, "fingerprint") and hasattr(texts, "path")


def tokenizer_key(backend) -> str:
    """sha256 (16 hex digits) of the tokenizer definition (``tokenizers.Tokenizer.to_str()``)."""
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()[:16]


def document_budget(featurizer) -> int | None:
    """The most content tokens of one document any batch of ``featurizer`` reads: the
    two-tower / frozen-index ``max_doc_length``; a pair's ``max_length - num_special`` (an empty
    query leaves it all to the document); ``None`` (keep all) for other featurisers."""
    if getattr(featurizer, "max_doc_length", None) is not None:
        return int(featurizer.max_doc_length)
    if getattr(featurizer, "max_length", None) is not None and getattr(featurizer, "num_special", None) is not None:
        return int(featurizer.max_length) - int(featurizer.num_special)
    return None


class _Index:
    """``index[key]`` / ``key in index`` of a disk store: ``""`` is the padding row."""

    def __init__(self, store: "DiskTokenStore"):
        self._store = store

    def __getitem__(self, key) -> int:
        return int(self._store.rows([key])[0])

    def __contains__(self, key) -> bool:
        return key in ("", b"") or key in self._store.texts


class DiskTokenStore:
    """A memory-mapped token store of a text store (module doc)."""

    def __init__(self, folder, texts):
        self.folder = os.fspath(folder)
        with open(os.path.join(self.folder, "meta.json")) as f:
            self.meta = json.load(f)
        self.texts = texts
        load = lambda name: np.load(os.path.join(self.folder, name), mmap_mode="r")
        self.tokens = load("tokens.npy")
        self.offsets = load("offsets.npy")
        self.lengths = load("lengths.npy")
        self.pad_row = len(texts)
        self.index = _Index(self)
        self.max_tokens = self.meta.get("max_tokens")
        if self.offsets.shape != (len(texts) + 2,) or int(self.offsets[-1]) != len(self.tokens):
            raise ValueError(f"{self.folder}: token store is inconsistent; delete the folder to rebuild it")

    @property
    def fingerprint(self) -> str:
        """The text store's fingerprint + tokenizer + length (what identifies these tokens)."""
        return f"{self.meta['fingerprint']}-{self.meta['tokenizer']}-{self.meta['max_tokens']}"

    def __len__(self) -> int:
        return self.pad_row + 1

    def __repr__(self) -> str:
        return f"DiskTokenStore({self.folder!r}, {self.pad_row} texts, {len(self.tokens)} tokens)"

    def rows(self, keys) -> np.ndarray:
        """int64 rows of ``keys`` (any shape; str / bytes / integer ids); ``""`` -> the padding
        row; an unknown id raises ``KeyError`` naming it."""
        import pyarrow.compute as pc

        from pile_jax.data.textstore import _arrow_strings, _shape_of

        shape = _shape_of(keys)
        if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
            return self.texts.rows(keys)
        if isinstance(keys, (str, bytes)):
            keys = [keys]
        values = _arrow_strings(keys)
        empty = pc.equal(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)
        rows = self.texts.rows(values, missing="skip")
        rows[empty] = self.pad_row
        if (rows < 0).any():
            i = int(np.flatnonzero(rows < 0)[0])
            raise KeyError(f"text id {values[i].as_py().decode('utf-8', 'replace')!r} is not in the token store "
                           f"{self.folder} ({self.pad_row} texts)")
        return rows.reshape(shape)

    def ids(self, row: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[row]:self.offsets[row + 1]])


# ============================================================================ build
def encode_tokens(backend, texts: Sequence[str], *, max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32 [T], lengths int64 [N])``: the content tokens (no special tokens) of every
    text, concatenated, each text's cut to its first ``max_tokens`` (``None``: all); one Rust
    ``encode_batch`` call (all cores; ``RAYON_NUM_THREADS`` caps them)."""
    texts = [str(t) for t in texts]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    enc = encode(texts, add_special_tokens=False) if texts else []
    ids = [e.ids for e in enc]
    del enc
    if max_tokens is not None:
        ids = [i[:max_tokens] for i in ids]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return tokens, lengths


def _encode(backend, texts: list, max_tokens: int | None, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens int32, lengths int64)`` of ``texts``: content tokens, each cut to ``max_tokens``."""
    tok_parts, len_parts = [], []
    for start in range(0, len(texts), batch):
        tokens, lengths = encode_tokens(backend, texts[start:start + batch], max_tokens=max_tokens)
        tok_parts.append(tokens)
        len_parts.append(lengths)
    if not tok_parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(tok_parts), np.concatenate(len_parts)


def _plan(texts, key: str, max_tokens, chunk: int) -> dict:
    return {"format": FORMAT, "fingerprint": texts.fingerprint, "tokenizer": key, "max_tokens": max_tokens,
            "count": len(texts), "chunk": int(chunk)}


def _save_part(path: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}.npz"
    try:
        np.savez(tmp, tokens=tokens, lengths=lengths)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build_parts(parts: str, backend, texts, max_tokens, chunk: int, batch: int, plan: dict) -> list[str]:
    """Tokenise every missing chunk into ``parts/<k>.npz``; -> the part paths in order."""
    os.makedirs(parts, exist_ok=True)
    plan_path = os.path.join(parts, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            if json.load(f) != plan:   # parts of other texts / tokenizer / chunking: start over
                shutil.rmtree(parts)
                os.makedirs(parts)
    for name in os.listdir(parts):   # temporary files of a killed build
        if ".tmp-" in name:
            os.unlink(os.path.join(parts, name))
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    n = len(texts)
    paths = [os.path.join(parts, f"{k:06d}.npz") for k in range(-(-n // chunk))]
    done = sum(os.path.exists(p) for p in paths)
    if done:
        log.info("token store: %d of %d chunks already built in %s", done, len(paths), parts)
    for k, path in enumerate(paths):
        if os.path.exists(path):
            continue
        start, stop = k * chunk, min((k + 1) * chunk, n)
        chunk_texts = (texts.text_range(start, stop) if hasattr(texts, "text_range")
                       else texts.texts(np.arange(start, stop, dtype=np.int64)))
        tokens, lengths = _encode(backend, chunk_texts, max_tokens, batch)
        _save_part(path, tokens, lengths)
        log.info("token store: chunk %d/%d (%d texts, %d tokens)", k + 1, len(paths), stop - start, len(tokens))
    return paths


def _join_parts(folder: str, paths: list[str], plan: dict) -> None:
    """parts -> tokens.npy / offsets.npy / lengths.npy (+ the padding row), then meta.json."""
    lengths = np.concatenate([np.load(p)["lengths"] for p in paths] + [np.zeros(1, np.int64)])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmp = os.path.join(folder, f"tokens.npy.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as out:   # written as a stream (a memory map's dirty pages would count as RSS)
        np.lib.format.write_array_header_2_0(out, {"descr": np.dtype(np.int32).str, "fortran_order": False,
                                                   "shape": (int(offsets[-1]),)})
        for p in paths:
            np.ascontiguousarray(np.load(p)["tokens"], np.int32).tofile(out)
    os.replace(tmp, os.path.join(folder, "tokens.npy"))
    np.save(os.path.join(folder, "offsets.npy"), offsets)
    np.save(os.path.join(folder, "lengths.npy"), lengths)
    meta = dict(plan, tokens=int(offsets[-1]))
    with open(os.path.join(folder, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(folder, "meta.json.tmp"), os.path.join(folder, "meta.json"))


def _open_if_built(folder: str, texts, plan: dict):
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    if {k: meta.get(k) for k in ("format", "fingerprint", "tokenizer", "max_tokens", "count")} != \
            {k: plan[k] for k in ("format", "fingerprint", "tokenizer", "max_tokens", "count")}:
        return None
    return DiskTokenStore(folder, texts)


def _open_or_build(folder: str, backend, texts, max_tokens, chunk: int, batch: int) -> DiskTokenStore:
    plan = _plan(texts, tokenizer_key(backend), max_tokens, chunk)
    store = _open_if_built(folder, texts, plan)
    if store is not None:
        return store
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, "meta.json")):   # another corpus / tokenizer: rebuilt
        os.unlink(os.path.join(folder, "meta.json"))
    parts = os.path.join(folder, "parts")
    with sigterm_stops(f"stopped tokenising {texts.path} into {folder}; the finished chunks are kept in "
                       f"{parts} and a rerun continues from them"):
        paths = _build_parts(parts, backend, texts, max_tokens, chunk, batch, plan)
        _join_parts(folder, paths, plan)
    shutil.rmtree(parts, ignore_errors=True)
    log.info("token store: %d texts written to %s", len(texts), folder)
    return DiskTokenStore(folder, texts)


def token_store_for(featurizer_or_backend, texts, *, max_tokens: int | None, chunk: int = DEFAULT_CHUNK,
                    batch: int = DEFAULT_BATCH) -> DiskTokenStore:
    """The token store of ``texts`` (a TextStore) under the featuriser's tokenizer (or a
    ``tokenizers.Tokenizer`` backend), each text cut to ``max_tokens`` content tokens (``None``:
    all), in ``<texts.path>/tokens/<tokenizer hash>_L<max_tokens>/``: re-opened when built, else
    built in chunks (module doc). Every process calls; process 0 builds, the others wait and read."""
    if chunk < 1 or batch < 1:
        raise ValueError(f"chunk and batch must be >= 1, got {chunk}, {batch}")
    backend = getattr(featurizer_or_backend, "_backend", featurizer_or_backend)
    key = tokenizer_key(backend)
    folder = os.path.join(texts.path, "tokens", f"{key}_L{'all' if max_tokens is None else int(max_tokens)}")
    import jax

    if jax.process_count() == 1:
        return _open_or_build(folder, backend, texts, max_tokens, chunk, batch)
    from pile_jax.io import barrier, is_primary

    if is_primary():
        _open_or_build(folder, backend, texts, max_tokens, chunk, batch)
    barrier(f"pile_jax.token_store.{texts.fingerprint}.{key}")
    store = _open_if_built(folder, texts, _plan(texts, key, max_tokens, chunk))
    if store is None:
        raise FileNotFoundError(f"{folder}: process {jax.process_index()} cannot read the token store process 0 "
                                "wrote (the collection's store folder must be shared by all processes)")
    return store
