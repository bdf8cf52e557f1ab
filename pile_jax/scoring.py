"""From ids to batches: the train collate and data-parallel scoring, on tokenise-once features.

A ranker's featuriser (``ranker.meta["features"]``: a
:class:`~pile_jax.models.tokenize.PairTokenizer` or
:class:`~pile_jax.models.tokenize.TwoTowerTokenizer`) tokenises every text once into a token store
and assembles batches from store rows with NumPy. Rankers without one (custom ``featurize``
only) still work through the text path.

* :func:`make_collate`: records (``query_id``, ``doc_ids [n]``, labels, masks, teacher scores) ->
  train batch; all query and document texts are tokenised when the collate is built.
  ``collate.group_lengths(query_ids, doc_ids [G, n])`` gives the padded length each group needs
  (its longest pair / item in tokens), for length-aware loaders.
* :func:`score_pairs` / :func:`score_candidates`: each unique text tokenised once, pairs sorted
  by token length, batches assembled from ids and scored **data-parallel**: each batch is split
  over the local devices (params replicated, batch sharded on its leading axis under ``jit``)
  and, on several processes, process ``p`` scores batches ``p, p + P, ...``; the scores are
  all-gathered so every process returns the full array in input order (every process must
  call; ``distributed=False`` scores everything locally instead).
* :func:`map_sorted`, :func:`data_parallel`, :func:`cached_scorer` (re-exported): the shared
  data-parallel helpers of :mod:`pile_jax.parallel`; :func:`pair_batches` (re-exported) lives
  with the featurisers in :mod:`pile_jax.models.tokenize`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pile_jax.models.tokenize import pair_batches
from pile_jax.parallel import cached_scorer, data_parallel, map_sorted, scorer_first_column

__all__ = ["Ranker", "Featurize", "make_collate", "lookup_texts", "cached_scorer", "score_pairs", "score_store_pairs",
           "score_candidates", "map_sorted",
           "data_parallel", "pair_batches", "GROUP_KEYS"]

GROUP_KEYS = ("labels", "label_mask", "mask", "teacher_scores")

Featurize = Callable[[Sequence[str], Sequence[Sequence[str]]], dict]


@dataclasses.dataclass
class Ranker:
    """A trainable ranker: params + score function ``score_fn(params, batch, *, rng, train) ->
    scores [B, n]`` (or ``(scores, aux_losses)``) + text featuriser ``featurize(queries [B],
    docs [B][n]) -> arrays`` (+ metadata: ``meta["features"]``, the tokenise-once featuriser).
    What the train loop trains and the scorers run (:mod:`pile_jax.rankers` builds them)."""

    params: Any
    score_fn: Callable
    featurize: Featurize
    kind: str = "cross_encoder"
    meta: dict = dataclasses.field(default_factory=dict)


def features_of(ranker):
    """The ranker's tokenise-once featuriser, or ``None`` (text-only ``featurize``)."""
    return (getattr(ranker, "meta", None) or {}).get("features")


# ============================================================================ train collate
def lookup_texts(queries: Mapping[str, str], docs: Mapping[str, str], qids: Sequence[str], doc_ids) -> tuple[list[str], list[list[str]]]:
    """Texts for a batch of groups; padding doc ids ("") map to ""."""
    q_texts = [queries[q] if q else "" for q in qids]
    d_texts = [[docs[d] if d else "" for d in row] for row in np.asarray(doc_ids).tolist()]
    return q_texts, d_texts


def _group_arrays(records) -> dict:
    batch = {k: np.stack([np.asarray(r[k]) for r in records]) for k in GROUP_KEYS}
    if any(r.get("teacher_mask") is not None for r in records):   # absent teacher scores (issue 20)
        batch["teacher_mask"] = np.stack([
            np.asarray(r["teacher_mask"], bool) if r.get("teacher_mask") is not None
            else np.broadcast_to(np.asarray(r["mask"], bool)[None], np.shape(r["teacher_scores"]))
            for r in records])
    if "target" in records[0]:
        batch["target"] = np.stack([np.asarray(r["target"]) for r in records]).astype(np.float32)
    return batch


def make_collate(ranker, queries: Mapping[str, str], docs: Mapping[str, str], *, store_dir=None,
                 index_doc_ids: Sequence[str] | None = None):
    """Records -> train batch: the group arrays (``labels``, ``label_mask``, ``mask``,
    ``teacher_scores``, optional ``teacher_mask`` and ``target``) plus the ranker's token arrays.

    With a tokenise-once featuriser every query and document text is tokenised here, once (or
    read from ``store_dir/{queries,docs}.tokens.npz`` when those hold the same texts and
    tokenizer; written there otherwise); each batch is then one dict lookup per id and NumPy.
    ``queries`` / ``docs`` given as on-disk text stores use the corpus' memory-mapped token store
    (:func:`pile_jax.models.token_store.token_store_for`, built once beside the text store and
    shared by every run) and look ids up through the store's sorted index.
    ``collate.group_lengths(query_ids [G], doc_ids [G, n]) -> int64 [G]``: the tokens of each
    group's longest pair (cross-encoders) or longest query / document item (two towers).
    A featuriser with a frozen document index (``index_documents``, the ``query_encoder``
    student) encodes the documents ``index_doc_ids`` (default: all of ``docs``) here, before
    the first batch (every process must call: the encoding is split over processes).
    """
    feats = features_of(ranker)
    if feats is None:
        return _text_collate(ranker, queries, docs)
    from pile_jax.models.token_store import document_budget, is_text_store
    from pile_jax.models.tokenize import load_or_tokenize

    path = (lambda name: None) if store_dir is None else (lambda name: _join(store_dir, f"{name}.tokens.npz"))
    q_store = load_or_tokenize(feats, queries, path("queries"))   # a TextStore: its own token store
    d_store = load_or_tokenize(feats, docs, path("docs"), max_tokens=document_budget(feats))
    if hasattr(feats, "index_documents") and not (index_doc_ids is None and is_text_store(docs)):
        # frozen document vectors: computed before the first batch (a corpus in a text store:
        # only the documents asked for; the others are encoded when a batch first needs them)
        feats.index_documents(d_store, None if index_doc_ids is None else d_store.rows(list(index_doc_ids)),
                              progress="document index")

    def rows(records):
        q_rows = q_store.rows([r["query_id"] for r in records])
        flat = [d for r in records for d in r["doc_ids"]]
        return q_rows, d_store.rows(flat).reshape(len(records), -1)

    def collate(records):
        batch = _group_arrays(records)
        q_rows, d_rows = rows(records)
        batch.update(feats.assemble(q_store, q_rows, d_store, d_rows))
        return batch

    def group_lengths(query_ids: Sequence[str], doc_ids) -> np.ndarray:
        d_rows = d_store.rows(np.asarray(doc_ids, dtype=object))
        lengths = feats.item_lengths(q_store, q_store.rows(list(query_ids)), d_store, d_rows)
        return lengths.reshape(len(d_rows), -1).max(-1).astype(np.int64)

    collate.group_lengths = group_lengths
    collate.query_store, collate.doc_store, collate.features = q_store, d_store, feats
    return collate


def _join(folder, name):
    from pile_jax.io import as_path

    return as_path(folder) / name


def _text_collate(ranker, queries, docs):
    """The text path, for rankers with a ``featurize`` only."""
    def collate(records):
        batch = _group_arrays(records)
        qids = [_str(r["query_id"]) for r in records]
        dids = [[_str(d) for d in r["doc_ids"]] for r in records]
        batch.update(ranker.featurize(*lookup_texts(queries, docs, qids, dids)))
        return batch

    def group_lengths(query_ids, doc_ids) -> np.ndarray:
        out = []
        for q, row in zip(query_ids, np.asarray(doc_ids).tolist()):
            f = ranker.featurize(*lookup_texts(queries, docs, [_str(q)], [[_str(d) for d in row]]))
            out.append(max(int(np.asarray(v).sum(-1).max()) for k, v in f.items() if k.endswith("mask")))
        return np.asarray(out, np.int64)

    collate.group_lengths = group_lengths
    return collate


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


# ============================================================================ scoring
def score_pairs(
    ranker,
    params: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    scorer: Callable | None = None,
    progress: str | None = None,
    devices: Sequence | None = None,
    distributed: bool | None = None,
) -> np.ndarray:
    """Scores (query text, doc text) pairs; float32 [N] in input order.

    Each unique text is tokenised once; pairs are sorted by token length (so each batch pads to
    a small bucket) and cut into batches of ``batch_size`` pairs (rounded up to a multiple of the
    device count; the last batch padded with empty pairs); batches are assembled from ids and
    scored data-parallel over ``devices`` (default: all local devices) and, with
    ``distributed``, over processes (see the module doc). Rankers without a tokenise-once
    featuriser are featurised per batch from text (sorted by character length).
    """
    scorer = scorer or cached_scorer(ranker.score_fn)
    if len(pairs) == 0:
        return np.zeros(0, np.float32)
    run, multiple = data_parallel(scorer, params, devices)
    rows = -(-batch_size // multiple) * multiple
    feats = features_of(ranker)
    lengths, make_batch = (pair_batches(feats, pairs, distributed=distributed) if feats is not None
                           else _text_pair_batches(ranker, pairs))

    def score(batch):
        return scorer_first_column(run(batch))

    return map_sorted(lengths, rows, make_batch, score, progress=progress, distributed=distributed)


def score_store_pairs(
    ranker,
    params: Any,
    qids: Sequence[str],
    doc_ids: Sequence[str],
    queries,
    docs,
    *,
    batch_size: int = 64,
    progress: str | None = None,
    distributed: bool | None = None,
) -> np.ndarray | None:
    """:func:`score_pairs` of the pairs ``(queries[qids[i]], docs[doc_ids[i]])`` read from the
    collections' token stores (:func:`~pile_jax.models.tokenize.load_or_tokenize`: for an on-disk
    :class:`~pile_jax.data.textstore.TextStore` the corpus' memory-mapped token store, built once
    and shared with training), so no text is tokenised again; float32 [N] in input order, the
    same scores as :func:`score_pairs` on the texts. None when the ranker has no tokenise-once
    featuriser or a frozen document index (use :func:`score_candidates` then)."""
    from pile_jax.models.token_store import document_budget
    from pile_jax.models.tokenize import load_or_tokenize

    feats = features_of(ranker)
    if feats is None or hasattr(feats, "index_documents"):
        return None
    if len(qids) == 0:
        return np.zeros(0, np.float32)
    # the same stores as the train collate (make_collate): documents cut to the featuriser's budget
    q_store = load_or_tokenize(feats, queries)
    d_store = load_or_tokenize(feats, docs, max_tokens=document_budget(feats))
    q_rows, d_rows = q_store.rows(list(qids)), d_store.rows(list(doc_ids))
    scorer = cached_scorer(ranker.score_fn)
    return _score_row_pairs(feats, scorer, params, None, q_store, q_rows, d_store, d_rows, batch_size=batch_size,
                            progress=progress, distributed=distributed)


def _text_pair_batches(ranker, pairs):
    """:func:`pair_batches` for rankers with a text ``featurize`` only (character lengths)."""
    lengths = np.asarray([len(q) + len(d) for q, d in pairs], np.int64)

    def make_batch(idx, size):
        qs = [pairs[i][0] for i in idx] + [""] * (size - len(idx))   # padding rows: empty pairs
        ds = [[pairs[i][1]] for i in idx] + [[""]] * (size - len(idx))
        batch = dict(ranker.featurize(qs, ds))
        batch["mask"] = np.ones((size, 1), bool)
        return batch
    return lengths, make_batch


def score_candidates(
    ranker,
    params: Any,
    candidates: Mapping[str, Sequence[str]],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    *,
    batch_size: int = 64,
    scorer: Callable | None = None,
    progress: str | None = None,
    devices: Sequence | None = None,
    distributed: bool | None = None,
) -> dict[str, dict[str, float]]:
    """``{qid: {doc_id: score}}`` for every candidate of every query (see :func:`score_pairs`).

    A featuriser with a frozen document index (the ``query_encoder``) scores each query's whole
    candidate list as one group, so each query is encoded once (not once per candidate):
    :func:`score_candidate_groups`."""
    feats = features_of(ranker)
    if feats is not None and hasattr(feats, "index_documents") and candidates:
        return score_candidate_groups(ranker, params, candidates, queries, docs, batch_size=batch_size,
                                      scorer=scorer, progress=progress, devices=devices, distributed=distributed)
    if feats is not None and _is_text_store(docs):
        return _score_stored_candidates(ranker, params, candidates, queries, docs, batch_size=batch_size,
                                        scorer=scorer, progress=progress, devices=devices, distributed=distributed)
    keys = [(q, d) for q, ds in candidates.items() for d in ds]
    scores = score_pairs(ranker, params, [(queries[q], docs[d]) for q, d in keys], batch_size=batch_size,
                         scorer=scorer, progress=progress, devices=devices, distributed=distributed)
    out: dict[str, dict[str, float]] = {q: {} for q in candidates}
    for (q, d), s in zip(keys, scores.tolist()):
        out[q][d] = s
    return out


def _is_text_store(docs) -> bool:
    from pile_jax.models.token_store import is_text_store

    return is_text_store(docs)


def _stored_rows(feats, candidates, queries, docs):
    """A corpus in a text store: ``(q_store, q_rows [Q], d_store, d_rows [P], counts [Q])`` --
    the queries of ``candidates`` tokenised here (texts keyed by id), the documents' rows in the
    corpus' disk token store (built once, :func:`pile_jax.models.token_store.token_store_for`);
    no document text is read."""
    import itertools

    from pile_jax.models.token_store import document_budget, token_store_for

    qids = list(candidates)
    q_store = feats.tokenize_texts([str(queries[q]) for q in qids], qids)
    d_store = token_store_for(feats, docs, max_tokens=document_budget(feats))
    counts = np.fromiter((len(candidates[q]) for q in qids), np.int64, len(qids))
    flat = list(itertools.chain.from_iterable(candidates[q] for q in qids))
    d_rows = d_store.rows(flat) if flat else np.zeros(0, np.int64)
    return q_store, q_store.rows(qids), d_store, d_rows, counts


def _score_row_pairs(feats, scorer, params, devices, q_store, q_rows, d_store, d_rows, *, batch_size, progress,
                     distributed) -> np.ndarray:
    """float32 [N] scores of the pairs ``(q_rows[i], d_rows[i])`` of two token stores: batches
    assembled by ``feats``, length-sorted and data-parallel (:func:`~pile_jax.parallel.map_sorted`)."""
    from pile_jax.models.tokenize import pad_rows

    run, multiple = data_parallel(scorer, params, devices)
    rows = -(-batch_size // multiple) * multiple

    def make_batch(idx, size):
        q, d = pad_rows(q_store, q_rows, idx, size), pad_rows(d_store, d_rows, idx, size)
        batch = feats.assemble(q_store, q, d_store, d[:, None])
        batch["mask"] = np.ones((size, 1), bool)
        return batch

    lengths = feats.item_lengths(q_store, q_rows, d_store, d_rows)
    return map_sorted(lengths, rows, make_batch, lambda b: scorer_first_column(run(b)), progress=progress,
                      distributed=distributed)


def _score_stored_candidates(ranker, params, candidates, queries, docs, *, batch_size, scorer, progress, devices,
                             distributed):
    """:func:`score_candidates` for documents in a text store: pairs assembled from the corpus'
    disk token store, scored as :func:`score_pairs` does (length-sorted, data-parallel)."""
    feats = features_of(ranker)
    scorer = scorer or cached_scorer(ranker.score_fn)
    q_store, q_rows, d_store, d_rows, counts = _stored_rows(feats, candidates, queries, docs)
    pair_q = np.repeat(q_rows, counts)
    if len(pair_q) == 0:
        return {q: {} for q in candidates}
    scores = _score_row_pairs(feats, scorer, params, devices, q_store, pair_q, d_store, d_rows,
                              batch_size=batch_size, progress=progress, distributed=distributed)
    out, pos = {}, 0
    values = scores.tolist()
    for q, k in zip(candidates, counts.tolist()):
        out[q] = dict(zip(candidates[q], values[pos:pos + k]))
        pos += k
    return out


def score_candidate_groups(
    ranker,
    params: Any,
    candidates: Mapping[str, Sequence[str]],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    *,
    batch_size: int = 64,
    scorer: Callable | None = None,
    progress: str | None = None,
    devices: Sequence | None = None,
    distributed: bool | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`score_candidates` for a featuriser with a frozen document index: each query with
    its candidate list is one group ``[n]`` (``n`` = the longest list; shorter lists padded with
    the empty document, masked), ``batch_size`` groups per batch sorted by query length, each
    query encoded once; the unique documents are indexed first. The score of a (query, document)
    pair is that of :func:`score_pairs` (the query tower's output dotted with the document vector)."""
    features = features_of(ranker)
    scorer = scorer or cached_scorer(ranker.score_fn)
    run, multiple = data_parallel(scorer, params, devices)
    rows = -(-batch_size // multiple) * multiple
    qids = list(candidates)
    n = max(len(candidates[q]) for q in qids)
    if _is_text_store(docs):   # documents from the corpus' disk token store (and its vector file)
        q_store, q_rows, d_store, flat, counts = _stored_rows(features, candidates, queries, docs)
        mask = np.arange(n)[None, :] < counts[:, None]
        d_rows = np.full((len(qids), n), d_store.index[""], np.int64)
        d_rows[mask] = flat
    else:
        q_store, q_rows, d_store, d_rows, mask = _text_group_rows(features, candidates, queries, docs, n)
    q_empty, d_empty = q_store.index[""], d_store.index[""]
    features.index_documents(d_store, np.unique(np.append(d_rows.ravel(), d_empty)), distributed=distributed)

    def make_batch(idx, size):
        q = np.full(size, q_empty, np.int64)
        d = np.full((size, n), d_empty, np.int64)
        m = np.zeros((size, n), bool)
        q[:len(idx)], d[:len(idx)], m[:len(idx)] = q_rows[idx], d_rows[idx], mask[idx]
        batch = features.assemble(q_store, q, d_store, d)
        batch["mask"] = m
        return batch

    lengths = features.item_lengths(q_store, q_rows, q_store, q_rows)
    scores = map_sorted(lengths, rows, make_batch, run, tail=(n,), progress=progress, distributed=distributed)
    return {q: {d: float(scores[i, j]) for j, d in enumerate(candidates[q])} for i, q in enumerate(qids)}


def _text_group_rows(features, candidates, queries, docs, n):
    """In-memory collections: every query and candidate text in one store keyed by text."""
    from pile_jax.models.tokenize import tokenize_texts

    qids = list(candidates)
    qtexts = [str(queries[q]) for q in qids]
    dtexts = [str(docs[d]) for q in qids for d in candidates[q]]
    texts = list(dict.fromkeys(qtexts + dtexts + [""]))
    store = tokenize_texts(features._backend, texts, texts)
    q_rows = store.rows(np.asarray(qtexts, dtype=object))
    d_rows = np.full((len(qids), n), store.index[""], np.int64)
    mask = np.zeros((len(qids), n), bool)
    for i, q in enumerate(qids):
        c = candidates[q]
        if c:
            d_rows[i, :len(c)] = store.rows(np.asarray([str(docs[d]) for d in c], dtype=object))
            mask[i, :len(c)] = True
    return store, q_rows, store, d_rows, mask
