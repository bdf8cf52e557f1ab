"""The precision policy (issue 19, pile_jax.numerics): float32 master weights, HIGHEST matmul
precision wherever a score is reported, compared or cached, and a float32 document index that a
bf16 query tower trains against and exports. On CPU every float32 matmul is exact at any setting,
so the checks read what is compiled (the lowered program) and what is recorded."""

import jax
import numpy as np
import pytest

from pile_jax import rankers
from pile_jax.numerics import policy

LENGTHS = dict(max_length=32, max_query_length=8, max_doc_length=16)
QUERIES = ["boundary layer thickness", "heat transfer"]
DOCS = [["the boundary layer grows along the plate", "wings"], ["heat flux at the wall", "a jet"]]


def _lowered(ranker):
    batch = ranker.featurize(QUERIES, DOCS)
    return jax.jit(lambda p, b: ranker.score_fn(p, b, rng=None, train=False)).lower(ranker.params, batch).as_text()


@pytest.mark.parametrize("make", [
    lambda: rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=1, **LENGTHS),
    lambda: rankers.cross_encoder("all-MiniLM-L6-v2", num_layers=1, max_length=32, max_query_length=8, new_head=True),
    lambda: rankers.student("colbert", "all-MiniLM-L6-v2", num_layers=1, **LENGTHS),
    lambda: rankers.biencoder_cosine("all-MiniLM-L6-v2", max_length=16),
], ids=["q_dot_v_d", "score_head", "maxsim", "cosine"])
def test_score_ops_are_compiled_at_highest_precision_even_in_training_code(make):
    """The last matmul of every score (q · v_d, the cross-encoder head, ColBERT's MaxSim, the
    bi-encoder cosine) carries precision HIGHEST in the compiled program itself (so also inside the
    train step, where no context manager is active)."""
    assert "HIGHEST" in _lowered(make())


def test_every_scoring_call_runs_under_highest_default_precision():
    """score_pairs / score_candidates (dev and test runs, teacher files) and the encoders behind
    them trace their score functions with jax's default matmul precision set to highest."""
    from pile_jax.models.tokenize import PairTokenizer
    from pile_jax.scoring import score_pairs
    from pile_jax.train.loop import Ranker

    tok = PairTokenizer("all-MiniLM-L6-v2", max_length=32, max_query_length=8)
    seen = []

    def score_fn(params, batch, *, rng=None, train=False):
        seen.append(jax.config.jax_default_matmul_precision)
        return params["w"] * batch["input_ids"].sum(-1).astype(np.float32)

    r = Ranker(params={"w": np.float32(1.0)}, score_fn=score_fn, featurize=tok.featurize, meta={"features": tok})
    score_pairs(r, r.params, [(q, d) for q, row in zip(QUERIES, DOCS) for d in row], batch_size=4)
    assert seen and set(seen) == {"highest"}


def test_cache_keys_teacher_sidecars_and_exports_record_the_policy(tmp_path):
    from pile_jax.models.export import read_student_info
    from pile_jax.models.frozen_docs import encoder_key
    from pile_jax.prepare import teacher_fingerprint

    assert policy() == {"master_weights": "float32", "score_matmul_precision": "highest",
                        "document_index_dtype": "float32"}
    assert "highest" in encoder_key("m", 6, "mean", True, 30, "float32")
    fp = teacher_fingerprint({"name": "b", "kind": "biencoder_cosine"}, model={"base": "m"}, depth=5)
    assert fp["precision"] == policy()
    assert "precision" not in teacher_fingerprint({"name": "b", "kind": "bm25"}, model={}, depth=5)
    r = rankers.student("bert_dot", "all-MiniLM-L6-v2", num_layers=1, **LENGTHS)
    rankers.export_ranker(r, r.params, tmp_path / "bd")
    assert read_student_info(tmp_path / "bd")["precision"] == policy()


def test_bf16_query_encoder_trains_against_the_float32_index_its_export_reproduces(tmp_path):
    """A query_encoder student computing in bfloat16: its frozen document index (what training and
    scoring read) is the float32 encoding that the exported document_encoder/ gives in PyTorch
    sentence-transformers (a bf16 index would differ by ~1e-2)."""
    from sentence_transformers import SentenceTransformer

    from pile_jax.models.export import read_student_info

    r = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=1, doc_layers=2, dtype="bfloat16", **LENGTHS)
    texts = [d for row in DOCS for d in row]
    trained_against = r.meta["features"].encode_documents(texts)
    assert trained_against.dtype == np.float32
    rankers.export_ranker(r, r.params, tmp_path)
    info = read_student_info(tmp_path)
    assert info["document_encoder"]["index_dtype"] == "float32"
    exported = SentenceTransformer(str(tmp_path / "document_encoder"), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(exported, trained_against, atol=2e-6, rtol=0)
