"""The query_encoder student: a query tower scored against a frozen, precomputed document index
(pile_jax.models.frozen_docs).

References: the zero-shot bi-encoder teacher (rankers.biencoder_cosine, itself checked against
sentence-transformers in test_export / test_reranker): at full depth with normalised queries the
student *is* that model, so its scores must equal the teacher's; a float64 NumPy Margin-MSE for
the learning check; counts of documents sent to the encoder for the caching contract.
"""

import numpy as np
import pytest

from pile_jax import rankers
from pile_jax.data import load_collection
from pile_jax.scoring import score_candidates, score_pairs

LENGTHS = dict(max_query_length=30, max_doc_length=62)


@pytest.fixture(scope="module")
def cranfield():
    coll = load_collection("cranfield")
    qids = sorted(coll.queries)[:6]
    dids = sorted(coll.docs)[:40]
    return coll, qids, dids


def _count_encoded(features):
    """Wraps the document encoder: returns a list that receives each encoded batch's real rows."""
    index = features.index
    seen = []
    inner = index._encode

    def counting(p, batch):
        seen.append(int((np.asarray(batch["mask"]).sum(-1) > 2).sum()))   # rows with content
        return inner(p, batch)

    index._encode = counting
    return seen, lambda: setattr(index, "_encode", inner)


def test_full_depth_normalised_query_encoder_scores_exactly_like_the_biencoder_teacher(cranfield):
    coll, qids, dids = cranfield
    student = rankers.student("query_encoder", "all-MiniLM-L6-v2", normalize=True, **LENGTHS)
    teacher = rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=64)   # 62 content tokens per text
    pairs = [(coll.queries[q], coll.docs[d]) for q in qids for d in dids[:5]]
    ours = score_pairs(student, student.params, pairs)
    ref = score_pairs(teacher, teacher.params, pairs)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
    assert np.std(ref) > 0.05   # real, distinct scores


def test_every_document_is_encoded_once_across_rankers_and_calls(cranfield):
    coll, qids, dids = cranfield
    a = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, seed=0, **LENGTHS)
    seen, restore = _count_encoded(a.meta["features"])
    try:
        cands = {q: dids[i * 5:(i + 1) * 5] for i, q in enumerate(qids)}   # 30 distinct documents
        first = score_candidates(a, a.params, cands, coll.queries, coll.docs)
        assert sum(seen) == 30
        b = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, seed=1, **LENGTHS)
        again = score_candidates(b, a.params, cands, coll.queries, coll.docs)   # another ranker, same index
        assert sum(seen) == 30
        assert first == again
    finally:
        restore()


def test_the_biencoder_teachers_vectors_are_the_index_and_are_not_encoded_again(cranfield):
    coll, qids, dids = cranfield
    teacher = rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=64)
    texts = [coll.docs[d] for d in dids[30:40]]
    ref = teacher.meta["encode_texts"](teacher.params, texts)
    student = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, **LENGTHS)  # all 6 doc layers
    seen, restore = _count_encoded(student.meta["features"])
    try:
        got = student.meta["features"].encode_documents(texts)
    finally:
        restore()
    assert sum(seen) == 0
    np.testing.assert_array_equal(got, ref)


def test_the_biencoder_teacher_reads_its_kept_vectors_instead_of_encoding_again(cranfield):
    """Second call: the kept vector is returned (a marked copy proves it was read, not recomputed);
    other params than the pretrained ones never read or fill the cache."""
    import jax

    from pile_jax.models import frozen_docs

    coll, _, dids = cranfield
    teacher = rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=32)
    texts = [coll.docs[d] for d in dids[:6]] + [coll.docs[dids[0]]]   # a repeated text: one encoding
    first = teacher.meta["encode_texts"](teacher.params, texts)
    np.testing.assert_array_equal(first[0], first[-1])
    key = next(k for k in frozen_docs.TEXT_VECTORS if k[0] == teacher.meta["path"].as_posix() and k[4] == 30)
    cache = frozen_docs.TEXT_VECTORS[key]
    content = next(c for c, v in cache.items() if np.array_equal(v, first[2]))
    cache[content] = np.full_like(first[2], 7.0)                      # mark the kept vector
    try:
        again = teacher.meta["encode_texts"](teacher.params, texts)
        assert np.all(again[2] == 7.0)
        np.testing.assert_array_equal(np.delete(again, 2, 0), np.delete(first, 2, 0))
        other = jax.tree_util.tree_map(lambda x: x * 1.0, teacher.params)   # not the pretrained object
        fresh = teacher.meta["encode_texts"](other, texts)
        np.testing.assert_allclose(fresh, first, atol=1e-6)
    finally:
        cache[content] = first[2]


def test_ragged_lists_get_zero_vectors_for_missing_documents(cranfield):
    coll, _, dids = cranfield
    r = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, **LENGTHS)
    batch = r.featurize(["boundary layer", "wing flutter"], [[coll.docs[dids[0]], coll.docs[dids[1]]],
                                                          [coll.docs[dids[2]]]])
    assert batch["doc_vecs"].shape == (2, 2, 384)
    assert np.all(batch["doc_vecs"][1, 1] == 0) and np.all(np.abs(batch["doc_vecs"][1, 0]) > 0)


def test_training_the_query_tower_fits_the_teacher_margins(cranfield):
    """train() end to end with the frozen document side: Margin-MSE to a teacher falls on the
    training lists (float64 NumPy re-derivation of the loss before and after)."""
    from pile_jax.data import build_groups, iter_group_examples

    coll, qids, dids = cranfield
    cands = {q: dids[i * 6:(i + 1) * 6] for i, q in enumerate(qids)}
    rng = np.random.default_rng(0)
    teacher = {"t": {q: {d: float(rng.normal()) for d in c} for q, c in cands.items()}}
    groups, _ = build_groups({}, cands, teacher, qids=qids, group_size=6, policy="top", require_label_pair=False)
    groups["label_mask"][:] = False
    records = list(iter_group_examples(groups))
    r = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, **LENGTHS)

    def margin_mse(params):
        s = score_candidates(r, params, cands, coll.queries, coll.docs)
        total, n = 0.0, 0
        for q, c in cands.items():
            a = np.array([s[q][d] for d in c], np.float64)
            t = np.array([teacher["t"][q][d] for d in c], np.float64)
            i, j = np.triu_indices(len(c), 1)
            total += (((a[i] - a[j]) - (t[i] - t[j])) ** 2).sum()
            n += len(i)
        return total / n

    from pile_jax.train.loop import train

    res = train(r, source=records, objective={"distill_losses": {"margin_mse": 1.0}, "ensemble": {"name": "mean"}},
                queries=coll.queries, docs=coll.docs,
                config={"batch_size": 4, "steps": 15, "learning_rate": 1e-3, "warmup_steps": 0, "log_every": 5,
                        "seed": 0, "progress": False, "parallel": "none"})   # one device: no 4x replicated Adam
    before, after = margin_mse(r.params), margin_mse(res.params)
    print(f"margin MSE to the teacher: {before:.4f} -> {after:.4f}")
    assert after < 0.6 * before, (before, after)


def test_document_side_options_are_checked():
    with pytest.raises(TypeError, match="doc_colour"):
        rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_colour=1)
    with pytest.raises(ValueError, match="doc_pooling"):
        rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_pooling="max")
    with pytest.raises(TypeError, match="compress_dim"):   # the query vector must match the index's width
        rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, compress_dim=16)


def test_vectors_persist_in_the_disk_cache_and_a_new_process_encodes_nothing(cranfield, tmp_path, monkeypatch):
    """$PILE_JAX_VECTOR_CACHE: vectors written by one process are read by the next (simulated by
    emptying the in-memory cache); the scores equal the freshly encoded ones, and no document is
    sent to the encoder the second time."""
    from pile_jax.models import frozen_docs as FD

    coll, qids, dids = cranfield
    monkeypatch.setenv(FD.VECTOR_CACHE_ENV, str(tmp_path))
    kw = dict(num_layers=1, doc_layers=1, max_query_length=30, max_doc_length=61)   # a key no other test uses
    cands = {q: dids[i * 3:(i + 1) * 3] for i, q in enumerate(qids)}
    a = rankers.student("query_encoder", "all-MiniLM-L6-v2", seed=0, **kw)
    seen, restore = _count_encoded(a.meta["features"])
    try:
        first = score_candidates(a, a.params, cands, coll.queries, coll.docs)
        assert sum(seen) == 18 and len(list(tmp_path.glob("*.pkl"))) == 1
    finally:
        restore()
    key = a.meta["features"].index.key
    FD.TEXT_VECTORS._data.pop(key)                       # a new process: nothing in memory
    b = rankers.student("query_encoder", "all-MiniLM-L6-v2", seed=0, **kw)
    seen_b, restore_b = _count_encoded(b.meta["features"])
    try:
        from pile_jax.data import load_collection

        fresh = load_collection("cranfield")   # new texts dicts: new token stores
        again = score_candidates(b, a.params, cands, fresh.queries, fresh.docs)
        assert sum(seen_b) == 0 and key in FD.TEXT_VECTORS
    finally:
        restore_b()
    for q in cands:
        assert again[q] == pytest.approx(first[q], rel=1e-6)


def test_a_corpus_in_a_text_store_keeps_its_vectors_in_a_file_beside_its_tokens(cranfield, tmp_path):
    """Issue 20: documents in an on-disk TextStore -> the frozen vectors live in a memory-mapped
    file per encoder beside the corpus' token store, only the candidates are encoded, and a new
    index (another run) of the same encoder reads them back instead of encoding."""
    from pile_jax.data.textstore import TextStore

    coll, qids, dids = cranfield
    store = TextStore.build(tmp_path / "docs", [(dids, [coll.docs[d] for d in dids])], source="cranfield")
    cands = {q: dids[i * 5:(i + 1) * 5] for i, q in enumerate(qids)}   # 30 of the 40 documents
    a = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, seed=0, **LENGTHS)
    ref = score_candidates(a, a.params, cands, coll.queries, {d: coll.docs[d] for d in dids})
    seen, restore = _count_encoded(a.meta["features"])
    try:
        got = score_candidates(a, a.params, cands, coll.queries, store)
    finally:
        restore()
    assert sum(seen) == 30
    for q in cands:
        np.testing.assert_allclose([got[q][d] for d in cands[q]], [ref[q][d] for d in cands[q]], atol=1e-5, rtol=0)
    (vec_file,) = (tmp_path / "docs" / "tokens").rglob("vectors/*.f32.npy")
    have = np.load(str(vec_file).replace(".f32.npy", ".have.npy"))
    assert have.shape == (41,) and have.sum() == 31                     # 30 candidates + the empty padding text
    from pile_jax.models.token_store import document_budget, token_store_for

    b = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, seed=1, **LENGTHS)
    feats = b.meta["features"]
    tokens = token_store_for(feats, TextStore.open(tmp_path / "docs"), max_tokens=document_budget(feats))
    seen, restore = _count_encoded(feats)
    try:
        vecs = feats.index.vectors(tokens, tokens.rows(dids[:5]))
    finally:
        restore()
    assert sum(seen) == 0 and vecs.shape == (5, 384) and np.abs(vecs).sum(-1).min() > 0
