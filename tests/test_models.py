"""Encoder / CrossEncoder parity with Hugging Face PyTorch (real MiniLM + tiny random models per family)."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pile_jax.models import CrossEncoder, Encoder, EncoderConfig, load_pretrained, resolve_model_path  # noqa: E402

ATOL = 1e-5
FAMILIES = ("bert", "electra", "roberta", "xlm-roberta", "distilbert")


# ----------------------------------------------------------------------------- helpers
def tiny_hf_config(family: str):
    common = dict(vocab_size=97, max_position_embeddings=40, num_labels=1)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, **common)
    bert_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     type_vocab_size=2, **common)
    if family == "bert":
        return transformers.BertConfig(hidden_act="gelu", **bert_like)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=16, **bert_like)
    if family == "roberta":
        return transformers.RobertaConfig(**{**bert_like, "type_vocab_size": 1, "hidden_act": "gelu_new"})
    return transformers.XLMRobertaConfig(**{**bert_like, "type_vocab_size": 1})


def tiny_hf_model(family: str, seed: int = 0):
    """A ``...ForSequenceClassification`` with every parameter randomised (eval mode, eager attention)."""
    torch.manual_seed(seed)
    cfg = tiny_hf_config(family)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = name.endswith("LayerNorm.weight") or "layer_norm.weight" in name
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if is_norm_scale else 0.0))
    return model.eval()


def batch_for(config: EncoderConfig, lengths=(11, 7, 3), seed: int = 0):
    """Token ids with right padding; real tokens avoid the pad id; token types 0/1 where the family has them."""
    rng = np.random.default_rng(seed)
    length = max(lengths)
    ids = np.full((len(lengths), length), config.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        row = rng.integers(3, config.vocab_size, n)
        ids[r, :n] = row
        mask[r, :n] = 1
        if config.type_vocab_size > 1:
            types[r, n // 2:n] = 1
    return ids, mask, types


def torch_inputs(config, ids, mask, types):
    kw = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
    if config.type_vocab_size > 1:
        kw["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    return kw


def assert_hidden_close(hf_hidden, ours, mask):
    real = mask.astype(bool)
    assert len(hf_hidden) == len(ours)
    for i, (a, b) in enumerate(zip(hf_hidden, ours)):
        diff = np.abs(a.numpy()[real] - np.asarray(b, np.float32)[real]).max()
        assert diff <= ATOL, f"hidden_states[{i}] differ by {diff}"


def assert_attn_close(hf_attn, ours):
    assert len(hf_attn) == len(ours)
    for i, (a, b) in enumerate(zip(hf_attn, ours)):
        diff = np.abs(a.numpy() - np.asarray(b)).max()
        assert diff <= ATOL, f"attentions[{i}] differ by {diff}"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm():
    path = resolve_model_path("all-MiniLM-L6-v2")
    config, params = load_pretrained(path)
    return path, config, params


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    family = request.param
    model = tiny_hf_model(family)
    folder = tmp_path_factory.mktemp(f"tiny-{family}")
    model.save_pretrained(folder)
    config, params = load_pretrained(folder)
    return family, model, config, params


# ----------------------------------------------------------------------------- parity
def test_minilm_encoder_and_attention_parity(minilm):
    path, config, params = minilm
    assert config.family == "bert" and config.num_layers == 6 and config.hidden_size == 384
    ids, mask, types = batch_for(config, lengths=(24, 9, 17))
    hf = transformers.AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(**torch_inputs(config, ids, mask, types), output_hidden_states=True, output_attentions=True)
    enc = Encoder(config)
    out = jax.jit(lambda p: enc.apply({"params": p}, ids, mask, types, output_hidden_states=True,
                                      output_attentions=True))(params["encoder"])
    assert len(out.hidden_states) == 7 and len(out.attentions) == 6
    assert_hidden_close(ref.hidden_states, out.hidden_states, mask)
    assert_attn_close(ref.attentions, out.attentions)
    real = mask.astype(bool)
    assert np.abs(ref.last_hidden_state.numpy()[real] - np.asarray(out.last_hidden_state)[real]).max() <= ATOL
    # without attentions requested the layers take jax.nn.dot_product_attention: same parity
    fused = jax.jit(lambda p: enc.apply({"params": p}, ids, mask, types, output_hidden_states=True))(params["encoder"])
    assert fused.attentions is None
    assert_hidden_close(ref.hidden_states, fused.hidden_states, mask)


def test_tiny_family_parity(tiny):
    family, model, config, params = tiny
    assert config.family == family
    ids, mask, types = batch_for(config)
    with torch.no_grad():
        base = model.base_model(**torch_inputs(config, ids, mask, types), output_hidden_states=True,
                                output_attentions=True)
        logits = model(**torch_inputs(config, ids, mask, types)).logits[:, 0].numpy()
    scores, out = CrossEncoder(config).apply({"params": params}, ids, mask, types,
                                             output_hidden_states=True, output_attentions=True)
    assert scores.shape == (3,) and scores.dtype == jnp.float32
    assert_hidden_close(base.hidden_states, out.hidden_states, mask)
    assert_attn_close(base.attentions, out.attentions)
    assert np.abs(np.asarray(scores) - logits).max() <= ATOL
    # the plain call (fused attention: no probabilities requested) returns scores only, same parity
    plain = CrossEncoder(config).apply({"params": params}, ids, mask, types)
    assert plain.shape == (3,)
    assert np.abs(np.asarray(plain) - logits).max() <= ATOL


def test_roberta_position_ids_follow_padding():
    from pile_jax.models.encoder import position_ids_for

    cfg = EncoderConfig(family="roberta", vocab_size=50, hidden_size=8, num_layers=1, num_heads=2,
                        intermediate_size=16, type_vocab_size=1, pad_token_id=1, position_offset=2)
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids_for(ids, cfg), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])


# ----------------------------------------------------------------------------- design features
def _tiny_config(**kw):
    base = dict(family="bert", vocab_size=60, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                max_position_embeddings=32, type_vocab_size=2)
    base.update(kw)
    return EncoderConfig(**base)


def _init(config):
    """Random params of the right structure without compiling an init (numpy draws, fast)."""
    ids, mask, types = batch_for(config, lengths=(9, 5))
    shapes = jax.eval_shape(lambda: CrossEncoder(config).init(jax.random.PRNGKey(0), ids, mask, types))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.3 + 0.5, jnp.float32), shapes)
    return params, (ids, mask, types)


def test_split_application_matches_full_pass():
    config = _tiny_config()
    params, (ids, mask, types) = _init(config)
    enc = Encoder(config)
    p = {"params": params["encoder"]}
    full = enc.apply(p, ids, mask, types, output_hidden_states=True)
    emb = enc.apply(p, ids, types, method="embed")
    first = enc.apply(p, emb, mask, start=0, stop=1, method="run_layers", output_hidden_states=True)
    rest = enc.apply(p, first.last_hidden_state, mask, start=1, method="run_layers")
    assert len(first.hidden_states) == 2
    np.testing.assert_allclose(rest.last_hidden_state, full.last_hidden_state, atol=1e-6)
    np.testing.assert_allclose(first.hidden_states[0], full.hidden_states[0], atol=1e-6)
    # __call__ with hidden_states= / layer_range=
    again = enc.apply(p, hidden_states=first.last_hidden_state, attention_mask=mask, layer_range=(1, 2))
    np.testing.assert_allclose(again.last_hidden_state, full.last_hidden_state, atol=1e-6)
    # a params tree with only the layers a range touches is enough
    partial = {"params": {k: v for k, v in params["encoder"].items() if k != "layer_1"}}
    part = enc.apply(partial, ids, mask, types, layer_range=(0, 1))
    np.testing.assert_allclose(part.last_hidden_state, first.last_hidden_state, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        enc.apply(p, None, mask)


def test_dropout_uses_dropout_rng_and_remat_keeps_params_and_grads():
    config = _tiny_config(num_layers=1)
    params, (ids, mask, types) = _init(config)
    model, remat = CrossEncoder(config), CrossEncoder(config.replace(remat=True))
    remat_shapes = jax.eval_shape(lambda: remat.init(jax.random.PRNGKey(0), ids, mask, types))["params"]
    assert jax.tree.structure(remat_shapes) == jax.tree.structure(params)

    def run(m, p, seed):
        return m.apply({"params": p}, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)})

    @jax.jit  # one compilation for everything (compiles dominate on CPU)
    def everything(p):
        det = model.apply({"params": p}, ids, mask, types)
        grads = [jax.grad(lambda q, m=m: jnp.sum(run(m, q, 3) ** 2))(p) for m in (model, remat)]
        return det, run(model, p, 1), run(model, p, 1), grads

    det, r1, r1b, (g1, g2) = everything(params)
    np.testing.assert_array_equal(r1, r1b)
    assert np.abs(np.asarray(r1) - np.asarray(det)).max() > 1e-4
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, ids, mask, types, deterministic=False)


def test_bfloat16_compute_is_close_and_params_stay_float32(minilm):
    _, config, params = minilm
    # the first two real MiniLM layers keep the test fast
    config = config.replace(num_layers=2)
    params = {"encoder": {k: v for k, v in params["encoder"].items() if k not in
                          {f"layer_{i}" for i in range(2, 6)}}, "head": params["head"]}
    ids, mask, types = batch_for(config, lengths=(20, 12))

    def run(cfg):
        model = CrossEncoder(cfg)
        return jax.jit(lambda p: model.apply({"params": p}, ids, mask, types, output_hidden_states=True))(params)

    f32, _ = run(config)
    scores, out = run(config.replace(dtype="bfloat16"))
    assert scores.dtype == jnp.float32 and out.last_hidden_state.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(scores), np.asarray(f32), atol=0.05)
    shapes = jax.eval_shape(lambda: CrossEncoder(config.replace(dtype="bfloat16")).init(
        jax.random.PRNGKey(0), ids, mask, types))["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_weight_table_matches_the_module_parameters():
    from pile_jax.models.hf_io import weight_table

    for family in FAMILIES:
        config = EncoderConfig.from_hf(tiny_hf_config(family), num_labels=2)
        ids, mask, types = batch_for(config, lengths=(4,))
        shapes = jax.eval_shape(lambda: CrossEncoder(config).init(jax.random.PRNGKey(0), ids, mask, types))["params"]
        flat = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
        table = {e.path: e.shape for e in weight_table(config)}
        assert table == flat, family


def test_config_round_trips_through_transformers():
    for family in FAMILIES:
        cfg = EncoderConfig.from_hf(tiny_hf_config(family))
        again = EncoderConfig.from_hf(cfg.to_hf())
        assert again == cfg, family
        hf = cfg.to_hf()
        assert hf.architectures[0].endswith("ForSequenceClassification") and hf.num_labels == 1
    electra = EncoderConfig.from_hf(tiny_hf_config("electra"))
    assert electra.embedding_size == 16 and electra.hidden_size == 32
    roberta = EncoderConfig.from_hf(tiny_hf_config("roberta"))
    assert roberta.position_offset == 2 and roberta.pad_token_id == 1 and roberta.hidden_act == "gelu_new"
    assert EncoderConfig.from_hf(tiny_hf_config("distilbert")).type_vocab_size == 0
    with pytest.raises(ValueError, match="gpt2"):
        EncoderConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="dtype"):
        EncoderConfig(dtype="float16")
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(hidden_size=30, num_heads=4)


# ----------------------------------------------------------------------------- attention paths
def _softmax_attention_f64(q, k, v, keep):
    """float64 NumPy reference: softmax(q·kᵀ/√d) v over the kept keys; a row with no kept key is
    uniform over all keys (what Hugging Face's additive finfo.min mask gives)."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    keep = np.broadcast_to(keep, logits.shape)
    logits = np.where(keep, logits, -np.inf)
    empty = ~keep.any(-1, keepdims=True)
    logits = np.where(empty, 0.0, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v), probs


@pytest.mark.parametrize("mask_kind", ["padding", "3d"])
def test_fused_and_explicit_attention_match_a_float64_reference(mask_kind):
    from pile_jax.models.encoder import attention_keep, explicit_attention, fused_attention

    rng = np.random.default_rng(1)
    B, L, h, d = 4, 7, 2, 8
    q, k, v = (rng.normal(size=(B, L, h, d)).astype(np.float32) * 2 for _ in range(3))
    mask = np.zeros((B, L), np.int32)
    for r, n in enumerate((7, 4, 1, 0)):     # full, padded, one token, no token at all
        mask[r, :n] = 1
    if mask_kind == "3d":                    # [B, Lq, Lk]: also a PreTT-like gap (keys 0-1 and 4-5)
        mask = np.broadcast_to(mask[:, None, :], (B, L, L)).copy()
        mask[1] = 0
        mask[1][:, [0, 1, 4, 5]] = 1
    keep = np.asarray(attention_keep(mask))
    ref_ctx, ref_probs = _softmax_attention_f64(q, k, v, keep)
    ctx, probs = explicit_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(keep))
    np.testing.assert_allclose(np.asarray(ctx), ref_ctx, atol=1e-5)
    np.testing.assert_allclose(np.asarray(probs), ref_probs, atol=1e-6)
    for impl in (None, "xla"):
        out = jax.jit(lambda a, b, c, m: fused_attention(a, b, c, m, implementation=impl))(q, k, v, keep)
        assert np.isfinite(np.asarray(out)).all()
        np.testing.assert_allclose(np.asarray(out), ref_ctx, atol=1e-5)


def test_encoder_fused_path_equals_explicit_path_and_attention_dropout_still_works():
    config = _tiny_config(num_layers=2, hidden_dropout=0.0)
    params, _ = _init(config)
    ids, mask, types = batch_for(config, lengths=(9, 5, 2))
    mask[2] = 0                                   # a row with no real token: finite, no NaN
    enc, p = Encoder(config), {"params": params["encoder"]}

    @jax.jit
    def both(p):
        fused = enc.apply(p, ids, mask, types, output_hidden_states=True)
        explicit = enc.apply(p, ids, mask, types, output_hidden_states=True, output_attentions=True)
        return fused, explicit

    fused, explicit = both(p)
    assert fused.attentions is None and len(explicit.attentions) == 2
    for a, b in zip(fused.hidden_states, explicit.hidden_states):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

    # attention-probability dropout (off by default) falls back to the explicit path in training
    assert EncoderConfig().attention_dropout == 0.0
    assert EncoderConfig.from_hf(tiny_hf_config("bert")).attention_dropout == 0.0
    dropping = Encoder(config.replace(attention_dropout=0.5))

    @jax.jit
    def train(p, seed):
        r = {"dropout": jax.random.PRNGKey(seed)}
        out = dropping.apply(p, ids, mask, types, deterministic=False, rngs=r).last_hidden_state
        no_drop = enc.apply(p, ids, mask, types, deterministic=False, rngs=r).last_hidden_state
        grad = jax.grad(lambda p: jnp.sum(dropping.apply(p, ids, mask, types, deterministic=False,
                                                         rngs=r).last_hidden_state ** 2))(p)
        return out, no_drop, grad

    d1, no_drop, grad = train(p, 0)
    d1b, _, _ = train(p, 0)
    d2, _, _ = train(p, 1)
    real = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d1b))
    np.testing.assert_allclose(np.asarray(no_drop), np.asarray(fused.last_hidden_state), atol=1e-5)
    assert np.abs(np.asarray(d1)[real] - np.asarray(no_drop)[real]).max() > 1e-3
    assert np.abs(np.asarray(d1)[real] - np.asarray(d2)[real]).max() > 1e-3
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))
    # evaluation ignores the rate: the fused path, same numbers
    det = jax.jit(lambda p: dropping.apply(p, ids, mask, types).last_hidden_state)(p)   # one compile, not op by op
    np.testing.assert_allclose(np.asarray(det), np.asarray(fused.last_hidden_state), atol=1e-5)
    with pytest.raises(ValueError, match="attention_impl"):
        EncoderConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="bfloat16"):
        EncoderConfig(attention_impl="cudnn")            # cuDNN flash attention has no float32 kernel
    assert EncoderConfig(attention_impl="cudnn", dtype="bfloat16").attention_impl == "cudnn"


# ----------------------------------------------------------------------------- float32 score head
def _kendall_tau(a, b):
    """Kendall's tau-a of two score lists (pairs tied in either list count as discordant-free zeros)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    i, j = np.triu_indices(len(a), 1)
    return float(np.sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])) / len(i))


def test_bf16_scores_rank_real_cranfield_lists_like_float32(minilm):
    """Real MiniLM (2 layers, its new score head) on Cranfield (query, candidates) lists: bf16 compute
    gives no ties and nearly the float32 order; the head itself runs in float32 (float64 reference).
    A bf16 head (the old behaviour) turns half of each list into ties, tau ~0.8 (checked by hand)."""
    from pile_jax.data import load_collection
    from pile_jax.models import PairTokenizer

    path, config, params = minilm
    config = config.replace(num_layers=2)
    params = {"encoder": {k: v for k, v in params["encoder"].items() if k not in
                          {f"layer_{i}" for i in range(2, 6)}}, "head": params["head"]}
    col = load_collection("cranfield")
    n_lists, n = 3, 24
    queries, docs = [], []
    for qid in list(col.queries)[:n_lists]:
        rel = list(col.qrels.get(qid, {}))[:8]
        cand = rel + [d for d in list(col.docs)[:60] if d not in rel][:n - len(rel)]
        queries += [col.queries[qid]] * n
        docs += [col.docs[d] for d in cand]
    enc = PairTokenizer(path, max_length=96, max_query_length=32).encode(queries, docs)

    def run(cfg):
        model = CrossEncoder(cfg)
        return jax.jit(lambda p: model.apply({"params": p}, enc["input_ids"], enc["attention_mask"],
                                             enc["token_type_ids"], output_hidden_states=True))(params)

    f32, _ = run(config)
    bf16, out = run(config.replace(dtype="bfloat16"))
    f32, bf16 = np.asarray(f32).reshape(n_lists, n), np.asarray(bf16).reshape(n_lists, n)
    for a, b in zip(f32, bf16):
        assert len(set(b.tolist())) == n, "bf16 scores have ties"
        assert _kendall_tau(a, b) >= 0.9
    # the head on the bf16 [CLS] vectors, against float64 NumPy: tanh(x W_p + b_p) W_c + b_c
    x = np.asarray(out.last_hidden_state[:, 0].astype(jnp.float32), np.float64)
    h = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in params["head"].items()}
    ref = (np.tanh(x @ h["pooler"]["kernel"] + h["pooler"]["bias"]) @ h["classifier"]["kernel"]
           + h["classifier"]["bias"])[:, 0]
    np.testing.assert_allclose(bf16.reshape(-1), ref, rtol=1e-5, atol=1e-7)
    assert (np.argsort(-bf16, axis=1, kind="stable") == np.argsort(-ref.reshape(n_lists, n), axis=1,
                                                                  kind="stable")).all()
