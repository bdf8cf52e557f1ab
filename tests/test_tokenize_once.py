"""Tokenise once, assemble from ids: parity with the per-pair tokenizer path on real Cranfield pairs.

The reference is the per-pair implementation ``PairTokenizer.encode`` had before the token store
(tokenizers' own ``Encoding.truncate`` + ``post_process`` per pair, kept here verbatim in spirit)
and the Hugging Face tokenizer's own ``truncation="only_second"`` / single-text truncation.
"""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from helpers.pair_reference import reference_encode  # noqa: E402
from pile_jax.data import load_collection  # noqa: E402
from pile_jax.models import resolve_model_path  # noqa: E402
from pile_jax.models.tokenize import (  # noqa: E402
    DEFAULT_BUCKETS,
    PairTokenizer,
    TokenStore,
    TwoTowerTokenizer,
    bucket_length,
    bucket_set,
    ragged_arange,
)

MINILM = resolve_model_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def cranfield_pairs():
    """Qrels pairs plus seeded random (query, document) pairs: ~2,600 real pairs, many documents
    longer than every budget below (they get truncated)."""
    coll = load_collection("cranfield")
    pairs = [(coll.queries[q], coll.docs[d]) for q, rel in coll.qrels.items() for d in rel if d in coll.docs]
    rng = np.random.default_rng(0)
    qids, dids = list(coll.queries), list(coll.docs)
    pairs += [(coll.queries[qids[i]], coll.docs[dids[j]])
              for i, j in zip(rng.integers(0, len(qids), 800), rng.integers(0, len(dids), 800))]
    pairs.append(("", coll.docs[dids[0]]))          # empty query
    pairs.append((coll.queries[qids[0]], ""))       # empty document (a padding item)
    return pairs


@pytest.fixture(scope="module")
def bert_tok():
    return transformers.AutoTokenizer.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def roberta_tok():
    """A small RoBERTa-style fast tokenizer built offline: byte-level BPE trained on Cranfield
    texts, ``RobertaProcessing`` (``<s> q </s></s> d </s>``, type ids 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    coll = load_collection("cranfield")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(coll.docs.values())[:200], trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                                                unk_token="<unk>", mask_token="<mask>")


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("max_length,max_query_length", [(256, 64), (128, 12)])
def test_pairs_from_ids_equal_the_per_pair_path(family, max_length, max_query_length, cranfield_pairs, request):
    hf_tok = request.getfixturevalue(f"{family}_tok")
    queries, docs = [q for q, _ in cranfield_pairs], [d for _, d in cranfield_pairs]
    ref = reference_encode(hf_tok, queries, docs, max_length=max_length, max_query_length=max_query_length)
    tok = PairTokenizer(hf_tok, max_length=max_length, max_query_length=max_query_length)
    got = tok.encode(queries, docs)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == np.int32
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    truncated = (ref["attention_mask"].sum(1) == max_length).mean()
    assert truncated > 0.1   # long documents really are cut
    # from separate query / document stores keyed by id, as groups [B, n]
    qstore = tok.tokenize_texts(sorted(set(queries)), sorted(set(queries)))
    dstore = tok.tokenize_texts(sorted(set(docs)), sorted(set(docs)))
    B, n = 40, 8
    q_rows = qstore.rows(np.asarray(queries[:B * n:n], dtype=object))
    d_rows = dstore.rows(np.asarray(docs[:B * n], dtype=object).reshape(B, n))
    groups = tok.assemble(qstore, q_rows, dstore, d_rows)
    sub = reference_encode(hf_tok, [q for q in queries[:B * n:n] for _ in range(n)], docs[:B * n],
                           max_length=max_length, max_query_length=max_query_length)
    for k in sub:
        np.testing.assert_array_equal(groups[k], sub[k].reshape(B, n, -1), err_msg=k)
    np.testing.assert_array_equal(tok.item_lengths(qstore, q_rows, dstore, d_rows),
                                  sub["attention_mask"].sum(1).reshape(B, n))


def test_pairs_equal_hf_only_second_truncation(cranfield_pairs, bert_tok):
    """Where the query fits its budget, the contract is HF's own ``truncation="only_second"``."""
    tok = PairTokenizer(bert_tok, max_length=128, max_query_length=64)
    pairs = [p for p in cranfield_pairs[:600] if len(bert_tok(p[0], add_special_tokens=False)["input_ids"]) <= 64]
    enc = tok.encode([q for q, _ in pairs], [d for _, d in pairs])
    ref = bert_tok([q for q, _ in pairs], [d for _, d in pairs], truncation="only_second", max_length=128)
    for r in range(len(pairs)):
        n = int(enc["attention_mask"][r].sum())
        assert enc["input_ids"][r, :n].tolist() == ref["input_ids"][r]
        assert enc["token_type_ids"][r, :n].tolist() == ref["token_type_ids"][r]
        assert np.all(enc["input_ids"][r, n:] == bert_tok.pad_token_id)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_two_tower_items_equal_hf_single_text_truncation(family, cranfield_pairs, request):
    hf_tok = request.getfixturevalue(f"{family}_tok")
    queries = list(dict.fromkeys(q for q, _ in cranfield_pairs))[:24]
    docs = [list(dict.fromkeys(d for _, d in cranfield_pairs))[i * 5:(i + 1) * 5] for i in range(len(queries))]
    docs[3] = docs[3][:2]    # a ragged list: missing documents are all padding
    flat = [d for row in docs for d in row]
    cls = hf_tok.cls_token_id
    for doc_special, q_special in (("cls_sep", True), ("sep", True), ("none", False)):
        tt = TwoTowerTokenizer(hf_tok, max_query_length=9, max_doc_length=40, query_special=q_special,
                               doc_special=doc_special)
        out = tt.featurize(queries, docs)
        q_ref = hf_tok(queries, add_special_tokens=q_special, truncation=True,
                       max_length=9 + (2 if q_special else 0))["input_ids"]
        d_ref = hf_tok(flat, add_special_tokens=doc_special != "none", truncation=True,
                       max_length=40 + (2 if doc_special != "none" else 0))["input_ids"]
        if doc_special == "sep":
            d_ref = [r[1:] if r[:1] == [cls] else r for r in d_ref]
        longest_q = max(map(len, q_ref))
        assert out["query_ids"].shape == (len(queries), min(b for b in tt.query_buckets if b >= longest_q))
        for b, r in enumerate(q_ref):
            assert out["query_ids"][b, :int(out["query_mask"][b].sum())].tolist() == r
        k = 0
        for b, row in enumerate(docs):
            for j in range(out["doc_ids"].shape[1]):
                m = int(out["doc_mask"][b, j].sum())
                if j < len(row):
                    assert out["doc_ids"][b, j, :m].tolist() == d_ref[k]
                    k += 1
                else:
                    assert m == 0 and np.all(out["doc_ids"][b, j] == hf_tok.pad_token_id)
    prett = TwoTowerTokenizer(hf_tok, max_query_length=9, doc_special="sep", fixed_query_length=True)
    assert prett.featurize(queries[:1], docs[:1])["query_ids"].shape[1] == 9 + 2


def test_bucket_rule_and_ragged_arange():
    buckets = bucket_set(DEFAULT_BUCKETS, 100)
    assert buckets == (32, 64, 100)
    assert [bucket_length(x, buckets) for x in (1, 32, 33, 64, 65, 100)] == [32, 32, 64, 64, 100, 100]
    with pytest.raises(ValueError, match="truncated before"):
        bucket_length(101, buckets)
    assert ragged_arange(np.array([2, 0, 3])).tolist() == [0, 1, 0, 1, 2]


def test_token_store_round_trip_and_lookup(tmp_path, bert_tok):
    tok = PairTokenizer(bert_tok, max_length=64)
    store = tok.tokenize_texts(["a cat", "", "the theory of flow"], ["d1", "d2", "d3"])
    assert store.ids(store.index["d1"]).tolist() == bert_tok("a cat", add_special_tokens=False)["input_ids"]
    assert store.rows(np.array([["d3", ""], ["d1", "d2"]])).tolist() == [[2, 3], [0, 1]]   # "" = an added empty row
    assert store.lengths.tolist()[1:] == [0, len(store.ids(2)), 0]
    assert store.rows([b"d3"]).tolist() == [2]                                            # TFDS bytes ids
    assert store.rows([b"d3", "", b"d1"]).tolist() == [2, 3, 0]                           # mixed with "" padding
    with pytest.raises(KeyError, match="nope"):
        store.rows(["d1", "nope"])
    store.save(tmp_path / "docs.tokens.npz")
    back = TokenStore.load(tmp_path / "docs.tokens.npz")
    assert back.keys == store.keys
    np.testing.assert_array_equal(back.tokens, store.tokens)
    np.testing.assert_array_equal(back.offsets, store.offsets)


def test_length_defaults_have_one_home():
    """Every library signature defaults to the constants of pile_jax.models.tokenize, which hold the
    documented values (pairs 256 / query 64; two-tower query 30 / document 200; pipeline 128 / 32)."""
    import inspect

    from pile_jax import rankers
    from pile_jax.models import features, reranker
    from pile_jax.models import tokenize as T

    assert (T.DEFAULT_MAX_LENGTH, T.DEFAULT_MAX_QUERY_LENGTH) == (256, 64)
    assert (T.DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH, T.DEFAULT_MAX_DOC_LENGTH) == (30, 200)
    assert (T.PIPELINE_MAX_LENGTH, T.PIPELINE_MAX_QUERY_LENGTH, T.STUDY_MAX_DOC_LENGTH) == (128, 32, 96)

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k.startswith("max_")}

    pair = {"max_length": 256, "max_query_length": 64}
    two_tower = {"max_length": 256, "max_query_length": 30, "max_doc_length": 200}
    assert defaults(T.PairTokenizer.__init__) == pair
    assert defaults(reranker.Reranker.from_pretrained) == pair
    assert defaults(rankers.cross_encoder) == pair
    assert defaults(rankers.biencoder_cosine) == {"max_length": 256}
    assert defaults(T.TwoTowerTokenizer.__init__) == {"max_query_length": 30, "max_doc_length": 200}
    assert defaults(features.make_features) == two_tower
    assert defaults(features.make_featurizer) == two_tower
    assert defaults(rankers.student) == two_tower

    from pile_jax.cli import build_parser

    args = build_parser().parse_args(["score", "--collection", "cranfield", "--teacher", "b=bm25", "--out", "x"])
    assert args.max_length == 256
