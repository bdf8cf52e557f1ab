"""A query encoder scored against a frozen, precomputed document index (student kind ``query_encoder``).

How a deployed bi-encoder is improved (or its query side made cheaper) without re-indexing: the
documents keep the vectors of a frozen document encoder ``E_d`` (by default the full pretrained
bi-encoder, e.g. all-MiniLM-L6-v2's 6 layers, mean pooling, L2-normalised), computed once per
document text; only a (smaller) query encoder ``E_q`` trains:

    s(q, d) = E_q(q) · v_d,    v_d = norm?(pool(E_d([CLS] d [SEP])))   (fixed)

``E_q`` is :class:`~pile_jax.models.students.BertDot`'s encoder (pooling ``mean`` or ``cls``, not
normalised by default, so the query vector's norm is the score scale the distillation losses
need). One training step runs only the query tower on ``B`` short queries; every candidate's
vector is a table lookup, so a step costs a fraction of a two-tower step and the transfer set can
be large. Hofstätter et al. 2020 (arXiv 2010.02666) train BERT-dot's two towers jointly; the
frozen document side is this library's deployment variant (docs/students.md).

* :class:`DocumentIndex`: the frozen encoder; ``vectors(store, rows)`` -> float32 ``[*rows, H]``,
  each document content encoded once per process (an in-memory cache keyed by its token ids).
* :class:`FrozenDocFeatures`: the featuriser (``tokenize_texts`` / ``index_documents`` /
  ``assemble`` / ``item_lengths`` / ``featurize``): batches hold ``query_ids``, ``query_mask``
  ``[B, Lq]`` and ``doc_vecs`` float32 ``[B, n, H]``.
* :func:`query_encoder_score_fn`: ``score_fn(params, batch) -> [B, n]``.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import jax
import numpy as np

from pile_jax.caches import BoundedCache
from pile_jax.parallel import data_parallel, map_sorted
from pile_jax.numerics import INDEX_DTYPE, SCORE_PRECISION_NAME

from .students import query_encoder_score_fn  # noqa: F401 (re-exported: the student's score)
from .tokenize import (
    DEFAULT_MAX_DOC_LENGTH,
    DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
    TokenStore,
    TwoTowerTokenizer,
    _group_shape,
    _unique_store,
    pad_rows,
)

__all__ = ["DocumentIndex", "FrozenDocFeatures", "query_encoder_score_fn", "DOC_ENCODER_OPTIONS"]

log = logging.getLogger(__name__)

# options of the frozen document side (students.options of kind query_encoder)
DOC_ENCODER_OPTIONS = ("doc_encoder", "doc_layers", "doc_pooling", "doc_normalize")

#: encoder key (:func:`encoder_key`) -> {content token-id bytes: vector}: the text vectors of the
#: frozen encoders, shared by every index and bi-encoder teacher of that encoder; owned by this
#: module, kept for the process's lifetime, at most 8 encoders (least recently used dropped first)
TEXT_VECTORS = BoundedCache("pile_jax.models.frozen_docs", "text_vectors", maxsize=8)


def encoder_key(path, num_layers: int, pooling: str, normalize: bool, max_tokens: int, dtype: str) -> tuple:
    """What identifies a text vector: checkpoint folder, layers, pooling, normalisation, content
    token budget (``[CLS] t[:max_tokens] [SEP]``), compute dtype and matmul precision (the
    policy's :data:`~pile_jax.numerics.SCORE_PRECISION_NAME`: vectors are encoded under it)."""
    return (str(path), int(num_layers), str(pooling), bool(normalize), int(max_tokens), str(dtype),
            SCORE_PRECISION_NAME)


#: Optional folder (environment variable) where the kept vectors also persist across processes,
#: one pickle per encoder key: ``{token-id bytes: float32 vector}``. The vector of a text depends
#: only on the encoder key and its token ids, so a later process reads instead of re-encoding.
VECTOR_CACHE_ENV = "PILE_JAX_VECTOR_CACHE"


def _disk_path(key: tuple):
    import hashlib
    import os

    folder = os.environ.get(VECTOR_CACHE_ENV)
    if not folder:
        return None
    return os.path.join(folder, hashlib.sha256(repr(key).encode()).hexdigest()[:24] + ".pkl")


def _load_disk(key: tuple) -> None:
    import os
    import pickle

    path = _disk_path(key)
    if path is None or key in TEXT_VECTORS or not os.path.exists(path):
        return
    with open(path, "rb") as f:
        saved_key, table = pickle.load(f)
    if saved_key == key:
        TEXT_VECTORS.put(key, table)
        log.info("vector cache: %d vectors read from %s", len(table), path)


def remember_vectors(key: tuple, store: TokenStore, rows, vectors, max_tokens: int) -> None:
    """Keep the vectors of ``rows`` of ``store`` (computed with the encoder ``key``) for every
    later reader of that key: a :class:`DocumentIndex`, or the zero-shot bi-encoder teacher
    (:func:`pile_jax.rankers.biencoder_cosine`), so no text content is encoded twice (and, with
    ``$PILE_JAX_VECTOR_CACHE`` set, no later process either)."""
    _load_disk(key)
    cache = TEXT_VECTORS.get_or_make(key, dict)
    for r, v in zip(np.asarray(rows, np.int64).tolist(), np.asarray(vectors, np.float32)):
        cache[store.ids(r)[:max_tokens].tobytes()] = v
    path = _disk_path(key)
    if path is not None and jax.process_index() == 0:
        import os
        import pickle

        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump((key, cache), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)


def cached_vectors(key: tuple, store: TokenStore, rows, max_tokens: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out[i]`` with the kept vector of ``rows[i]`` where there is one (see
    :func:`remember_vectors`); returns which rows were found (bool ``[len(rows)]``)."""
    _load_disk(key)
    cache = TEXT_VECTORS.get(key) or {}
    rows = np.asarray(rows, np.int64).tolist()
    hit = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        v = cache.get(store.ids(r)[:max_tokens].tobytes())
        if v is not None:
            out[i], hit[i] = v, True
    return hit


class DocumentIndex:
    """The frozen document encoder ``v_d = norm?(pool(E_d([CLS] d[:max_doc_length] [SEP])))``.

    ``path``: a Hugging Face folder / name (:func:`~pile_jax.models.hub.resolve_model_path`);
    ``num_layers``: its first layers (default all); ``pooling``: ``"mean"`` | ``"cls"``;
    ``normalize``: L2-normalise (all-MiniLM-L6-v2's cosine). ``tokens``: the
    :class:`~pile_jax.models.tokenize.TwoTowerTokenizer` whose document layout it reads (it must be
    this checkpoint's tokenizer). Vectors are computed once per document content per process and
    kept in memory (``H`` float32 per document: 1.5 kB for MiniLM, i.e. 1.5 GB per million) --
    except for a corpus in an on-disk token store (:mod:`pile_jax.models.token_store`): there the
    table is a memory-mapped float32 file per encoder beside the tokens, filled in chunks for the
    documents asked, and a batch reads only its candidates' rows.
    """

    def __init__(self, path, *, tokens: TwoTowerTokenizer, num_layers: Optional[int] = None, pooling: str = "mean",
                 normalize: bool = True, dtype: Optional[str] = None, batch_size: int = 64):
        from .hf_io import load_pretrained
        from .hub import resolve_model_path
        from .students import BertDot

        if pooling not in ("mean", "cls"):
            raise ValueError(f"doc_pooling must be 'mean' or 'cls', got {pooling!r}")
        self.path = str(resolve_model_path(path))
        config, params = load_pretrained(self.path, num_layers=num_layers, new_head=True, encoder_only=True)
        if dtype is not None:
            config = config.replace(dtype=dtype)
        self.config, self.params = config, params["encoder"]
        self.pooling, self.normalize, self.tokens = pooling, bool(normalize), tokens
        self.batch_size = int(batch_size)
        self.dim = int(config.hidden_size)
        self.key = encoder_key(self.path, config.num_layers, pooling, self.normalize, tokens.max_doc_length,
                               config.dtype)
        self.module = BertDot(config, pooling=pooling, normalize=self.normalize)   # its document tower, frozen
        self._encode = jax.jit(lambda p, batch: self.encode(p, batch["ids"], batch["mask"]))

    def encode(self, params, ids, mask):
        """float32 ``[N, H]`` vectors of ``ids``/``mask [N, L]`` with encoder ``params``: BertDot's
        tower ``norm?(pool(E([CLS] t [SEP])))`` (traceable: the bi-encoder teacher's score uses it)."""
        return self.module.apply({"params": {"encoder": params}}, ids, mask, method=type(self.module).encode)

    def spec(self) -> dict:
        """What identifies the document side (recorded in exports and run specs)."""
        return {"doc_encoder": self.path, "doc_layers": int(self.config.num_layers), "doc_pooling": self.pooling,
                "doc_normalize": self.normalize, "max_doc_length": int(self.tokens.max_doc_length)}

    def index(self, store: TokenStore, rows=None, *, distributed: Optional[bool] = False, progress: Optional[str] = None):
        """Compute (once) the vectors of ``rows`` of ``store`` (default: all rows).

        ``distributed``: encode data-parallel over processes (every process must call; see
        :func:`pile_jax.parallel.map_sorted`); otherwise this process encodes what it lacks.
        Distributed, the work is decided once for all processes (:meth:`encode_rows`): process 0's
        list of rows to encode is broadcast, after checking that all processes hold the same store
        (a ``ValueError`` otherwise), so differing caches never hang the all-gather or mix rows."""
        mat, have = self._table(store)
        rows = np.arange(len(store)) if rows is None else np.unique(np.asarray(rows, np.int64).ravel())
        rows = rows[~have[rows]]
        if rows.size == 0 and not (distributed and jax.process_count() > 1):   # else: take part in process 0's work
            return
        if _on_disk(store):
            return self._index_on_disk(store, rows, mat, have, distributed, progress)
        # distributed: every process encodes its share of the same rows (processes call in the
        # same order on the same stores, so their caches lack the same documents)
        mat[rows] = self.encode_rows(store, rows, distributed=distributed, progress=progress)
        have[rows] = True

    def _index_on_disk(self, store, rows, mat, have, distributed, progress) -> None:
        """Encode ``rows`` (lacking) of a disk token store in chunks of :data:`DISK_CHUNK`, each
        written to the memory-mapped table and flagged (vectors first, then ``have``) before the
        next; distributed, process 0's list of rows decides the work (as :meth:`encode_rows`)."""
        dist = bool(distributed and jax.process_count() > 1)
        if dist:
            rows = _rows_of_process_0(store, rows)
        for start in range(0, len(rows), DISK_CHUNK):
            part = rows[start:start + DISK_CHUNK]
            mat[part] = self._encode_list(store, part, self.params, None, None, progress, dist)
            mat.flush()
            have[part] = True
            have.flush()
        log.debug("document index: encoded %d documents into %s", len(rows), getattr(mat, "filename", ""))

    def encode_rows(self, store: TokenStore, rows, *, params=None, batch_size: Optional[int] = None, devices=None,
                    distributed: Optional[bool] = False, progress: Optional[str] = None) -> np.ndarray:
        """float32 ``[len(rows), H]``: the vectors of ``rows`` of ``store``. With the frozen
        params (``params`` None or this index's own) kept vectors are read (:func:`cached_vectors`)
        and new ones kept; other params (a tuned copy) neither read nor fill the cache. The rest is
        encoded in length-sorted batches of ``batch_size`` (default the index's), data-parallel
        over ``devices`` and, with ``distributed``, over processes (:func:`map_sorted`)."""
        rows = np.asarray(rows, np.int64)
        frozen = params is None or params is self.params
        params = self.params if params is None else params
        budget = self.tokens.max_doc_length
        out = np.zeros((len(rows), self.dim), np.float32)
        hit = cached_vectors(self.key, store, rows, budget, out) if frozen else np.zeros(len(rows), bool)
        todo = rows[~hit]
        encode = lambda r, dist: self._encode_list(store, r, params, devices, batch_size, progress, dist)
        if distributed and jax.process_count() > 1:
            # the work is decided once, by process 0 (caches may differ between processes): every
            # process encodes its share of process 0's list; misses only this process has, alone
            shared = _rows_of_process_0(store, np.unique(todo))
            table = dict(zip(shared.tolist(), encode(shared, True)))
            own = np.asarray([r for r in np.unique(todo).tolist() if r not in table], np.int64)
            table.update(zip(own.tolist(), encode(own, False)))
            vecs = np.asarray([table[r] for r in todo.tolist()], np.float32).reshape(len(todo), self.dim)
        else:
            vecs = encode(todo, distributed)
        if todo.size == 0:
            return out
        out[~hit] = vecs
        if frozen:
            remember_vectors(self.key, store, todo, vecs, budget)
        log.debug("document index: encoded %d documents (%s)", todo.size, self.path)
        return out

    def _encode_list(self, store: TokenStore, todo, params, devices, batch_size, progress, distributed) -> np.ndarray:
        """float32 ``[len(todo), H]``: rows ``todo`` encoded in length-sorted batches (:func:`map_sorted`)."""
        if len(todo) == 0:
            return np.zeros((0, self.dim), np.float32)
        run, multiple = data_parallel(self._encode, params, devices)
        size = -(-(batch_size or self.batch_size) // multiple) * multiple

        def make_batch(idx, n_rows):
            ids, mask = self.tokens.encode_document_rows(store, pad_rows(store, todo, idx, n_rows))
            return {"ids": ids, "mask": mask}

        lengths = np.minimum(store.lengths[todo], self.tokens.max_doc_length)
        return map_sorted(lengths, size, make_batch, run, tail=(self.dim,), progress=progress, distributed=distributed)

    def _table(self, store: TokenStore):
        """``(vectors float32 [len(store), H], have bool [len(store)])`` of this encoder for
        ``store``: in memory for an in-memory store (it lives and dies with it); for a disk token
        store (a corpus in a text store) two memory-mapped files beside its tokens,
        ``vectors/<encoder hash>.f32.npy`` / ``.have.npy``, kept for later runs (sparse until filled)."""
        tables = store.__dict__.setdefault("_doc_vectors", {})
        if self.key not in tables:
            tables[self.key] = (_disk_table(store, self.key, self.dim) if _on_disk(store) else
                                (np.zeros((len(store), self.dim), np.float32), np.zeros(len(store), bool)))
        return tables[self.key]

    def vectors(self, store: TokenStore, rows) -> np.ndarray:
        """float32 ``[*rows.shape, H]`` (rows not indexed yet are encoded here, on this process)."""
        rows = np.asarray(rows, np.int64)
        mat, have = self._table(store)
        if not have[rows].all():
            self.index(store, rows[~have[rows]])
        return np.asarray(mat[rows])


#: rows per encoded-and-written chunk of a disk store's document table
DISK_CHUNK = 1 << 15


def _on_disk(store) -> bool:
    return hasattr(store, "folder") and hasattr(store, "fingerprint")


def _disk_table(store, key: tuple, dim: int):
    """The memory-mapped ``(vectors, have)`` files of encoder ``key`` in ``store.folder/vectors/``
    (created zero-filled, i.e. sparse, on first use; checked against the store's size)."""
    import hashlib
    import json
    import os

    folder = os.path.join(store.folder, "vectors")
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    vec_path, have_path = os.path.join(folder, f"{name}.f32.npy"), os.path.join(folder, f"{name}.have.npy")
    shape = (len(store), int(dim))
    if os.path.exists(vec_path) and os.path.exists(have_path):
        mat = np.load(vec_path, mmap_mode="r+")
        have = np.load(have_path, mmap_mode="r+")
        if mat.shape == shape and have.shape == shape[:1] and mat.dtype == np.float32:
            return mat, have
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump({"encoder": [str(k) for k in key], "store": store.fingerprint}, f)
    have = np.lib.format.open_memmap(have_path + ".tmp", mode="w+", dtype=bool, shape=shape[:1])
    mat = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=shape)
    del have
    os.replace(have_path + ".tmp", have_path)   # the flags last: a table is never read without them
    return mat, np.load(have_path, mmap_mode="r+")


def _rows_of_process_0(store: TokenStore, rows: np.ndarray) -> np.ndarray:
    """Process 0's ``rows`` on every process (every process must call), after checking that all
    processes hold the same store (sha256 of its offsets and keys, compared across processes)."""
    import hashlib

    from jax.experimental import multihost_utils

    if _on_disk(store):   # a disk token store: its fingerprint names texts, tokenizer and length
        h = hashlib.sha256(str(store.fingerprint).encode("utf-8"))
    else:
        h = hashlib.sha256(np.ascontiguousarray(store.offsets, np.int64).tobytes())
        h.update("\x00".join(map(str, store.keys)).encode("utf-8"))
    digest = np.frombuffer(h.digest()[:8], np.int32)
    digests = np.asarray(multihost_utils.process_allgather(digest)).reshape(-1, 2)
    if not (digests == digests[0]).all():
        raise ValueError("document index: the processes hold different token stores (texts or order differ); "
                         "every process must index the same documents in the same order")
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(rows), np.int32)))
    buf = np.zeros(max(n, 1), np.int32)
    if jax.process_index() == 0:
        buf[:n] = rows
    return np.asarray(multihost_utils.broadcast_one_to_all(buf), np.int64)[:n]


class FrozenDocFeatures:
    """Featuriser of the ``query_encoder`` student: queries as BertDot query-tower ids (``[CLS] q
    [SEP]``, at most ``max_query_length`` content tokens, padded to length buckets), documents as
    vectors of the frozen :class:`DocumentIndex` (at most ``max_doc_length`` content tokens).

    ``assemble(q_store, q_rows [B], d_store, d_rows [B, n]) -> {query_ids, query_mask [B, Lq],
    doc_vecs [B, n, H]}``; ``index_documents(store, rows)`` precomputes vectors (the collate and
    the scorers call it before the first batch, so no batch waits for the encoder).
    """

    def __init__(self, tokenizer_or_path, *, doc_encoder=None, doc_layers: Optional[int] = None,
                 doc_pooling: str = "mean", doc_normalize: bool = True,
                 max_query_length: int = DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
                 max_doc_length: int = DEFAULT_MAX_DOC_LENGTH, dtype: Optional[str] = None):
        self.tokens = TwoTowerTokenizer(tokenizer_or_path, max_query_length=max_query_length,
                                        max_doc_length=max_doc_length, query_special=True, doc_special="cls_sep")
        self.tokenizer = self.tokens.tokenizer
        self._backend = self.tokens._backend
        self.max_query_length, self.max_doc_length = self.tokens.max_query_length, self.tokens.max_doc_length
        source = tokenizer_or_path if doc_encoder is None else doc_encoder
        if doc_encoder is not None:
            _check_same_vocab(self.tokenizer, doc_encoder)
        self.index = DocumentIndex(source, tokens=self.tokens, num_layers=doc_layers, pooling=doc_pooling,
                                   normalize=doc_normalize, dtype=INDEX_DTYPE)
        # (the index is float32 whatever the query tower's dtype, pile_jax.numerics: a bf16 query
        # tower trains against the vectors its export's document encoder reproduces)

    def tokenize_texts(self, texts: Sequence[str], keys: Sequence[str] | None = None) -> TokenStore:
        return self.tokens.tokenize_texts(texts, keys)

    def item_lengths(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows) -> np.ndarray:
        """Tokens of each query item, broadcast to ``d_rows``' shape (documents cost no tokens:
        their vectors are precomputed)."""
        q_rows, d_rows = np.asarray(q_rows, np.int64), np.asarray(d_rows, np.int64)
        q = np.minimum(q_store.lengths[q_rows], self.max_query_length) + sum(map(len, self.tokens.query_specials))
        if q.ndim == d_rows.ndim - 1:
            q = q[..., None]
        return np.broadcast_to(q, np.broadcast_shapes(q.shape, d_rows.shape)).astype(np.int64)

    def index_documents(self, store: TokenStore, rows=None, *, distributed: Optional[bool] = None,
                        progress: Optional[str] = None) -> None:
        """Precompute the vectors of ``rows`` of ``store`` (default all; ``distributed``: default
        more than one process, and then every process must call)."""
        if distributed is None:
            distributed = jax.process_count() > 1
        self.index.index(store, rows, distributed=distributed, progress=progress)

    def assemble(self, q_store: TokenStore, q_rows, d_store: TokenStore, d_rows) -> dict:
        qi, qm = self.tokens.encode_query_rows(q_store, q_rows)
        return {"query_ids": qi, "query_mask": qm, "doc_vecs": self.index.vectors(d_store, d_rows)}

    def featurize(self, queries: Sequence[str], docs: Sequence[Sequence[str]]) -> dict:
        """Text in: ``queries [B]``, ``docs [B][n_b]`` -> batch arrays (missing documents of
        ragged lists: zero vectors; mask them out)."""
        queries, docs, n, present = _group_shape(queries, docs)
        qs, qr = _unique_store(self._backend, queries)
        ds, dr = _unique_store(self._backend, [d for r in docs for d in r])
        out = self.assemble(qs, qr, ds, dr.reshape(len(queries), n))
        out["doc_vecs"][~present] = 0.0
        return out

    encode = featurize
    __call__ = featurize

    def encode_queries(self, queries: Sequence[str]):
        """Text -> ``(ids, mask)`` int32 ``[N, Lq]`` (the query tower's input)."""
        return self.tokens.encode_queries(queries)

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        """Text -> the frozen document vectors float32 ``[N, H]``."""
        store, rows = _unique_store(self._backend, docs)
        return self.index.vectors(store, rows)


def _check_same_vocab(tokenizer, doc_encoder) -> None:
    """The document encoder reads the query tokenizer's ids: both checkpoints must share a vocabulary."""
    from .tokenize import _load_tokenizer

    other = _load_tokenizer(doc_encoder)
    if tokenizer.get_vocab() != other.get_vocab():
        raise ValueError(f"doc_encoder {doc_encoder!r}: its tokenizer's vocabulary differs from the student's; "
                         "the query encoder and the frozen document encoder must share one tokenizer")
