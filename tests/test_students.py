"""Students (pile_jax.models.students): scores vs NumPy re-derivations, masking, PreTT split, training.

CPU time is dominated by XLA compilation, so each architecture compiles only a few programs
(one "probe" returning the scores plus the intermediate arrays the NumPy checks need, one
train step), parameters are filled from NumPy (no random-init programs) and the programs are
compiled with cheap backend options.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pile_jax.losses import margin_mse
from pile_jax.models import students as S
from pile_jax.models import features as F
from pile_jax.models.config import EncoderConfig
from pile_jax.models.cross_encoder import CrossEncoder
from pile_jax.models.encoder import Encoder

# Cheap XLA:CPU compilation for these tiny programs (compile time dominates; results unchanged
# up to float rounding).
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)

VOCAB = 40
CFG2 = EncoderConfig(vocab_size=VOCAB, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                     max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)  # PreTT: split 0/1/2
CFG = CFG2.replace(num_layers=1)  # the other encoders: one layer keeps compilation short
B, N, LQ, LD = 2, 3, 5, 7


# ----------------------------------------------------------------------------- helpers
def _mask(rng, shape, min_len=1):
    lengths = rng.integers(min_len, shape[-1] + 1, size=shape[:-1])
    return (np.arange(shape[-1]) < lengths[..., None]).astype(np.int32)


def _batch(seed=0, b=B, n=N, lq=LQ, ld=LD):
    rng = np.random.default_rng(seed)
    qm = _mask(rng, (b, lq), 2)
    dm = _mask(rng, (b, n, ld), 2)
    qi = rng.integers(5, VOCAB, (b, lq)).astype(np.int32) * qm
    di = rng.integers(5, VOCAB, (b, n, ld)).astype(np.int32) * dm
    ce_mask = np.concatenate([np.repeat(qm[:, None], n, 1), dm], -1)
    ce_ids = np.concatenate([np.repeat(qi[:, None], n, 1), di], -1)
    return {"query_ids": qi, "query_mask": qm, "doc_ids": di, "doc_mask": dm,
            "input_ids": ce_ids, "attention_mask": ce_mask, "token_type_ids": np.zeros_like(ce_ids)}


def _repad(batch, seed=1):
    """The same batch with other token ids at every padded position."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    for ids, mask in (("query_ids", "query_mask"), ("doc_ids", "doc_mask"), ("input_ids", "attention_mask")):
        noise = rng.integers(1, VOCAB, batch[ids].shape).astype(np.int32)
        out[ids] = np.where(batch[mask] > 0, batch[ids], noise)
    return out


def _np_params(module, seed=0, std=0.3):
    """Parameters of ``module`` filled from NumPy (LayerNorm scales 1, TK's mixer 0.5 / kernel
    alphas 1), built from ``jax.eval_shape`` so no random-initialisation program is compiled."""
    q, d = jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), q, q + 1, d, d + 1, method="score_groups"))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "scale" or name == "kernel_alpha":
            return np.ones(s.shape, np.float32)
        if name == "mixer":
            return np.float32(0.5)
        return (rng.normal(size=s.shape) * (0.02 if name == "bias" else std)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def _np_maxsim(q, qm, d, dm):
    total = 0.0
    for i in range(q.shape[0]):
        if not qm[i]:
            continue
        best = None
        for j in range(d.shape[0]):
            if dm[j]:
                v = float(np.dot(q[i], d[j]))
                best = v if best is None else max(best, v)
        total += 0.0 if best is None else best
    return total


def _np_kernel_scores(q, qm, d, dm, mu, sigma, alpha, w):
    phi = np.zeros(len(mu))
    for i in range(q.shape[0]):
        if not qm[i]:
            continue
        for k, m in enumerate(mu):
            acc = 0.0
            for j in range(d.shape[0]):
                if dm[j]:
                    cos = np.dot(q[i], d[j]) / (max(np.linalg.norm(q[i]), 1e-13) * max(np.linalg.norm(d[j]), 1e-13))
                    acc += np.exp(-((cos - m) ** 2) / (2 * sigma ** 2))
            phi[k] += np.log(max(alpha[k] * acc, 1e-10))
    return phi, float(phi @ w)


def _flat(x):
    return x.reshape(-1, *x.shape[2:])


# ----------------------------------------------------------------------------- pure math
def test_colbert_maxsim_matches_numpy_loops_with_padding():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(B, LQ, 4)).astype(np.float32)
    d = rng.normal(size=(B, N, LD, 4)).astype(np.float32)
    qm, dm = _mask(rng, (B, LQ)), _mask(rng, (B, N, LD))
    dm[0, 1] = 0  # a document with no valid token scores 0
    want = np.array([[_np_maxsim(q[b], qm[b], d[b, k], dm[b, k]) for k in range(N)] for b in range(B)])
    got = np.asarray(S.colbert_maxsim(q[:, None], qm[:, None], d, dm))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got[0, 1] == 0.0
    # padded positions never win the max, whatever their vectors
    d2 = np.where(dm[..., None] > 0, d, 1e3).astype(np.float32)
    q2 = np.where(qm[..., None] > 0, q, 1e3).astype(np.float32)
    np.testing.assert_allclose(np.asarray(S.colbert_maxsim(q2[:, None], qm[:, None], d2, dm)), want, rtol=1e-5, atol=1e-4)


def test_rbf_kernel_pooling_matches_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(LQ, 6)).astype(np.float32)
    d = rng.normal(size=(LD, 6)).astype(np.float32)
    qm, dm = _mask(rng, (LQ,)), _mask(rng, (LD,))
    alpha = rng.uniform(0.5, 1.5, len(S.TK_MUS)).astype(np.float32)
    phi = S.rbf_kernel_pooling(S.cosine_matrix(q, d), qm, dm, S.TK_MUS, 0.1, alpha)
    want, _ = _np_kernel_scores(q, qm, d, dm, S.TK_MUS, 0.1, alpha, np.zeros(11))
    np.testing.assert_allclose(np.asarray(phi), want, rtol=1e-4, atol=1e-4)


def test_augment_query_with_masks():
    ids = np.array([[101, 7, 102, 0, 0], [101, 8, 9, 10, 102]], np.int32)
    mask = (ids > 0).astype(np.int32)
    new_ids, new_mask = S.augment_query_with_masks(ids, mask, 2, 103)
    np.testing.assert_array_equal(np.asarray(new_ids), [[101, 7, 102, 103, 103, 0, 0],
                                                        [101, 8, 9, 10, 102, 103, 103]])
    np.testing.assert_array_equal(np.asarray(new_mask), [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])


def test_sinusoidal_positions():
    p = np.asarray(S.sinusoidal_positions(np.array([0, 3, 500]), 6))
    i = np.arange(3)
    for r, pos in enumerate([0, 3, 500]):
        ang = pos / 10000 ** (2 * i / 6)
        np.testing.assert_allclose(p[r, 0::2], np.sin(ang), atol=1e-4)
        np.testing.assert_allclose(p[r, 1::2], np.cos(ang), atol=1e-4)


# ----------------------------------------------------------------------------- per-architecture probes
MODULES = {
    "bert_dot": S.BertDot(CFG),
    "colbert": S.ColBERT(CFG, compress_dim=6, query_augment=2, mask_token_id=3),
    "prett": S.PreTT(CFG2, split_layer=1),
    "tk": S.TK(vocab_size=VOCAB, embed_dim=8, num_layers=1, ff_dim=8),
    "cross_encoder": CrossEncoder(CFG),
}


@functools.lru_cache(maxsize=None)
def _setup(kind):
    module = MODULES[kind]
    if kind == "cross_encoder":
        ids = jnp.zeros((1, 4), jnp.int32)
        shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids, ids))["params"]
        rng = np.random.default_rng(0)
        params = jax.tree_util.tree_map_with_path(
            lambda p, s: np.ones(s.shape, np.float32) if p[-1].key == "scale"
            else (rng.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
    else:
        params = _np_params(module)
    return module, params, S.make_score_fn(module, kind)


def _probe_bert_dot(params, batch):
    enc = Encoder(CFG)
    h_q = enc.apply({"params": params["encoder"]}, batch["query_ids"], batch["query_mask"]).last_hidden_state
    h_d = enc.apply({"params": params["encoder"]}, _flat(batch["doc_ids"]), _flat(batch["doc_mask"])).last_hidden_state
    args = (batch["query_ids"], batch["query_mask"], batch["doc_ids"], batch["doc_mask"])
    comp = {**params, "compressor": {"kernel": jnp.arange(32.0).reshape(8, 4) / 30, "bias": jnp.ones(4) * 0.1}}
    return {
        "h_q": h_q, "h_d": h_d,
        "encode_queries": MODULES["bert_dot"].apply({"params": params}, *args[:2], method="encode_queries"),
        "cosine_mean": S.BertDot(CFG, pooling="mean", normalize=True).apply({"params": params}, *args,
                                                                            method="score_groups"),
        "compressed": S.BertDot(CFG, compress_dim=4).apply({"params": comp}, *args, method="score_groups"),
        "compressor": comp["compressor"],
    }


def _probe_colbert(params, batch):
    m = MODULES["colbert"]
    qv, qm = m.apply({"params": params}, batch["query_ids"], batch["query_mask"], method="encode_queries")
    dv = m.apply({"params": params}, _flat(batch["doc_ids"]), _flat(batch["doc_mask"]), method="encode_documents")
    return {"qv": qv, "qm": qm, "dv": dv}


def _probe_prett(params, batch):
    p = {"params": params}
    args = (batch["query_ids"], batch["query_mask"], batch["doc_ids"], batch["doc_mask"])
    out = {f"split{k}": S.PreTT(CFG2, split_layer=k).apply(p, *args, method="score_groups") for k in (0, 2)}
    # split 0 == Encoder on the concatenation [q ; d] (types 0 / 1) + the bias-free linear score
    rep = lambda x: jnp.repeat(x, N, axis=0)
    ids = jnp.concatenate([rep(batch["query_ids"]), _flat(batch["doc_ids"])], 1)
    mask = jnp.concatenate([rep(batch["query_mask"]), _flat(batch["doc_mask"])], 1)
    types = jnp.concatenate([jnp.zeros((B * N, LQ), jnp.int32), jnp.ones((B * N, LD), jnp.int32)], 1)
    h = Encoder(CFG2).apply({"params": params["encoder"]}, ids, mask, types).last_hidden_state
    out["full_cross_encoder"] = (h[:, 0] @ params["score"]["kernel"])[:, 0].reshape(B, N)
    # precomputed document halves + join == score_groups
    m = MODULES["prett"]
    d_part = m.apply(p, _flat(batch["doc_ids"]), _flat(batch["doc_mask"]), query_length=LQ,
                     method="encode_documents_partial")
    q_part = m.apply(p, batch["query_ids"], batch["query_mask"], method="encode_queries_partial")
    out["joined"] = m.apply(p, rep(q_part), rep(batch["query_mask"]), d_part, _flat(batch["doc_mask"]),
                            method="join").reshape(B, N)
    return out


def _probe_tk(params, batch):
    m = MODULES["tk"]
    return {"q": m.apply({"params": params}, batch["query_ids"], batch["query_mask"], method="encode_queries"),
            "d": m.apply({"params": params}, _flat(batch["doc_ids"]), _flat(batch["doc_mask"]),
                         method="encode_documents")}


PROBES = {"bert_dot": _probe_bert_dot, "colbert": _probe_colbert, "prett": _probe_prett, "tk": _probe_tk,
          "cross_encoder": lambda params, batch: {}}


@functools.lru_cache(maxsize=None)
def _probe_fn(kind):
    _, _, score_fn = _setup(kind)

    @fast_jit
    def probe(params, batch):
        return score_fn(params, batch, rng=None, train=False), PROBES[kind](params, batch)

    return probe


def _probe(kind, batch):
    _, params, _ = _setup(kind)
    scores, extra = _probe_fn(kind)(params, batch)
    return params, np.asarray(scores), jax.tree_util.tree_map(np.asarray, extra)


KINDS = ["bert_dot", "colbert", "prett", "tk", "cross_encoder"]


@pytest.mark.parametrize("kind", KINDS)
def test_masking_invariance(kind):
    """Changing the token ids at padded positions (query, documents, pairs) changes nothing."""
    batch = _batch(6)
    _, a, _ = _probe(kind, batch)
    _, b, _ = _probe(kind, _repad(batch))
    assert a.shape == (B, N) and np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bert_dot_cls_dot_mean_cosine_and_compression():
    batch = _batch(0)
    params, got, x = _probe("bert_dot", batch)
    h_q, h_d = x["h_q"], x["h_d"].reshape(B, N, LD, -1)
    np.testing.assert_allclose(got, np.einsum("bh,bnh->bn", h_q[:, 0], h_d[:, :, 0]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x["encode_queries"], h_q[:, 0], rtol=1e-5, atol=1e-5)
    qm, dm = batch["query_mask"][..., None], batch["doc_mask"][..., None]
    qv, dv = (h_q * qm).sum(1) / qm.sum(1), (h_d * dm).sum(2) / dm.sum(2)
    cos = np.einsum("bh,bnh->bn", qv, dv) / (np.linalg.norm(qv, axis=-1)[:, None] * np.linalg.norm(dv, axis=-1))
    np.testing.assert_allclose(x["cosine_mean"], cos, rtol=1e-4, atol=1e-5)
    k, bias = x["compressor"]["kernel"], x["compressor"]["bias"]
    want = np.einsum("bh,bnh->bn", h_q[:, 0] @ k + bias, h_d[:, :, 0] @ k + bias)
    np.testing.assert_allclose(x["compressed"], want, rtol=1e-4, atol=1e-4)


def test_colbert_score_matches_numpy_loops():
    batch = _batch(2)
    _, got, x = _probe("colbert", batch)
    qv, qm, dv = x["qv"], x["qm"], x["dv"].reshape(B, N, LD, -1)
    assert qv.shape == (B, LQ + 2, 6) and qm.sum() == batch["query_mask"].sum() + 2 * B  # [MASK] x 2 appended
    want = np.array([[_np_maxsim(qv[b], qm[b], dv[b, k], batch["doc_mask"][b, k]) for k in range(N)]
                     for b in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tk_kernels_and_pooling_match_numpy():
    batch = _batch(3)
    params, got, x = _probe("tk", batch)
    w = np.asarray(params["score"]["kernel"])[:, 0]
    alpha = np.asarray(params["kernel_alpha"])
    qx, dx = x["q"], x["d"].reshape(B, N, LD, -1)
    assert np.all(qx[batch["query_mask"] == 0] == 0) and np.all(dx[batch["doc_mask"] == 0] == 0)
    for b in range(B):
        for k in range(N):
            _, want = _np_kernel_scores(qx[b], batch["query_mask"][b], dx[b, k], batch["doc_mask"][b, k],
                                        S.TK_MUS, 0.1, alpha, w)
            np.testing.assert_allclose(got[b, k], want, rtol=1e-4, atol=1e-4)


def test_tk_hybrid_mix_and_positions_without_context_layers():
    """With no Transformer layers ctx(x) = x + P, so x̂ = α x + (1 − α)(x + P), P offset by 500 for documents."""
    tk = S.TK(vocab_size=VOCAB, embed_dim=6, num_layers=0)
    params = {**_np_params(tk), "mixer": np.float32(0.3)}
    batch = _batch(4)
    q = np.asarray(tk.apply({"params": params}, batch["query_ids"], batch["query_mask"], method="encode_queries"))
    d = np.asarray(tk.apply({"params": params}, batch["doc_ids"][:, 0], batch["doc_mask"][:, 0],
                            method="encode_documents"))
    emb = params["word_embeddings"]["embedding"]

    def sinus(pos):
        ang = pos[:, None] / 10000 ** (2 * np.arange(3) / 6)
        out = np.zeros((len(pos), 6))
        out[:, 0::2], out[:, 1::2] = np.sin(ang), np.cos(ang)
        return out

    for ids, m, got, off in ((batch["query_ids"], batch["query_mask"], q, 0),
                             (batch["doc_ids"][:, 0], batch["doc_mask"][:, 0], d, 500)):
        x = emb[ids]
        want = (0.3 * x + 0.7 * (x + sinus(np.arange(ids.shape[1]) + off))) * m[..., None]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_prett_split_zero_equals_full_cross_encoder_and_other_splits():
    batch = _batch(5)
    _, split1, x = _probe("prett", batch)
    np.testing.assert_allclose(x["split0"], x["full_cross_encoder"], rtol=1e-4, atol=1e-5)
    # 0 < k < L: differs from the joint encoder, still document-dependent
    assert not np.allclose(split1, x["split0"], atol=1e-4)
    assert np.ptp(split1, axis=1).min() > 1e-6
    # k = L: the query never sees the document -> one score per query
    np.testing.assert_allclose(x["split2"], np.repeat(x["split2"][:, :1], N, 1), atol=1e-5)
    # precomputed document halves give the same scores
    np.testing.assert_allclose(x["joined"], split1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_margin_mse_training_lowers_loss(kind):
    module, params, score_fn = _setup(kind)
    batch = _batch(7, b=4, n=4)
    teacher = jnp.asarray(np.random.default_rng(8).normal(size=(4, 4)) * 2, jnp.float32)
    tx = optax.adam(1e-2)

    @fast_jit
    def step(p, opt, key):
        loss, g = jax.value_and_grad(lambda p: margin_mse(score_fn(p, batch, rng=key, train=True), teacher))(p)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt, loss

    opt = tx.init(params)
    losses = []
    for i in range(10):
        params, opt, loss = step(params, opt, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------- factory + featurisers
def test_build_student_tk_init_and_errors():
    module, params, score_fn, input_kind = S.build_student("tk", CFG, tk_layers=1, ff_dim=4, embed_dim=4)
    assert input_kind == "two_tower_words" and isinstance(module, S.TK)
    assert float(params["mixer"]) == 0.5 and np.all(np.asarray(params["kernel_alpha"]) == 1.0)
    w = np.asarray(params["score"]["kernel"])
    assert w.shape == (11, 1) and np.all(np.abs(w) <= 0.014) and np.ptp(w) > 0
    table = np.random.default_rng(0).normal(size=(VOCAB, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(S.init_tk_embeddings_from(table, params)["word_embeddings"]["embedding"]),
                                  table)
    ce_like = {"encoder": {"embeddings": {"word_embeddings": {"embedding": table}}}}
    np.testing.assert_array_equal(np.asarray(S.init_tk_embeddings_from(ce_like)), table)
    with pytest.raises(ValueError, match="word_embeddings"):
        S.init_tk_embeddings_from(np.zeros((VOCAB, 5)), params)
    with pytest.raises(ValueError, match="unknown student kind"):
        S.build_student("nope", CFG)
    with pytest.raises(TypeError, match="unknown option"):
        S.build_student("bert_dot", CFG, split_layer=1)
    with pytest.raises(ValueError, match="mask_token_id"):
        S.build_student("colbert", CFG, query_augment=4, mask_token_id=103)
    with pytest.raises(ValueError, match="split_layer"):
        S.build_student("prett", CFG, split_layer=9)


def test_two_tower_tokenizer_with_minilm_tokenizer():
    from pile_jax.models.hub import resolve_model_path

    try:
        folder = resolve_model_path("all-MiniLM-L6-v2")
    except FileNotFoundError:
        pytest.skip("all-MiniLM-L6-v2 not installed")
    queries = ["what is a kernel", "jax"]
    docs = [["kernels are functions", "a kernel is the core of an operating system", "x"], ["jax is fast"]]
    tt = S.TwoTowerTokenizer(folder, max_query_length=4, max_doc_length=6)
    out = tt.encode(queries, docs)
    assert out["query_ids"].shape == (2, 6) and out["doc_ids"].shape == (2, 3, 8)
    cls, sep = tt.tokenizer.cls_token_id, tt.tokenizer.sep_token_id
    assert out["query_mask"][1].sum() == 3                                     # [CLS] jax [SEP]
    assert out["query_ids"][0, 0] == cls and out["doc_ids"][0, 1, 0] == cls
    assert out["doc_mask"][0, 1].sum() == 8 and out["doc_ids"][0, 1, 7] == sep   # 6 content tokens + 2 specials
    assert out["doc_mask"][1, 1:].sum() == 0                                       # missing documents: all padding
    prett = F.make_featurizer("two_tower_prett", tt.tokenizer, max_query_length=4, max_doc_length=6)
    p = prett(queries, docs)
    assert p["query_ids"].shape[1] == 6                                            # fixed: 4 + [CLS] + [SEP]
    assert p["doc_ids"][0, 0, 0] != cls and sep in p["doc_ids"][0, 0]
    words = F.make_featurizer("two_tower_words", tt.tokenizer)(queries, docs)
    assert cls not in words["query_ids"] and sep not in words["doc_ids"]
    pair = F.make_featurizer("pair", folder, max_length=32, max_query_length=8)(queries[:1], docs[:1])
    assert pair["input_ids"].shape[:2] == (1, 3)


@pytest.mark.parametrize("kind", ["bert_dot", "colbert", "prett", "tk"])
def test_precomputed_documents_give_the_reference_scores(kind):
    """Index-time document representations + query-time scoring equal the reference scores of the
    per-architecture probes (padding included); PreTT's cache is tied to the padded query length."""
    batch = _batch(11)
    module, params, _ = _setup(kind)
    _, ref, _ = _probe(kind, batch)
    for b in range(B):
        cache = S.precompute_documents(module, params, batch["doc_ids"][b], batch["doc_mask"][b], query_length=LQ)
        got = S.score_with_cache(module, params, batch["query_ids"][b:b + 1], batch["query_mask"][b:b + 1], cache)
        np.testing.assert_allclose(np.asarray(got), ref[b], rtol=1e-5, atol=1e-5)
    if kind == "prett":
        with pytest.raises(ValueError, match="query length"):
            S.score_with_cache(module, params, batch["query_ids"][:1, :-1], batch["query_mask"][:1, :-1], cache)


def test_cross_encoder_has_no_document_cache():
    module, params, _ = _setup("cross_encoder")
    with pytest.raises(TypeError, match="no query-independent"):
        S.precompute_documents(module, params, np.zeros((2, 3), np.int32), np.ones((2, 3), np.int32))
