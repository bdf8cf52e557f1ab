"""Intermediate-layer distillation terms (pile_jax.layer_distill) against NumPy loops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pile_jax import layer_distill as LD
from pile_jax.models.config import EncoderConfig
from pile_jax.models.cross_encoder import CrossEncoder

# Cheap XLA:CPU compilation for these tiny programs (compile time dominates; results unchanged
# up to float rounding).
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)


def _mask(rng, b, length):
    lengths = rng.integers(1, length + 1, size=b)
    return (np.arange(length) < lengths[:, None]).astype(np.int32)


def _probs(rng, shape):
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_layer_map_values_and_validation():
    assert LD.layer_map(2, 6) == (3, 6)
    assert LD.layer_map(3, 12) == (4, 8, 12)
    assert LD.layer_map(4, 12) == (3, 6, 9, 12)
    assert LD.layer_map(4, 6) == (1, 3, 4, 6)
    assert LD.layer_map(6, 6) == (1, 2, 3, 4, 5, 6)
    assert LD.layer_map(2, 6, "last") == (5, 6)
    assert LD.layer_map(2, 6, [2, 4]) == (2, 4)
    with pytest.raises(ValueError, match="entries"):
        LD.layer_map(2, 6, [1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        LD.layer_map(2, 6, [0, 6])
    with pytest.raises(ValueError, match="uniform"):
        LD.layer_map(6, 2)


def test_hidden_and_embedding_mse_match_numpy_loops():
    rng = np.random.default_rng(0)
    layers, b, length, hs, ht = 2, 3, 5, 4, 6
    s = rng.normal(size=(layers, b, length, hs)).astype(np.float32)
    t = rng.normal(size=(layers, b, length, ht)).astype(np.float32)
    w = rng.normal(size=(hs, ht)).astype(np.float32)
    bias = rng.normal(size=(ht,)).astype(np.float32)
    mask = _mask(rng, b, length)
    total, count = 0.0, 0
    for i in range(b):
        for j in range(length):
            if mask[i, j]:
                count += 1
                for l in range(layers):
                    total += np.sum((s[l, i, j] @ w + bias - t[l, i, j]) ** 2)
    want = total / (count * ht)
    got = LD.hidden_state_mse(s, t, {"kernel": w, "bias": bias}, mask=mask)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # one layer = the embedding term; a bare kernel works too
    want_e = sum(np.sum((s[0, i, j] @ w - t[0, i, j]) ** 2) for i in range(b) for j in range(length) if mask[i, j])
    np.testing.assert_allclose(float(LD.embedding_mse(s[0], t[0], w, mask=mask)), want_e / (count * ht), rtol=1e-5)
    # padded positions do not matter
    s2 = np.where(mask[None, :, :, None] > 0, s, 100.0).astype(np.float32)
    np.testing.assert_allclose(float(LD.hidden_state_mse(s2, t, {"kernel": w, "bias": bias}, mask=mask)), want, rtol=1e-5)


def test_attention_kl_and_mse_match_numpy_loops():
    rng = np.random.default_rng(1)
    layers, b, heads, length = 2, 3, 2, 4
    s = _probs(rng, (layers, b, heads, length, length))
    t = _probs(rng, (layers, b, heads, length, length))
    mask = _mask(rng, b, length)
    kl, rows, sq, pairs = 0.0, 0, 0.0, 0
    for i in range(b):
        valid = np.flatnonzero(mask[i])
        rows += len(valid) * heads
        pairs += len(valid) ** 2 * heads
        for l in range(layers):
            for h in range(heads):
                for q in valid:
                    for k in valid:
                        kl += t[l, i, h, q, k] * np.log(t[l, i, h, q, k] / s[l, i, h, q, k])
                        sq += (s[l, i, h, q, k] - t[l, i, h, q, k]) ** 2
    np.testing.assert_allclose(float(LD.attention_kl(s, t, mask=mask)), kl / rows, rtol=1e-4)
    np.testing.assert_allclose(float(LD.attention_mse(s, t, mask=mask)), sq / pairs, rtol=1e-4)
    # different head counts: head-averaged maps
    s1 = s.mean(2, keepdims=True)
    t3 = np.concatenate([t, t[:, :, :1]], axis=2)
    want = LD.attention_mse(s1, t3.mean(2, keepdims=True), mask=mask)
    np.testing.assert_allclose(float(LD.attention_mse(s, t3, mask=mask)), float(want), rtol=1e-5)


def _outputs(rng, layers, b, length, hidden, heads):
    return {"hidden_states": [rng.normal(size=(b, length, hidden)).astype(np.float32) for _ in range(layers + 1)],
            "attentions": [_probs(rng, (b, heads, length, length)) for _ in range(layers)]}


def test_intermediate_loss_selects_mapped_layers_and_weights_terms():
    rng = np.random.default_rng(2)
    b, length = 2, 5
    student = _outputs(rng, 2, b, length, 4, 2)
    teacher = _outputs(rng, 6, b, length, 6, 2)
    mask = _mask(rng, b, length)
    proj = LD.init_projections(jax.random.PRNGKey(0), 4, 6)
    weights = {"hidden": 0.5, "attention": 2.0, "embedding": 3.0}
    g = (3, 6)

    @fast_jit
    def run(student, teacher, proj, mask):
        total, terms = LD.intermediate_loss(student, teacher, proj, mask=mask, weights=weights)
        want_h = LD.hidden_state_mse(jnp.stack(student["hidden_states"][1:]),
                                     jnp.stack([teacher["hidden_states"][k] for k in g]), proj["hidden"], mask=mask)
        want_a = LD.attention_kl(jnp.stack(student["attentions"]),
                                 jnp.stack([teacher["attentions"][k - 1] for k in g]), mask=mask)
        want_e = LD.embedding_mse(student["hidden_states"][0], teacher["hidden_states"][0], proj["embedding"],
                                  mask=mask)
        return total, terms, want_h, want_a, want_e

    total, terms, want_h, want_a, want_e = run(student, teacher, proj, mask)
    np.testing.assert_allclose([float(terms["hidden"]), float(terms["attention"]), float(terms["embedding"])],
                               [float(want_h), float(want_a), float(want_e)], rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.5 * float(want_h) + 2 * float(want_a) + 3 * float(want_e), rtol=1e-5)
    # attention as MSE, hidden only
    _, terms = LD.intermediate_loss(student, teacher, proj, mask=mask, weights={"attention": 1.0},
                                    attention_loss="mse")
    assert set(terms) == {"attention"}
    with pytest.raises(ValueError, match="unknown intermediate"):
        LD.intermediate_loss(student, teacher, proj, mask=mask, weights={"logits": 1.0})


def test_zero_when_student_equals_teacher_with_identity_projection():
    rng = np.random.default_rng(3)
    out = _outputs(rng, 3, 2, 4, 6, 2)
    mask = _mask(rng, 2, 4)
    proj = LD.init_projections(jax.random.PRNGKey(0), 6, 6)
    np.testing.assert_array_equal(np.asarray(proj["hidden"]["kernel"]), np.eye(6))
    run = fast_jit(lambda out, proj, mask: (LD.intermediate_loss(out, out, proj, mask=mask, attention_loss="kl"),
                                            LD.intermediate_loss(out, out, None, mask=mask, attention_loss="mse")[0]))
    (total, terms), total_mse = run(out, proj, mask)
    assert abs(float(total)) < 1e-6 and all(abs(float(v)) < 1e-6 for v in terms.values())
    assert float(total_mse) == 0.0


def test_score_fn_with_intermediate_terms_on_cross_encoders():
    """Student = teacher (same weights): all terms 0; a smaller student gets finite gradients
    into its parameters and into the projections; eval returns the scores only."""
    t_cfg = EncoderConfig(vocab_size=30, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                          max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    s_cfg = t_cfg.replace(num_layers=1, hidden_size=4, embedding_size=4, intermediate_size=8)
    rng = np.random.default_rng(4)
    m = np.stack([_mask(rng, 3, 6) for _ in range(2)])
    batch = {"input_ids": rng.integers(1, 30, (2, 3, 6)).astype(np.int32) * m, "attention_mask": m,
             "token_type_ids": np.zeros_like(m)}

    def init(cfg, seed):
        ids = jnp.zeros((1, 4), jnp.int32)
        shapes = jax.eval_shape(lambda: CrossEncoder(cfg).init(jax.random.PRNGKey(0), ids, ids, ids))["params"]
        r = np.random.default_rng(seed)
        return jax.tree_util.tree_map_with_path(
            lambda p, s: np.ones(s.shape, np.float32) if p[-1].key == "scale"
            else (r.normal(size=s.shape) * 0.2).astype(np.float32), shapes)

    teacher, student = CrossEncoder(t_cfg), CrossEncoder(s_cfg)
    t_params, s_params = init(t_cfg, 0), init(s_cfg, 1)

    same = LD.make_intermediate_score_fn(teacher, teacher, t_params, weights={"hidden": 1.0, "attention": 1.0,
                                                                              "embedding": 1.0})
    fn = LD.make_intermediate_score_fn(student, teacher, t_params, layer_map="uniform")
    params = {"student": s_params, "projections": LD.init_projections(jax.random.PRNGKey(1), 4, 8)}

    @fast_jit
    def run(same_params, p):  # one program: the student == teacher forward and the small student's gradient
        grads = jax.grad(lambda p: fn(p, batch, rng=None, train=True)[1]["intermediate"])(p)
        return same(same_params, batch, rng=None, train=True), grads

    (scores, aux), g = run({"student": t_params, "projections": LD.init_projections(jax.random.PRNGKey(0), 8, 8)},
                           params)
    assert scores.shape == (2, 3)
    assert all(abs(float(v)) < 1e-5 for v in aux.values()), aux
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert float(jnp.abs(g["projections"]["hidden"]["kernel"]).sum()) > 0
    assert float(jnp.abs(g["student"]["encoder"]["layer_0"]["query"]["kernel"]).sum()) > 0
    assert fn(params, batch, rng=None, train=False).shape == (2, 3)
