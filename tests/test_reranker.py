"""PairTokenizer (vs the HF tokenizer), bucketed batching, and Reranker vs PyTorch / sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pile_jax.models import PairTokenizer, Reranker, bucketed_batches, resolve_model_path  # noqa: E402

MINILM = resolve_model_path("minilm")
LONG_QUERY = " ".join(f"word{i} question" for i in range(60))  # far more than 16 tokens
LONG_DOC = " ".join("the quick brown fox jumps over the lazy dog" for _ in range(40))
PAIRS = [
    ("what is a cat", "A cat is a small domesticated carnivorous mammal."),
    ("what is a cat", "Paris is the capital of France."),
    ("capital of france", "Paris is the capital and most populous city of France."),
    ("capital of france", LONG_DOC),
    ("how do vaccines work", "Vaccines train the immune system to recognise a pathogen."),
    ("how do vaccines work", "short"),
    ("boiling point of water", "Water boils at 100 degrees Celsius at sea level, used to calibrate thermometers."),
    ("boiling point of water", "The mitochondria is the powerhouse of the cell."),
    (LONG_QUERY, "A document for a very long query."),
]


@pytest.fixture(scope="module")
def hf_tok():
    return transformers.AutoTokenizer.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def reranker():
    # all-MiniLM-L6-v2 is a bi-encoder: a new (random) score head must be asked for
    return Reranker.from_pretrained("all-MiniLM-L6-v2", num_layers=2, max_length=64, max_query_length=16,
                                    new_head=True)


@pytest.fixture(scope="module")
def exported(reranker, tmp_path_factory):
    return reranker.save_pretrained(tmp_path_factory.mktemp("reranker") / "model")


def reference_ids(hf_tok, query, doc, max_length, max_query_length):
    q = hf_tok(query, add_special_tokens=False)["input_ids"][:max_query_length]
    d = hf_tok(doc, add_special_tokens=False)["input_ids"][:max_length - 3 - len(q)]
    ids = [hf_tok.cls_token_id, *q, hf_tok.sep_token_id, *d, hf_tok.sep_token_id]
    return ids, [0] * (len(q) + 2) + [1] * (len(d) + 1)


def test_pair_tokenizer_matches_hf_tokenizer(hf_tok):
    tok = PairTokenizer(MINILM, max_length=64, max_query_length=16)
    assert tok.num_special == 3 and tok.buckets == (32, 64)
    queries, docs = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    enc = tok.encode(queries, docs)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int32 and v.shape == (len(PAIRS), 64) for v in enc.values())
    for row, (q, d) in enumerate(PAIRS):
        n = int(enc["attention_mask"][row].sum())
        assert n <= 64
        ids, types = enc["input_ids"][row, :n].tolist(), enc["token_type_ids"][row, :n].tolist()
        assert (ids, types) == reference_ids(hf_tok, q, d, 64, 16)
        assert np.all(enc["input_ids"][row, n:] == hf_tok.pad_token_id) and np.all(enc["attention_mask"][row, n:] == 0)
        if q is not LONG_QUERY:  # the HF tokenizer's own pair truncation agrees when the query fits its budget
            ref = hf_tok(q, d, truncation="only_second", max_length=64)
            assert ids == ref["input_ids"] and types == ref["token_type_ids"]
    # the long document fills the budget exactly; the long query keeps 16 tokens
    assert int(enc["attention_mask"][3].sum()) == 64
    assert enc["token_type_ids"][8].tolist().index(1) == 16 + 2
    # short calls pad to the smallest bucket that fits
    short = tok.encode(["what is a cat"], ["a small mammal"])
    assert short["input_ids"].shape == (1, 32)
    assert short["input_ids"][0, :int(short["attention_mask"].sum())].tolist() == hf_tok(
        "what is a cat", "a small mammal")["input_ids"]
    with pytest.raises(ValueError, match="differ"):
        tok.encode(["a", "b"], ["c"])
    # pair_lengths (the cheap sort key) is the reference token count of every pair
    assert tok.pair_lengths(queries, docs).tolist() == [len(reference_ids(hf_tok, q, d, 64, 16)[0]) for q, d in PAIRS]


def test_biencoder_scores_match_sentence_transformers():
    """Each text encoded once (length-sorted, batched) gives sentence-transformers' cosine."""
    st = pytest.importorskip("sentence_transformers")
    from pile_jax import rankers

    ranker = rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=128)
    queries = {f"q{i}": q for i, q in enumerate(dict.fromkeys(p[0] for p in PAIRS))}
    docs = {f"d{i}": d for i, d in enumerate(dict.fromkeys(p[1] for p in PAIRS))}
    qid = {v: k for k, v in queries.items()}
    did = {v: k for k, v in docs.items()}
    candidates = {}
    for q, d in PAIRS:
        candidates.setdefault(qid[q], []).append(did[d])
    candidates["q0"].append("d4")   # a document in two lists
    got = rankers.biencoder_score_candidates(ranker, candidates, queries, docs, batch_size=4)
    model = st.SentenceTransformer(str(MINILM), device="cpu")
    model.max_seq_length = 128
    qv = model.encode([queries[q] for q in candidates], normalize_embeddings=True, convert_to_numpy=True)
    for i, q in enumerate(candidates):
        dv = model.encode([docs[d] for d in candidates[q]], normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose([got[q][d] for d in candidates[q]], dv @ qv[i], atol=2e-5)


def test_bucketed_batches_cover_every_index_once():
    lengths = [5, 40, 7, 33, 12, 60, 2]
    batches = bucketed_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    with pytest.raises(ValueError):
        bucketed_batches(lengths, 0)


def test_reranker_predict_matches_pytorch_and_export_loads_cleanly(reranker, exported, hf_tok):
    scores = reranker.predict(PAIRS, batch_size=4)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIRS),)
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    model.eval()
    short = [i for i, (q, _) in enumerate(PAIRS) if q is not LONG_QUERY]
    batch = hf_tok([PAIRS[i][0] for i in short], [PAIRS[i][1] for i in short], truncation="only_second",
                   max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(scores[short], ref, atol=1e-5, rtol=0)
    # input order is kept whatever the batching
    np.testing.assert_allclose(reranker.predict(PAIRS[::-1], batch_size=4), scores[::-1], atol=1e-5, rtol=0)
    single = reranker.predict(PAIRS[0], batch_size=4)
    assert single.shape == () and abs(float(single) - scores[0]) <= 1e-5
    assert reranker.predict([]).shape == (0,)
    ranked = reranker.rank("what is a cat", [PAIRS[1][1], PAIRS[0][1]], return_documents=True, batch_size=4)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert {r["corpus_id"] for r in ranked} == {0, 1}
    assert reranker._score._cache_size() <= 2  # one compilation per bucket used (32, 64)


def test_sentence_transformers_cross_encoder_scores_the_export_identically(reranker, exported):
    st = pytest.importorskip("sentence_transformers")
    ce = st.CrossEncoder(str(exported), device="cpu", max_length=64)
    short = [p for p in PAIRS if p[0] is not LONG_QUERY]
    ours = reranker.predict(short, batch_size=4)
    theirs = ce.predict(short, batch_size=8)
    np.testing.assert_allclose(np.asarray(theirs, np.float32), ours, atol=1e-5, rtol=0)


def test_a_checkpoint_without_score_head_is_an_error_for_scoring_unless_asked(exported, caplog):
    import logging

    from pile_jax.models import load_pretrained

    with pytest.raises(ValueError, match=r"no score head.*new_head=True"):
        Reranker.from_pretrained("all-MiniLM-L6-v2", num_layers=1, max_length=32)
    with pytest.raises(ValueError, match="no score head"):
        load_pretrained(MINILM, num_layers=1, new_head=False)
    caplog.set_level(logging.INFO, logger="pile_jax.models.hf_io")
    load_pretrained(MINILM, num_layers=1, new_head=True)          # asked for: an expected step, INFO
    assert [r.levelname for r in caplog.records if "score head" in r.message] == ["INFO"]
    caplog.clear()
    load_pretrained(MINILM, num_layers=1)                         # not said: initialised, with a WARNING
    assert [r.levelname for r in caplog.records if "score head" in r.message] == ["WARNING"]
    caplog.clear()
    rr = Reranker.from_pretrained(exported, max_length=64, max_query_length=16)   # has its head: fine
    assert not [r for r in caplog.records if "score head" in r.message]
    assert rr.config.num_layers == 2


def _with_head(reranker, scale=200.0, num_labels=1, seed=0):
    """The fixture's model with a head that spreads scores apart (a random head scores every pair
    within ~1e-3, where a ranking comparison is meaningless); ``num_labels=2`` for a two-label head."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    head = {k: dict(v) for k, v in reranker.params["head"].items()}
    kernel = np.asarray(head["classifier"]["kernel"])
    if num_labels != 1:
        kernel = rng.normal(0.0, 0.02, (kernel.shape[0], num_labels))
        head["classifier"]["bias"] = jnp.zeros((num_labels,), jnp.float32)
    head["classifier"]["kernel"] = jnp.asarray(kernel * scale, jnp.float32)
    return Reranker(reranker.config.replace(num_labels=num_labels), {**reranker.params, "head": head},
                    reranker.tokenizer)


def test_rank_and_predict_options_match_sentence_transformers(reranker, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    rr = _with_head(reranker)
    ce = st.CrossEncoder(str(rr.save_pretrained(tmp_path / "one")), device="cpu", max_length=64)
    query = "what is a cat"
    docs = [d for q, d in PAIRS if q is not LONG_QUERY]
    ours = rr.rank(query, docs, top_k=4, return_documents=True, batch_size=4)
    theirs = ce.rank(query, docs, top_k=4, return_documents=True, batch_size=4)
    assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]
    assert [r["text"] for r in ours] == [r["text"] for r in theirs] == [docs[r["corpus_id"]] for r in ours]
    np.testing.assert_allclose([r["score"] for r in ours], [float(r["score"]) for r in theirs], atol=1e-5)
    full = rr.rank(query, docs, batch_size=4)
    assert len(full) == len(docs) and "text" not in full[0]
    assert [r["score"] for r in full] == sorted((r["score"] for r in full), reverse=True)
    assert len(set(r["score"] for r in full)) == len(docs)    # distinct scores: the order above is meaningful
    # predict options: activation_fn (torch module or NumPy callable), convert_to_numpy
    pairs = [(query, d) for d in docs]
    raw = rr.predict(pairs, batch_size=4)
    sig = rr.predict(pairs, batch_size=4, activation_fn=torch.nn.Sigmoid())
    np.testing.assert_allclose(sig, 1.0 / (1.0 + np.exp(-raw.astype(np.float64))), atol=1e-6)
    np.testing.assert_allclose(sig, ce.predict(pairs, batch_size=4, activation_fn=torch.nn.Sigmoid()), atol=1e-5)
    np.testing.assert_allclose(rr.predict(pairs, batch_size=4, activation_fn=lambda x: 2 * x), 2 * raw, atol=1e-6)
    as_list = rr.predict(pairs, batch_size=4, convert_to_numpy=False)
    assert isinstance(as_list, list) and all(type(x) is float for x in as_list)
    np.testing.assert_allclose(as_list, raw, atol=0)
    # two labels: apply_softmax over the labels, as sentence-transformers
    rr2 = _with_head(reranker, scale=50.0, num_labels=2)
    ce2 = st.CrossEncoder(str(rr2.save_pretrained(tmp_path / "two")), device="cpu", max_length=64)
    logits = rr2.predict(pairs, batch_size=4)
    probs = rr2.predict(pairs, batch_size=4, apply_softmax=True)
    assert logits.shape == probs.shape == (len(pairs), 2)
    e = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(probs, ce2.predict(pairs, batch_size=4, apply_softmax=True), atol=1e-5)
    with pytest.raises(ValueError, match="num_labels=2"):
        rr2.rank(query, docs)
