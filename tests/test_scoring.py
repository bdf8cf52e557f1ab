"""Train collate from ids and data-parallel scoring (4 forced CPU devices), on real Cranfield text.

References: the per-pair tokenizer path of ``test_tokenize_once.reference_encode`` and one
unsorted, unbucketed single-device forward over every pair.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from pile_jax.data import load_collection  # noqa: E402
from pile_jax.scoring import make_collate, score_candidates, score_pairs  # noqa: E402
from pile_jax.train.loop import Ranker  # noqa: E402

from helpers.pair_reference import reference_encode  # noqa: E402
from pile_jax.models import resolve_model_path  # noqa: E402

MINILM = resolve_model_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def coll():
    return load_collection("cranfield")


@pytest.fixture(scope="module")
def ranker():
    from pile_jax import rankers

    return rankers.cross_encoder("all-MiniLM-L6-v2", num_layers=1, max_length=128, max_query_length=24)


def _records(coll, n=6, groups=10, as_bytes=False, seed=0):
    rng = np.random.default_rng(seed)
    qids, dids = list(coll.queries), list(coll.docs)
    out = []
    for g in range(groups):
        k = n if g % 3 else n - 2       # some groups padded with ""
        docs = [dids[i] for i in rng.integers(0, len(dids), k)] + [""] * (n - k)
        rec = {"query_id": qids[int(rng.integers(0, len(qids)))], "doc_ids": docs,
               "labels": rng.integers(0, 3, n).astype(np.float32), "label_mask": np.arange(n) < k,
               "mask": np.arange(n) < k, "teacher_scores": rng.normal(size=(2, n)).astype(np.float32)}
        if as_bytes:
            rec["query_id"] = rec["query_id"].encode()
            rec["doc_ids"] = [d.encode() for d in docs]          # as the TFDS data source gives them
        out.append(rec)
    return out


@pytest.mark.parametrize("as_bytes", [False, True])
def test_collate_from_ids_equals_per_pair_tokenisation(coll, ranker, as_bytes):
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    records = _records(coll, as_bytes=as_bytes)
    collate = make_collate(ranker, coll.queries, coll.docs)
    batch = collate(records)
    s = lambda x: x.decode() if isinstance(x, bytes) else x
    qs = [coll.queries[s(r["query_id"])] for r in records for _ in r["doc_ids"]]
    ds = [coll.docs[s(d)] if s(d) else "" for r in records for d in r["doc_ids"]]
    ref = reference_encode(hf_tok, qs, ds, max_length=128, max_query_length=24)
    B, n = len(records), len(records[0]["doc_ids"])
    for k, v in ref.items():
        np.testing.assert_array_equal(batch[k], v.reshape(B, n, -1), err_msg=k)
    for k in ("labels", "label_mask", "mask", "teacher_scores"):
        np.testing.assert_array_equal(batch[k], np.stack([r[k] for r in records]))
    lengths = collate.group_lengths([r["query_id"] for r in records], np.stack([r["doc_ids"] for r in records]))
    assert lengths.dtype == np.int64
    np.testing.assert_array_equal(lengths, ref["attention_mask"].sum(1).reshape(B, n).max(1))


def test_two_tower_collate_equals_text_featurize(coll):
    from pile_jax.models.features import make_features

    feats = make_features("two_tower_prett", MINILM, max_query_length=8, max_doc_length=40)
    ranker = Ranker(params=None, score_fn=None, featurize=feats.featurize, meta={"features": feats})
    records = _records(coll, n=4, groups=5)
    got = make_collate(ranker, coll.queries, coll.docs)(records)
    texts = ([coll.queries[r["query_id"]] for r in records],
             [[coll.docs[d] if d else "" for d in r["doc_ids"]] for r in records])
    ref = feats.featurize(*texts)
    for k in ("query_ids", "query_mask", "doc_ids", "doc_mask"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    # the text-only fallback (a ranker without a tokenise-once featuriser) gives the same batch
    fallback = make_collate(Ranker(params=None, score_fn=None, featurize=feats.featurize), coll.queries, coll.docs)
    for k in ("query_ids", "doc_ids", "doc_mask"):
        np.testing.assert_array_equal(fallback(records)[k], ref[k])


def test_data_parallel_scores_equal_single_device_and_the_unsorted_reference(coll, ranker):
    assert jax.local_device_count() == 4
    rng = np.random.default_rng(1)
    qids, dids = list(coll.queries), list(coll.docs)
    pairs = [(coll.queries[qids[i]], coll.docs[dids[j]])
             for i, j in zip(rng.integers(0, len(qids), 90), rng.integers(0, len(dids), 90))]
    pairs += pairs[:5]          # repeated texts are tokenised once, scored in place
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    ref_batch = reference_encode(hf_tok, [q for q, _ in pairs], [d for _, d in pairs], max_length=128,
                                 max_query_length=24, buckets=(128,))
    ref_batch = {k: v[:, None] for k, v in ref_batch.items()}
    ref = np.asarray(jax.jit(lambda p, b: ranker.score_fn(p, b))(ranker.params, ref_batch))[:, 0]
    one = score_pairs(ranker, ranker.params, pairs, batch_size=16, devices=jax.local_devices()[:1])
    four = score_pairs(ranker, ranker.params, pairs, batch_size=14, distributed=False)   # rows rounded to 16
    gathered = score_pairs(ranker, ranker.params, pairs, batch_size=16, distributed=True)  # one process: gather path
    np.testing.assert_allclose(one, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(four, one, atol=1e-6, rtol=0)
    np.testing.assert_allclose(gathered, one, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(one[-5:], one[:5])
    assert score_pairs(ranker, ranker.params, []).shape == (0,)
    cands = {qids[0]: dids[:3], qids[1]: dids[2:4]}
    got = score_candidates(ranker, ranker.params, cands, coll.queries, coll.docs, batch_size=4)
    flat = score_pairs(ranker, ranker.params, [(coll.queries[q], coll.docs[d]) for q in cands for d in cands[q]],
                       batch_size=4, devices=jax.local_devices()[:1])
    np.testing.assert_allclose([got[q][d] for q in cands for d in cands[q]], flat, atol=1e-6)


@pytest.mark.slow
def test_two_processes_each_score_a_slice_and_gather_everything(tmp_path):
    """Two CPU processes (2 devices each): batches dealt round-robin, all-gathered; both return
    the single-process scores of every pair, in input order."""
    from helpers import score_dist_worker as worker
    from helpers.procs import finish_workers, start_workers

    procs = start_workers(worker.__file__, tmp_path)
    r = worker.ranker()
    ref = score_pairs(r, r.params, worker.pairs(), batch_size=16, distributed=False)
    f = worker.index_features()
    texts = worker.index_texts()
    index_ref = f.encode_documents(texts)
    finish_workers(procs, timeout=300, tail=3000)
    assert len(set(ref.tolist())) > 100      # distinct scores: a misplaced pair would show
    for pid in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"p{pid}.npy"), ref)
    # issue 19: only process 0 tokenised the train token store; process 1 read the same store
    import json

    tok = [json.loads((tmp_path / f"p{pid}_tokenised.json").read_text()) for pid in range(2)]
    assert len(tok[0]["calls"]) == 2 and tok[1]["calls"] == [], tok
    assert tok[0]["docs"] == tok[1]["docs"] > 1000 and tok[0]["doc_tokens"] == tok[1]["doc_tokens"]
    # the document index, distributed over processes whose caches differed, is the one-process index
    for pid in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"p{pid}_index.npy"), index_ref, atol=1e-5, rtol=0)


def test_token_stores_saved_beside_the_data_are_reused_only_for_the_same_texts(tmp_path, monkeypatch):
    from pile_jax.models.tokenize import PairTokenizer

    tok = PairTokenizer(MINILM, max_length=32, max_query_length=8)
    ranker = Ranker(params=None, score_fn=None, featurize=tok.featurize, meta={"features": tok})
    queries, docs = {"q1": "boundary layer", "q2": "heat transfer"}, {"d1": "a flat plate", "d2": "shock waves in air"}
    records = [{"query_id": "q2", "doc_ids": ["d2", "d1"], "labels": np.zeros(2), "label_mask": np.ones(2, bool),
                "mask": np.ones(2, bool), "teacher_scores": np.zeros((1, 2))}]
    first = make_collate(ranker, queries, docs, store_dir=tmp_path)(records)
    assert (tmp_path / "queries.tokens.npz").exists() and (tmp_path / "docs.tokens.npz").exists()
    calls = []
    real = tok.tokenize_texts
    monkeypatch.setattr(tok, "tokenize_texts", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = make_collate(ranker, queries, docs, store_dir=tmp_path)(records)
    assert calls == []                                     # both stores read from disk
    np.testing.assert_array_equal(again["input_ids"], first["input_ids"])
    changed = make_collate(ranker, queries, {**docs, "d2": "supersonic flow"}, store_dir=tmp_path)(records)
    assert len(calls) == 1                                 # the documents changed: tokenised again
    assert not np.array_equal(changed["input_ids"][0, 0], first["input_ids"][0, 0])
    np.testing.assert_array_equal(changed["input_ids"][0, 1], first["input_ids"][0, 1])


def test_collate_through_the_loader_with_padding_rows(coll, ranker):
    """TFDS-like bytes records and the loader's padding records ("" ids, zeros) in one batch."""
    from pile_jax.data.loader import make_train_loader

    records = _records(coll, n=4, groups=6, as_bytes=True)
    collate = make_collate(ranker, coll.queries, coll.docs)
    loader = make_train_loader(records, global_batch_size=4, seed=0, collate=collate, shuffle=False,
                               drop_remainder=False, length_aware=False, prefetch=0)
    loader.next_batch()
    last = loader.next_batch()                      # records 4, 5 + two padding rows
    want = collate(records[4:6])
    assert last["input_ids"].shape[:2] == (4, 4) and not last["mask"][2:].any()
    L = want["input_ids"].shape[-1]
    np.testing.assert_array_equal(last["input_ids"][:2, :, :L], want["input_ids"])
    # a padding row is the pair ("", "") for every item: [CLS] [SEP] [SEP]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    empty = [hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.sep_token_id]
    assert last["input_ids"][3, 0, :3].tolist() == empty and last["attention_mask"][3].sum() == 4 * 3


def test_query_encoder_candidates_scored_as_groups_equal_pairs_scored_one_by_one(coll):
    """score_candidates encodes each query once for a frozen-document-index ranker (its whole
    candidate list is one group, ragged lists padded and masked); every score must equal the
    per-pair path (score_pairs: one query encoding per pair)."""
    from pile_jax import rankers

    r = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, max_query_length=16, max_doc_length=24,
                        pooling="mean", doc_layers=1)
    qids, dids = list(coll.queries)[:5], list(coll.docs)
    cands = {q: dids[3 * i:3 * i + 2 + (i % 3)] for i, q in enumerate(qids)}      # 2-4 candidates (ragged)
    got = score_candidates(r, r.params, cands, coll.queries, coll.docs, batch_size=2)
    keys = [(q, d) for q in qids for d in cands[q]]
    want = score_pairs(r, r.params, [(coll.queries[q], coll.docs[d]) for q, d in keys], batch_size=3)
    assert [got[q][d] for q, d in keys] == pytest.approx(want.tolist(), rel=1e-5, abs=1e-5)
    assert set(got) == set(qids) and all(set(got[q]) == set(cands[q]) for q in qids)
