"""BM25 first stage (candidate generation and the BM25 teacher), built on ``bm25s``.

Robertson & Zaragoza's Okapi BM25 with Lucene's IDF, k1=1.5, b=0.75 (bm25s defaults),
English stop words and the Snowball English stemmer (PyStemmer), on ``title + " " + text``:
the setting of the reference numbers in ``pile_jax/resources/collections/README.md``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _stemmer():
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer("english")


def bm25_search(
    docs: Mapping[str, str],
    queries: Mapping[str, str],
    *,
    depth: int = 100,
    k1: float = 1.5,
    b: float = 0.75,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Retrieves the top ``depth`` documents per query: ``{qid: {doc_id: bm25_score}}``.

    Documents with a zero score (no query term in common) are not returned, so a query may
    get fewer than ``depth`` candidates.  Ties keep bm25s' order.
    """
    import bm25s

    if not docs:
        raise ValueError("docs: the collection has no documents")
    doc_ids = list(docs)
    stemmer = _stemmer()
    corpus_tokens = bm25s.tokenize(
        [docs[d] for d in doc_ids], stopwords="en", stemmer=stemmer, show_progress=show_progress
    )
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=show_progress)
    qids = list(queries)
    query_tokens = bm25s.tokenize(
        [queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=show_progress
    )
    k = min(depth, len(doc_ids))
    results, scores = retriever.retrieve(query_tokens, k=k, show_progress=show_progress, n_threads=1)
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(qids):
        hits = {}
        for idx, score in zip(results[row], scores[row]):
            if score > 0:
                hits[doc_ids[int(idx)]] = float(score)
        run[qid] = hits
    return run


def bm25_scores_for(
    docs: Mapping[str, str],
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    *,
    k1: float = 1.5,
    b: float = 0.75,
) -> dict[str, dict[str, float]]:
    """BM25 score of every given candidate (0.0 where no query term matches)."""
    import bm25s

    doc_ids = list(docs)
    position = {d: i for i, d in enumerate(doc_ids)}
    stemmer = _stemmer()
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(
        bm25s.tokenize([docs[d] for d in doc_ids], stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    out: dict[str, dict[str, float]] = {}
    for qid, cands in candidates.items():
        tokens = bm25s.tokenize([queries[qid]], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)
        full = np.asarray(retriever.get_scores(tokens[0]))
        out[qid] = {d: float(full[position[d]]) for d in cands}
    return out
