"""Text -> int32 model inputs: tokenise each text once, assemble batches from ids with NumPy.

Two steps, one contract:

1. :func:`tokenize_texts` runs the checkpoint's fast tokenizer (the Rust batch path, all cores)
   once over a set of texts and keeps the *content* tokens (no special tokens) in a
   :class:`TokenStore`: ragged int32 ids + int64 offsets, keyed by text id, saved/loaded as one
   ``.npz`` through :mod:`pile_jax.io` (local path or URL).
2. The assemblers build padded batches from store rows with vectorised NumPy (lengths, cumsum,
   ``np.repeat``, one scatter per array; no per-pair Python):

   * :func:`assemble_pairs` (cross-encoders): the query keeps at most ``max_query_length``
     content tokens, the document fills the rest up to ``max_length`` (``max_length -
     num_special - len(query)`` content tokens), the checkpoint's pair template around them
     (``[CLS] q [SEP] d [SEP]`` with type ids 0/1 for BERT, ``<s> q </s></s> d </s>`` for
     RoBERTa), read once from the tokenizer's post-processor (:class:`SpecialTemplate`);
   * :func:`assemble_texts` (two-tower students, bi-encoders): one text per row, at most
     ``budget`` content tokens, a prefix/suffix of special tokens (the single-text template,
     only its suffix, or none).

One bucket rule, :func:`bucket_length`: a row is truncated to ``max_length`` first, then the
batch is padded (right: pad id, mask 0, type 0) to the smallest bucket ``>=`` its longest row;
the buckets are the given ones below ``max_length`` plus ``max_length`` itself, so a model sees
only a few static shapes.

:class:`PairTokenizer` (pairs) and :class:`TwoTowerTokenizer` (query and document towers) are the
two featurisers built on these functions. Both offer the same interface to the train loop and
the scorers: ``tokenize_texts(texts, keys)`` (a store), ``assemble(q_store, q_rows [B], d_store,
d_rows [B, n])`` (the batch arrays), ``item_lengths(...)`` (tokens per pair / item, ``[B, n]``)
and ``featurize(queries [B], docs [B][n])`` (text in: tokenise the unique texts once, assemble).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .token_store import encode_tokens  # noqa: F401 (re-exported: the one tokenizer call)

__all__ = [
    "PairTokenizer", "TwoTowerTokenizer", "TokenStore", "SpecialTemplate", "tokenize_texts", "encode_tokens",
    "load_or_tokenize",
    "store_fingerprint", "bucket_length",
    "bucket_set", "assemble_pairs", "assemble_texts", "bucketed_batches", "ragged_arange", "DEFAULT_BUCKETS",
    "TWO_TOWER_BUCKETS", "DEFAULT_MAX_LENGTH", "DEFAULT_MAX_QUERY_LENGTH", "DEFAULT_MAX_DOC_LENGTH",
    "DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH", "PIPELINE_MAX_LENGTH", "PIPELINE_MAX_QUERY_LENGTH", "STUDY_MAX_DOC_LENGTH",
]

# Token-length defaults: the one home of each. Every function signature and ``cfg.get(key, default)``
# of the library (tokenisers, rankers, students, reranker, the ``train`` job's ``student:`` section,
# the CLI) refers to these names; a config that sets the key is never affected.
DEFAULT_MAX_LENGTH = 256        # query + document tokens of a cross-encoder pair (specials included)
DEFAULT_MAX_QUERY_LENGTH = 64   # query budget inside a pair (clipped so one document token always fits)
# Two-tower students (BERT-dot, ColBERT, PreTT, TK) encode query and document separately; their
# budgets are the usual Margin-MSE setting (Hofstaetter et al. 2020: query 30, passage 200 tokens).
# The query default differs from the pair one on purpose: a query encoded alone needs no room for a
# document, and PreTT pads every query to this fixed length, so a short budget is cheaper.
DEFAULT_MAX_DOC_LENGTH = 200
DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH = 30
# The ``model:`` section of ``pile-jax run`` / ``pile-jax study`` configs (pipeline, prepare, study,
# config validation): smaller documented defaults sized for CPU budgets. The shipped configs set
# these keys explicitly; the defaults apply only to a config that leaves them out.
PIPELINE_MAX_LENGTH = 128
PIPELINE_MAX_QUERY_LENGTH = 32
STUDY_MAX_DOC_LENGTH = 96       # study cells' two-tower document budget (the pipeline uses max_length)

DEFAULT_BUCKETS = (32, 64, 128, 192, 256, 384, 512)
TWO_TOWER_BUCKETS = (8, 16, 32, 64, 128, 192, 256, 384, 512)


# ============================================================================ buckets
def bucket_set(buckets: Sequence[int], max_length: int) -> tuple:
    """The buckets below ``max_length`` plus ``max_length`` itself, sorted."""
    return tuple(sorted({int(b) for b in buckets if 0 < int(b) < int(max_length)} | {int(max_length)}))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ``>= length`` of a :func:`bucket_set` (whose last entry is the
    ``max_length``). Rows are truncated before bucketing, so a longer ``length`` is a bug:
    ``ValueError``."""
    for b in buckets:
        if b >= length:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]} (rows are truncated before bucketing)")


def bucketed_batches(lengths: Sequence[int], batch_size: int) -> list:
    """Indices grouped into batches of ``batch_size`` (the last may be shorter) after a stable
    sort by length, so every batch holds similar lengths. Returns a list of int64 arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# ============================================================================ token store
@dataclasses.dataclass
class TokenStore:
    """Content token ids of a set of texts: text ``r`` is ``tokens[offsets[r]:offsets[r + 1]]``.

    ``keys`` name the rows (text ids); ``index`` maps a key (``str`` or its UTF-8 ``bytes``) to
    its row. The empty key ``""`` (padding items) always maps to an empty row.
    """

    keys: tuple
    tokens: np.ndarray    # int32 [T]
    offsets: np.ndarray   # int64 [N + 1]

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens, np.int32)
        self.offsets = np.asarray(self.offsets, np.int64)
        self.keys = tuple(str(k) for k in self.keys)
        if self.offsets.shape != (len(self.keys) + 1,) or self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens):
            raise ValueError(f"TokenStore: offsets {self.offsets.shape} do not match {len(self.keys)} keys "
                             f"and {len(self.tokens)} tokens")
        if "" not in self.keys:   # padding items: one empty row
            self.keys = self.keys + ("",)
            self.offsets = np.append(self.offsets, self.offsets[-1])
        self.index = {k: i for i, k in enumerate(self.keys)}
        self._bytes_index = None
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, keys) -> np.ndarray:
        """Rows of ``keys`` (any shape; str or bytes), int64 of the same shape; unknown keys raise
        a ``KeyError`` naming the key."""
        if isinstance(keys, list) and not (keys and isinstance(keys[0], (list, tuple, np.ndarray))):
            flat, shape = keys, (len(keys),)     # the collate's flat id lists: no array round trip
        else:
            arr = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) or keys.dtype.kind != "O" else keys
            flat, shape = arr.ravel().tolist(), arr.shape
        index = self.index
        if flat and isinstance(flat[0], bytes):   # TFDS records carry bytes ids
            if self._bytes_index is None:
                self._bytes_index = {k.encode("utf-8"): i for k, i in self.index.items()}
            index = self._bytes_index
        try:
            out = np.fromiter((index[k] for k in flat), np.int64, len(flat))
        except KeyError:   # mixed str / bytes ids (e.g. "" padding records among TFDS records)
            out = np.fromiter((self._row(k) for k in flat), np.int64, len(flat))
        return out.reshape(shape)

    def _row(self, key) -> int:
        text = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        if text not in self.index:
            raise KeyError(f"text id {text!r} is not in the token store ({len(self.keys)} texts)")
        return self.index[text]

    def ids(self, row: int) -> np.ndarray:
        return self.tokens[self.offsets[row]:self.offsets[row + 1]]

    def save(self, path, *, fingerprint: str = "") -> None:
        """One ``.npz`` (``keys``, ``tokens``, ``offsets``, ``fingerprint``) at a local path or URL,
        atomically."""
        from pile_jax.io import save_npz

        save_npz(path, {"keys": np.asarray(self.keys, dtype=np.str_), "tokens": self.tokens, "offsets": self.offsets,
                        "fingerprint": np.asarray(fingerprint)})

    @classmethod
    def load(cls, path, *, fingerprint: str | None = None) -> "TokenStore | None":
        """The store saved at ``path``; with ``fingerprint``: ``None`` when the file was made
        from other texts or another tokenizer (or does not exist)."""
        from pile_jax.io import as_path, load_npz

        if fingerprint is not None and not as_path(path).exists():
            return None
        data = load_npz(path)
        missing = {"keys", "tokens", "offsets"} - set(data)
        if missing:
            raise ValueError(f"{path}: not a token store (missing {sorted(missing)})")
        if fingerprint is not None and str(data.get("fingerprint", "")) != fingerprint:
            return None
        return cls(tuple(data["keys"].tolist()), data["tokens"], data["offsets"])


def _backend(tokenizer):
    """A private ``tokenizers.Tokenizer`` copy without truncation / padding settings."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        backend = tokenizer
    else:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; pile_jax needs one "
                             "(a tokenizer.json in the model folder)")
    backend = Tokenizer.from_str(backend.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def tokenize_texts(backend, texts: Sequence[str], keys: Sequence[str] | None = None) -> TokenStore:
    """Content tokens (no special tokens) of every text, one Rust ``encode_batch`` call (all
    cores; ``RAYON_NUM_THREADS`` caps them). ``keys`` default to ``"0", "1", ...``."""
    texts = [str(t) for t in texts]
    keys = [str(i) for i in range(len(texts))] if keys is None else [str(k) for k in keys]
    if len(keys) != len(texts):
        raise ValueError(f"{len(keys)} keys for {len(texts)} texts")
    tokens, lengths = encode_tokens(backend, texts)
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenStore(tuple(keys), tokens, offsets)


def store_fingerprint(backend, keys: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 (16 hex digits) of the tokenizer definition, the keys and the texts."""
    import hashlib

    h = hashlib.sha256(backend.to_str().encode("utf-8"))
    for part in (keys, texts):
        h.update("\x00".join(map(str, part)).encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()[:16]


def load_or_tokenize(featurizer, texts: Mapping[str, str], path=None, *, max_tokens: int | None = None) -> TokenStore:
    """The token store of ``texts`` (``{id: text}``) under ``featurizer``'s tokenizer: read from
    ``path`` (local or URL) when it holds the same texts and tokenizer, else tokenised once
    and (with ``path``, on process 0) saved there for the next run.

    ``texts`` an on-disk :class:`~pile_jax.data.textstore.TextStore`: the corpus' own token
    store instead (:func:`pile_jax.models.token_store.token_store_for`, kept beside the text
    store, each text cut to ``max_tokens``; ``path`` is not used), memory-mapped: no in-memory
    store of the corpus is built.

    On several processes (with ``path``; every process must call) only process 0 tokenises: it
    decides whether ``path`` is usable (broadcast), writes it if not, a barrier, and the other
    processes read what it wrote (``FileNotFoundError`` naming ``path`` if they cannot see it)."""
    from .token_store import is_text_store, token_store_for

    if is_text_store(texts):
        return token_store_for(featurizer, texts, max_tokens=max_tokens)
    keys, values = list(texts), [str(texts[k]) for k in texts]
    if path is None:
        return featurizer.tokenize_texts(values, keys)
    import jax

    from pile_jax.io import barrier, is_primary

    fp = store_fingerprint(featurizer._backend, keys, values)
    if jax.process_count() == 1:
        store = TokenStore.load(path, fingerprint=fp)
        if store is None:
            store = featurizer.tokenize_texts(values, keys)
            store.save(path, fingerprint=fp)
        return store
    from jax.experimental import multihost_utils

    store = TokenStore.load(path, fingerprint=fp) if is_primary() else None
    usable = bool(multihost_utils.broadcast_one_to_all(np.asarray(int(store is not None), np.int32)))
    if not usable and is_primary():
        store = featurizer.tokenize_texts(values, keys)
        store.save(path, fingerprint=fp)
    barrier(f"pile_jax.tokens.{fp}")
    if not is_primary():
        store = TokenStore.load(path, fingerprint=fp)
        if store is None:
            raise FileNotFoundError(f"{path}: process {jax.process_index()} cannot read the token store process 0 "
                                    "wrote (the work folder must be shared by all processes)")
    return store


# ============================================================================ special-token template
@dataclasses.dataclass(frozen=True)
class SpecialTemplate:
    """Where a checkpoint's post-processor puts special tokens, read by probing it once.

    Pair: ``prefix A middle B suffix``; single: ``single_prefix A single_suffix``. Each part is
    a tuple of ``(token id, type id)``; ``type_a`` / ``type_b`` are the content type ids.
    """

    prefix: tuple
    middle: tuple
    suffix: tuple
    type_a: int
    type_b: int
    single_prefix: tuple
    single_suffix: tuple
    single_type: int

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def from_tokenizer(cls, backend) -> "SpecialTemplate":
        # probe texts whose content tokens are not special; their counts locate the segments
        a = backend.encode("a b", add_special_tokens=False)
        b = backend.encode("c", add_special_tokens=False)
        na, nb = len(a.ids), len(b.ids)
        if na == 0 or nb == 0:
            raise ValueError("cannot read the special-token template: the probe texts give no tokens")

        def split(enc, counts):
            ids, types, special = enc.ids, enc.type_ids, enc.special_tokens_mask
            parts, content_types, k = [[]], [], 0
            seg, taken = 0, 0
            for i, t, s in zip(ids, types, special):
                if s:
                    parts[-1].append((int(i), int(t)))
                    continue
                if taken == 0:
                    content_types.append(int(t))
                taken += 1
                if taken == counts[seg]:
                    seg, taken = seg + 1, 0
                    parts.append([])
                k += 1
            if k != sum(counts) or len(parts) != len(counts) + 1:
                raise ValueError("cannot read the special-token template from the tokenizer's post-processor")
            return [tuple(p) for p in parts], content_types

        pair, (ta, tb) = split(backend.post_process(a, b, add_special_tokens=True), (na, nb))
        single, (ts,) = split(backend.post_process(a, None, add_special_tokens=True), (na,))
        return cls(prefix=pair[0], middle=pair[1], suffix=pair[2], type_a=ta, type_b=tb,
                   single_prefix=single[0], single_suffix=single[1], single_type=ts)


# ============================================================================ assemblers
def ragged_arange(lengths: np.ndarray) -> np.ndarray:
    """``concat([arange(l) for l in lengths])`` without a Python loop."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)


def _put_specials(ids, types, L, row_base, start, specials):
    """Write the constant special tokens ``specials`` at columns ``start + j`` of every row."""
    for j, (tid, ttype) in enumerate(specials):
        flat = row_base + start + j
        ids[flat] = tid
        if ttype:
            types[flat] = ttype


def _put_content(ids, types, store, rows, lengths, row_base, start, ttype):
    """Write the first ``lengths[i]`` tokens of store row ``rows[i]`` at flat positions
    ``row_base[i] + start[i] + j``: one ``np.repeat`` per index array over the run of all tokens."""
    ends = np.cumsum(lengths)
    shift = ends - lengths                 # where row i's tokens start in the run
    ar = np.arange(int(ends[-1]) if len(ends) else 0)
    src = np.repeat(store.offsets[rows] - shift, lengths) + ar
    dst = np.repeat(row_base + start - shift, lengths) + ar
    ids[dst] = store.tokens[src]
    if ttype:
        types[dst] = ttype


def pair_lengths(template: SpecialTemplate, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows,
                 *, max_length: int, max_query_length: int):
    """``(query tokens, document tokens, pair length)`` int64 arrays (shape of the rows) after
    truncation: ``q = min(|q|, max_query_length)``, ``d = min(|d|, max_length - num_special - q)``."""
    q = np.minimum(q_store.lengths[np.asarray(q_rows)], max_query_length)
    d = np.minimum(d_store.lengths[np.asarray(d_rows)], max_length - template.num_special - q)
    return q, d, q + d + template.num_special


def assemble_pairs(template: SpecialTemplate, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows, *,
                   max_length: int, max_query_length: int, buckets: Sequence[int], pad_id: int,
                   length: int | None = None) -> dict:
    """Pairs ``(q_rows[i], d_rows[i])`` (any equal shapes ``S``) -> ``input_ids``,
    ``attention_mask``, ``token_type_ids`` int32 ``[*S, L]`` under the pair contract (module doc);
    ``L`` = the bucket of the longest pair, or ``length`` when given."""
    q_rows, d_rows = np.asarray(q_rows, np.int64), np.asarray(d_rows, np.int64)
    if q_rows.shape != d_rows.shape:
        raise ValueError(f"query rows {q_rows.shape} and document rows {d_rows.shape} differ in shape")
    shape = q_rows.shape
    q_rows, d_rows = q_rows.ravel(), d_rows.ravel()
    ql, dl, total = pair_lengths(template, q_store, q_rows, d_store, d_rows, max_length=max_length,
                                 max_query_length=max_query_length)
    longest = int(total.max()) if total.size else 1
    L = bucket_length(longest, buckets) if length is None else int(length)
    if longest > L:
        raise ValueError(f"a pair has {longest} tokens, more than the requested length {L}")
    N = len(q_rows)
    ids = np.full(N * L, pad_id, np.int32)
    types = np.zeros(N * L, np.int32)
    base = np.arange(N, dtype=np.int64) * L
    P, M = len(template.prefix), len(template.middle)
    _put_specials(ids, types, L, base, 0, template.prefix)
    _put_content(ids, types, q_store, q_rows, ql, base, P, template.type_a)
    _put_specials(ids, types, L, base, P + ql, template.middle)
    _put_content(ids, types, d_store, d_rows, dl, base, P + ql + M, template.type_b)
    _put_specials(ids, types, L, base, P + ql + M + dl, template.suffix)
    mask = (np.arange(L, dtype=np.int64)[None, :] < total[:, None]).astype(np.int32)
    return {"input_ids": ids.reshape(*shape, L), "attention_mask": mask.reshape(*shape, L),
            "token_type_ids": types.reshape(*shape, L)}


def assemble_texts(store: TokenStore, rows, *, budget: int, prefix: Sequence = (), suffix: Sequence = (),
                   buckets: Sequence[int], pad_id: int, length: int | None = None):
    """One text per row (any shape ``S``): ``prefix + content[:budget] + suffix`` -> ``(ids,
    mask)`` int32 ``[*S, L]``, ``L`` the bucket of the longest row (or ``length``)."""
    rows = np.asarray(rows, np.int64)
    shape = rows.shape
    rows = rows.ravel()
    cl = np.minimum(store.lengths[rows], budget)
    total = cl + len(prefix) + len(suffix)
    longest = int(total.max()) if total.size else 1
    L = bucket_length(max(longest, 1), buckets) if length is None else int(length)
    if longest > L:
        raise ValueError(f"a text has {longest} tokens, more than the requested length {L}")
    N = len(rows)
    ids = np.full(N * L, pad_id, np.int32)
    scratch = np.zeros(N * L, np.int32)   # type ids are not used by the towers
    base = np.arange(N, dtype=np.int64) * L
    _put_specials(ids, scratch, L, base, 0, prefix)
    _put_content(ids, scratch, store, rows, cl, base, len(prefix), 0)
    _put_specials(ids, scratch, L, base, len(prefix) + cl, suffix)
    mask = (np.arange(L, dtype=np.int64)[None, :] < total[:, None]).astype(np.int32)
    return ids.reshape(*shape, L), mask.reshape(*shape, L)


def pad_rows(store: TokenStore, rows, idx, size: int) -> np.ndarray:
    """int64 ``[size]``: ``rows[idx]`` then the row of the empty text ``""`` (the store's padding
    key: ``[CLS] [SEP]`` for a tower, an empty pair) up to ``size`` rows, the static batch shape
    of :func:`pile_jax.parallel.map_sorted`'s last batch."""
    out = np.full(size, store.index[""], np.int64)
    out[:len(idx)] = np.asarray(rows)[idx]
    return out


def pair_batches(features, pairs: Sequence[tuple[str, str]], *, distributed: bool | None = None):
    """``(lengths [N], make_batch(idx, rows) -> batch)`` for scoring ``pairs`` as groups of one
    with a tokenise-once featuriser: each unique text tokenised once (the Rust batch path),
    ``lengths`` the tokens per pair (``item_lengths``), ``make_batch`` assembles pairs ``idx``
    from ids, padded with empty pairs to ``rows`` rows, plus ``mask [rows, 1]`` all True. A
    featuriser with a frozen document index (``index_documents``) encodes the unique documents
    first (``distributed`` as in :func:`pile_jax.parallel.map_sorted`)."""
    qs, ds = [str(q) for q, _ in pairs], [str(d) for _, d in pairs]
    texts = list(dict.fromkeys(qs + ds))
    store = tokenize_texts(features._backend, texts, texts)
    q_rows = store.rows(np.asarray(qs, dtype=object))
    d_rows = store.rows(np.asarray(ds, dtype=object))
    if hasattr(features, "index_documents"):   # frozen document vectors: each unique document once
        features.index_documents(store, np.unique(np.append(d_rows, store.index[""])), distributed=distributed)

    def make_batch(idx, size):
        q, d = pad_rows(store, q_rows, idx, size), pad_rows(store, d_rows, idx, size)
        batch = features.assemble(store, q, store, d[:, None])
        batch["mask"] = np.ones((size, 1), bool)
        return batch
    return features.item_lengths(store, q_rows, store, d_rows), make_batch


def _load_tokenizer(tokenizer_or_path):
    if isinstance(tokenizer_or_path, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from .hub import resolve_model_path

        return AutoTokenizer.from_pretrained(str(resolve_model_path(tokenizer_or_path)))
    return tokenizer_or_path


def _unique_store(backend, texts: Sequence[str]):
    """A store of the unique texts and each input's row (texts keyed by themselves)."""
    texts = [str(t) for t in texts]
    unique = list(dict.fromkeys(texts))
    store = tokenize_texts(backend, unique, unique)
    return store, store.rows(np.asarray(texts, dtype=object)) if texts else np.zeros(0, np.int64)


def _group_shape(queries, docs):
    """``(queries, docs padded to n with "", n, present [B, n] bool)``."""
    queries, docs = list(queries), [list(row) for row in docs]
    if len(queries) != len(docs):
        raise ValueError(f"queries ({len(queries)}) and docs ({len(docs)}) differ in length")
    n = max((len(r) for r in docs), default=0)
    present = np.asarray([[j < len(r) for j in range(n)] for r in docs], bool).reshape(len(docs), n)
    if not present.all():
        docs = [r + [""] * (n - len(r)) for r in docs]
    return queries, docs, n, present


# ============================================================================ featurisers
class PairTokenizer:
    """Cross-encoder pairs under the pair contract (module doc), from text or from token stores.

    ``tokenizer_or_path``: a transformers *fast* tokenizer, a ``tokenizers.Tokenizer`` (give
    ``pad_token_id``), or a folder / name known to ``resolve_model_path``. The query budget is
    clipped to ``max_length - num_special - 1`` (at least one document token always fits).
    """

    def __init__(self, tokenizer_or_path, *, max_length: int = DEFAULT_MAX_LENGTH,
                 max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, pad_token_id: int | None = None):
        self.tokenizer = _load_tokenizer(tokenizer_or_path)
        self._backend = _backend(self.tokenizer)
        self.template = SpecialTemplate.from_tokenizer(self._backend)
        self.num_special = self.template.num_special
        self.max_length = int(max_length)
        self.max_query_length = int(max_query_length)
        if self.max_length < self.num_special + 2:
            raise ValueError(f"max_length={max_length} leaves no room for text after {self.num_special} special tokens")
        if self.max_query_length < 1:
            raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
        self.max_query_length = min(self.max_query_length, self.max_length - self.num_special - 1)
        self.buckets = bucket_set(buckets, self.max_length)
        pad = pad_token_id if pad_token_id is not None else getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else 0)

    # --- from ids (what the train loop and the scorers use)
    def tokenize_texts(self, texts: Sequence[str], keys: Sequence[str] | None = None) -> TokenStore:
        """Tokenise every text once (content tokens, Rust batch path)."""
        return tokenize_texts(self._backend, texts, keys)

    def item_lengths(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows) -> np.ndarray:
        """Tokens of each pair ``(q_rows[b], d_rows[b, j])`` after truncation, int64 ``[B, n]``
        (``q_rows`` ``[B]``; or equal shapes)."""
        q_rows, d_rows = _broadcast_rows(q_rows, d_rows)
        return pair_lengths(self.template, q_store, q_rows, d_store, d_rows, max_length=self.max_length,
                            max_query_length=self.max_query_length)[2]

    def assemble(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows, *, length: int | None = None) -> dict:
        """Groups: ``q_rows [B]``, ``d_rows [B, n]`` -> ``input_ids``, ``attention_mask``,
        ``token_type_ids`` int32 ``[B, n, L]`` (also accepts equal shapes, e.g. flat pairs)."""
        q_rows, d_rows = _broadcast_rows(q_rows, d_rows)
        return assemble_pairs(self.template, q_store, q_rows, d_store, d_rows, max_length=self.max_length,
                              max_query_length=self.max_query_length, buckets=self.buckets,
                              pad_id=self.pad_token_id, length=length)

    # --- from text
    def featurize(self, queries: Sequence[str], docs: Sequence[Sequence[str]]) -> dict:
        """``queries [B]``, ``docs [B][n]`` -> ``[B, n, L]`` arrays (each unique text tokenised once)."""
        queries, docs, n, _ = _group_shape(queries, docs)
        store, rows = _unique_store(self._backend, [*queries, *(d for r in docs for d in r)])
        B = len(queries)
        return self.assemble(store, rows[:B], store, rows[B:].reshape(B, n))

    def encode(self, queries: Sequence[str], documents: Sequence[str]) -> dict:
        """Flat pairs -> ``[N, L]`` arrays padded to the bucket of the longest pair."""
        queries, documents = list(queries), list(documents)
        if len(queries) != len(documents):
            raise ValueError(f"queries ({len(queries)}) and documents ({len(documents)}) differ in length")
        store, rows = _unique_store(self._backend, [*queries, *documents])
        N = len(queries)
        return self.assemble(store, rows[:N], store, rows[N:])

    __call__ = encode

    def pair_lengths(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """Token count of each flat pair after truncation, int64 ``[N]``."""
        store, rows = _unique_store(self._backend, [*map(str, queries), *map(str, documents)])
        N = len(queries)
        return self.item_lengths(store, rows[:N], store, rows[N:])

    def bucket_for(self, length: int) -> int:
        """The smallest bucket ``>= length``."""
        return bucket_length(length, self.buckets)

    def tokenize(self, queries: Sequence[str], documents: Sequence[str]) -> list:
        """Unpadded ``(ids, type_ids)`` int32 arrays per flat pair (for callers that pad later)."""
        enc = self.encode(queries, documents)
        n = enc["attention_mask"].sum(-1)
        return [(enc["input_ids"][i, :k], enc["token_type_ids"][i, :k]) for i, k in enumerate(n.tolist())]

    def pad(self, encoded: Sequence[tuple], length: int | None = None, rows: int | None = None) -> dict:
        """Pad :meth:`tokenize` output to ``length`` (default: the bucket of the longest) and,
        optionally, to ``rows`` rows (extra rows are all padding, mask 0)."""
        lengths = np.asarray([len(ids) for ids, _ in encoded], np.int64)
        longest = int(lengths.max()) if len(lengths) else 1
        length = self.bucket_for(longest) if length is None else int(length)
        if longest > length:
            raise ValueError(f"a pair has {longest} tokens, more than the requested length {length}")
        n = len(encoded) if rows is None else int(rows)
        ids = np.full((n, length), self.pad_token_id, np.int32)
        types = np.zeros((n, length), np.int32)
        if len(encoded):
            flat = np.repeat(np.arange(len(encoded)) * length, lengths) + ragged_arange(lengths)
            ids.reshape(-1)[flat] = np.concatenate([np.asarray(i, np.int32) for i, _ in encoded])
            types.reshape(-1)[flat] = np.concatenate([np.asarray(t, np.int32) for _, t in encoded])
        mask = np.zeros((n, length), np.int32)
        mask[:len(encoded)] = np.arange(length)[None, :] < lengths[:, None]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _broadcast_rows(q_rows, d_rows):
    q_rows, d_rows = np.asarray(q_rows, np.int64), np.asarray(d_rows, np.int64)
    if q_rows.ndim == d_rows.ndim - 1:
        q_rows = np.broadcast_to(q_rows[..., None], d_rows.shape)
    if q_rows.shape != d_rows.shape:
        raise ValueError(f"query rows {q_rows.shape} do not match document rows {d_rows.shape}")
    return q_rows, d_rows


class TwoTowerTokenizer:
    """Queries and documents as separate towers, from text or from token stores.

    ``assemble / featurize -> {query_ids, query_mask [B, Lq], doc_ids, doc_mask [B, n, Ld]}``
    int32. Each text keeps at most ``max_query_length`` / ``max_doc_length`` content tokens.
    ``doc_special``: ``"cls_sep"`` (the single-text template, ``[CLS] d [SEP]``, bi-encoders),
    ``"sep"`` (its suffix only, ``d [SEP]``, PreTT) or ``"none"`` (TK's words); ``query_special``:
    ``True`` (the single-text template) or ``False``. Rows are padded to :func:`bucket_length`
    of the longest, capped at the full budget; ``fixed_query_length=True`` pads every query
    batch to the full query budget (PreTT: precomputed document halves stay valid).
    ``tokenizer_or_path``: a transformers fast tokenizer, or a folder / name for ``resolve_model_path``.
    """

    def __init__(self, tokenizer_or_path, *, max_query_length: int = DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
                 max_doc_length: int = DEFAULT_MAX_DOC_LENGTH,
                 query_special: bool = True, doc_special: str = "cls_sep", fixed_query_length: bool = False,
                 buckets: Sequence[int] = TWO_TOWER_BUCKETS):
        if doc_special not in ("cls_sep", "sep", "none"):
            raise ValueError(f"doc_special must be 'cls_sep', 'sep' or 'none', got {doc_special!r}")
        self.tokenizer = _load_tokenizer(tokenizer_or_path)
        self._backend = _backend(self.tokenizer)
        t = SpecialTemplate.from_tokenizer(self._backend)
        self.template = t
        self.max_query_length = int(max_query_length)
        self.max_doc_length = int(max_doc_length)
        self.query_special = bool(query_special)
        self.doc_special = doc_special
        self.fixed_query_length = bool(fixed_query_length)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(0 if pad is None else pad)
        self.query_specials = ((t.single_prefix, t.single_suffix) if self.query_special else ((), ()))
        self.doc_specials = {"cls_sep": (t.single_prefix, t.single_suffix), "sep": ((), t.single_suffix),
                             "none": ((), ())}[doc_special]
        self.query_total = self.max_query_length + sum(map(len, self.query_specials))
        self.doc_total = self.max_doc_length + sum(map(len, self.doc_specials))
        self.query_buckets = bucket_set(buckets, self.query_total)
        self.doc_buckets = bucket_set(buckets, self.doc_total)
        self.buckets = tuple(sorted(int(b) for b in buckets))

    def tokenize_texts(self, texts: Sequence[str], keys: Sequence[str] | None = None) -> TokenStore:
        return tokenize_texts(self._backend, texts, keys)

    def item_lengths(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows) -> np.ndarray:
        """Tokens of the longer item of each (query, document): ``max(|q item|, |d item|)``,
        int64 ``[B, n]`` (what decides the padded lengths)."""
        q_rows, d_rows = np.asarray(q_rows, np.int64), np.asarray(d_rows, np.int64)
        q = np.minimum(q_store.lengths[q_rows], self.max_query_length) + sum(map(len, self.query_specials))
        d = np.minimum(d_store.lengths[d_rows], self.max_doc_length) + sum(map(len, self.doc_specials))
        if q.ndim == d.ndim - 1:
            q = q[..., None]
        return np.maximum(q, d)

    def encode_query_rows(self, store: TokenStore, rows):
        """``-> (ids, mask)`` int32 ``[N, Lq]``."""
        return assemble_texts(store, rows, budget=self.max_query_length, prefix=self.query_specials[0],
                              suffix=self.query_specials[1], buckets=self.query_buckets, pad_id=self.pad_token_id,
                              length=self.query_total if self.fixed_query_length else None)

    def encode_document_rows(self, store: TokenStore, rows):
        """``-> (ids, mask)`` int32 ``[*rows.shape, Ld]``."""
        return assemble_texts(store, rows, budget=self.max_doc_length, prefix=self.doc_specials[0],
                              suffix=self.doc_specials[1], buckets=self.doc_buckets, pad_id=self.pad_token_id)

    def assemble(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows) -> dict:
        """``q_rows [B]``, ``d_rows [B, n]`` -> the tower arrays (an empty text, e.g. the padding
        key ``""``, is its special tokens only, as with text input)."""
        qi, qm = self.encode_query_rows(q_store, q_rows)
        di, dm = self.encode_document_rows(d_store, d_rows)
        return {"query_ids": qi, "query_mask": qm, "doc_ids": di, "doc_mask": dm}

    def featurize(self, queries: Sequence[str], docs: Sequence[Sequence[str]]) -> dict:
        """``queries [B]``, ``docs [B][n_b]`` -> tower arrays (``n = max n_b``; missing documents
        are all padding, mask 0)."""
        queries, docs, n, present = _group_shape(queries, docs)
        qs, qr = _unique_store(self._backend, queries)
        ds, dr = _unique_store(self._backend, [d for r in docs for d in r])
        out = self.assemble(qs, qr, ds, dr.reshape(len(queries), n))
        if not present.all():   # missing documents of ragged lists: all padding, mask 0
            out["doc_ids"][~present] = self.pad_token_id
            out["doc_mask"][~present] = 0
        return out

    encode = featurize
    __call__ = featurize

    def encode_queries(self, queries: Sequence[str]):
        """Text -> ``(ids, mask)`` int32 ``[N, Lq]``."""
        store, rows = _unique_store(self._backend, queries)
        return self.encode_query_rows(store, rows)

    def encode_documents(self, docs: Sequence[str]):
        """Text -> ``(ids, mask)`` int32 ``[N, Ld]``."""
        store, rows = _unique_store(self._backend, docs)
        return self.encode_document_rows(store, rows)


# ------------------------------------------------------------------------------ schema fragments
def check_lengths(c, model: Mapping[str, Any], where: str, base_key: str = "base",
                  default_length: int | None = None) -> None:
    """The schema fragment of a model's lengths: ``max_length`` / ``max_query_length`` /
    ``max_doc_length`` positive integers, ``max_length`` and ``max_doc_length`` (or the default
    length) within the position embeddings of ``model[base_key]`` (``c``: a
    :class:`pile_jax.config.Checker`)."""
    from .hub import position_limit

    default_length = PIPELINE_MAX_LENGTH if default_length is None else default_length
    base = model.get(base_key, "all-MiniLM-L6-v2")
    length = model.get("max_length", default_length)
    for key in ("max_length", "max_query_length", "max_doc_length"):
        c.number(model, key, where, integer=True, low=1, nullable=False)
    try:
        limit, folder = position_limit(str(base))
    except (OSError, ValueError, KeyError) as e:
        c.fail(f"{where}.{base_key}", f"cannot read the model {base!r}: {e}")
    for key in ("max_length", "max_doc_length"):
        if key in model and int(model[key]) > limit:
            c.fail(f"{where}.{key}", f"{model[key]} exceeds the {limit} position embeddings of {folder}")
    if "max_length" not in model and int(length) > limit:
        c.fail(f"{where}.max_length", f"the default {length} exceeds the {limit} position embeddings of {folder}")
