"""Intermediate-layer distillation for same-architecture (cross-encoder) students.

These are the standard TinyBERT/MiniLM-style terms listed in kd_papers.md B4 (the
uniform-architecture loss study, Qin et al. 2023, arXiv 2302.04112). They are
**reconstructions**: the paper's own loss definitions were not retrieved (B3), so nothing
here claims to be its exact formulation.

Notation: student S with L_S layers, teacher T with L_T layers; H^l = output of layer l
(H^0 = embedding output), A^l = attention probabilities of layer l; ``mask [B, L]`` marks
real tokens; a layer map g sends student layer l (1-based) to teacher layer g(l).

* hidden:    Σ_l mean_{valid tokens, dims} (H_S^l W_h + b_h − H_T^{g(l)})²
* attention: Σ_l mean_{heads, valid rows i} Σ_{valid keys j} A_T log(A_T / A_S)   (``attention_kl``)
             or Σ_l mean_{heads, valid i, valid j} (A_S − A_T)²                  (``attention_mse``)
* embedding: mean_{valid tokens, dims} (E_S W_e + b_e − E_T)²

Stacked inputs: hidden ``[layers, B, L, H]``, attentions ``[layers, B, heads, L, L]`` (the
layers already aligned by the map; :func:`intermediate_loss` does the selection from full
``EncoderOutput`` s). Projections are ``{"kernel": [H_S, H_T], "bias": [H_T]}`` dicts (the
``nn.Dense`` layout; :func:`init_projections`), a bare kernel, or ``None`` (identity), and are
trained together with the student (:func:`make_intermediate_score_fn`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp

__all__ = [
    "layer_map", "project", "init_projections", "hidden_state_mse", "embedding_mse", "attention_kl",
    "attention_mse", "intermediate_loss", "make_intermediate_score_fn", "DEFAULT_WEIGHTS",
]

DEFAULT_WEIGHTS = {"hidden": 1.0, "attention": 1.0, "embedding": 1.0}

Projection = Union[None, jax.Array, Mapping[str, jax.Array]]


def layer_map(num_student_layers: int, num_teacher_layers: int, mode: Union[str, Sequence[int]] = "uniform") -> tuple:
    """Teacher layer (1-based) for each student layer 1..L_S.

    ``"uniform"``: g(l) = ⌊l·L_T / L_S⌋ (TinyBERT's uniform strategy; the last student layer maps
    to the last teacher layer), e.g. 2→6: (3, 6); 3→12: (4, 8, 12); 4→12: (3, 6, 9, 12).
    ``"last"``: the last L_S teacher layers. A sequence: taken as is (validated).
    """
    ls, lt = int(num_student_layers), int(num_teacher_layers)
    if ls < 1 or lt < 1:
        raise ValueError(f"layer counts must be >= 1, got student={ls}, teacher={lt}")
    if isinstance(mode, str):
        if mode == "uniform":
            if ls > lt:
                raise ValueError(f"uniform map needs num_student_layers <= num_teacher_layers, got {ls} > {lt}")
            return tuple((l * lt) // ls for l in range(1, ls + 1))
        if mode == "last":
            if ls > lt:
                raise ValueError(f"'last' map needs num_student_layers <= num_teacher_layers, got {ls} > {lt}")
            return tuple(range(lt - ls + 1, lt + 1))
        raise ValueError(f"layer_map mode must be 'uniform', 'last' or a list of teacher layers, got {mode!r}")
    out = tuple(int(g) for g in mode)
    if len(out) != ls:
        raise ValueError(f"explicit layer map has {len(out)} entries for {ls} student layers")
    if any(not 1 <= g <= lt for g in out):
        raise ValueError(f"explicit layer map {out} has entries outside [1, {lt}] (teacher layers are 1-based)")
    return out


_layer_map = layer_map  # (the name is shadowed by keyword arguments below)


def project(x: jax.Array, projection: Projection) -> jax.Array:
    """``x W + b`` (``projection`` a dict with ``kernel``/``bias``, a kernel array, or None = identity)."""
    if projection is None:
        return x
    if isinstance(projection, Mapping):
        y = x @ projection["kernel"]
        return y + projection["bias"] if projection.get("bias") is not None else y
    return x @ projection


def init_projections(rng: jax.Array, student_dim: int, teacher_dim: int, *, student_embedding_dim: Optional[int] = None,
                     teacher_embedding_dim: Optional[int] = None, identity_if_equal: bool = True) -> dict:
    """``{"hidden": {kernel [H_S, H_T], bias}, "embedding": {...}}`` for W_h and W_e.

    Identity kernel + zero bias when the widths match (and ``identity_if_equal``), else
    lecun-normal kernel + zero bias. The layout is ``nn.Dense``'s.
    """
    def one(key, s, t):
        if identity_if_equal and s == t:
            kernel = jnp.eye(s, dtype=jnp.float32)
        else:
            kernel = jax.nn.initializers.lecun_normal()(key, (s, t), jnp.float32)
        return {"kernel": kernel, "bias": jnp.zeros((t,), jnp.float32)}

    k1, k2 = jax.random.split(rng)
    es = student_dim if student_embedding_dim is None else student_embedding_dim
    et = teacher_dim if teacher_embedding_dim is None else teacher_embedding_dim
    return {"hidden": one(k1, int(student_dim), int(teacher_dim)), "embedding": one(k2, int(es), int(et))}


def _token_mask(mask, shape) -> jax.Array:
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    return (jnp.asarray(mask) > 0).astype(jnp.float32)


def _stack4(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x[None] if x.ndim == 3 else x


def hidden_state_mse(student_hidden, teacher_hidden, projection: Projection = None, *, mask=None) -> jax.Array:
    """``Σ_l Σ_{b,i: mask} Σ_h (H_S W + b − H_T)² / (#valid tokens · H_T)``.

    ``student_hidden [layers, B, L, H_S]`` (or one layer ``[B, L, H_S]``), ``teacher_hidden
    [layers, B, L, H_T]``, ``mask [B, L]``. 0 when there is no valid token.
    """
    s = project(_stack4(student_hidden), projection)
    t = _stack4(teacher_hidden)
    if s.shape != t.shape:
        raise ValueError(f"projected student hidden {s.shape} != teacher hidden {t.shape}")
    m = _token_mask(mask, t.shape[1:3])
    sq = jnp.sum(jnp.square(s - t), axis=-1) * m                  # [layers, B, L]
    den = jnp.maximum(jnp.sum(m) * t.shape[-1], 1.0)
    return jnp.sum(sq) / den


def embedding_mse(student_embeddings, teacher_embeddings, projection: Projection = None, *, mask=None) -> jax.Array:
    """``Σ_{valid tokens} Σ_h (E_S W_e + b_e − E_T)² / (#valid · H_T)`` for ``[B, L, H]`` embeddings."""
    return hidden_state_mse(student_embeddings, teacher_embeddings, projection, mask=mask)


def _attention_inputs(student_att, teacher_att, mask):
    s = jnp.asarray(student_att, jnp.float32)
    t = jnp.asarray(teacher_att, jnp.float32)
    if s.ndim == 4:
        s, t = s[None], t[None]
    if s.shape[2] != t.shape[2]:  # different head counts: compare head-averaged maps
        s, t = s.mean(2, keepdims=True), t.mean(2, keepdims=True)
    if s.shape != t.shape:
        raise ValueError(f"student attentions {s.shape} and teacher attentions {t.shape} do not match")
    m = _token_mask(mask, (t.shape[1], t.shape[-1]))               # [B, L]
    rows = m[None, :, None, :, None]                              # valid query rows
    keys = m[None, :, None, None, :]                              # valid keys
    return s, t, m, rows, keys


def attention_kl(student_att, teacher_att, *, mask=None, eps: float = 1e-12) -> jax.Array:
    """``Σ_l Σ_{b,h,i valid} Σ_{j valid} A_T log(A_T / A_S) / (heads · #valid rows)`` (KL(A_T ‖ A_S)
    per attention row). ``[layers, B, heads, L, L]`` probabilities, ``mask [B, L]``. With different
    head counts the head-averaged maps are compared."""
    s, t, m, rows, keys = _attention_inputs(student_att, teacher_att, mask)
    kl = t * (jnp.log(jnp.maximum(t, eps)) - jnp.log(jnp.maximum(s, eps)))
    kl = jnp.sum(kl * keys, axis=-1) * rows[..., 0]               # [layers, B, heads, L]
    den = jnp.maximum(jnp.sum(m) * s.shape[2], 1.0)
    return jnp.sum(kl) / den


def attention_mse(student_att, teacher_att, *, mask=None) -> jax.Array:
    """``Σ_l mean_{b, h, valid i, valid j} (A_S − A_T)²`` over ``[layers, B, heads, L, L]`` probabilities."""
    s, t, m, rows, keys = _attention_inputs(student_att, teacher_att, mask)
    sq = jnp.square(s - t) * rows * keys
    pairs = jnp.sum(jnp.sum(m, axis=-1) ** 2)                     # Σ_b (#valid_b)²
    den = jnp.maximum(pairs * s.shape[2], 1.0)
    return jnp.sum(sq) / den


def _get(out, name):
    if isinstance(out, Mapping):
        return out.get(name)
    return getattr(out, name, None)


def intermediate_loss(student_out, teacher_out, projections: Optional[Mapping[str, Projection]] = None, *, mask=None,
                      layer_map: Union[str, Sequence[int]] = "uniform", weights: Optional[Mapping[str, float]] = None,
                      attention_loss: str = "kl") -> tuple:
    """Weighted intermediate-layer loss -> ``(total, {"hidden", "attention", "embedding": unweighted})``.

    ``student_out`` / ``teacher_out``: ``EncoderOutput`` s (or mappings) of full forward passes with
    ``hidden_states`` (index 0 = embedding output, l = layer l) and ``attentions`` (index l−1 =
    layer l). ``projections``: ``{"hidden": W_h, "embedding": W_e}`` (missing = identity).
    ``layer_map``: a mode for :func:`layer_map` or the explicit teacher layers. Terms with weight 0
    (or not in ``weights``) are not computed; ``attention_loss`` is ``"kl"`` or ``"mse"``.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown intermediate loss term(s) {unknown}; use {sorted(DEFAULT_WEIGHTS)}")
    if attention_loss not in ("kl", "mse"):
        raise ValueError(f"attention_loss must be 'kl' or 'mse', got {attention_loss!r}")
    projections = dict(projections or {})
    s_hidden, t_hidden = _get(student_out, "hidden_states"), _get(teacher_out, "hidden_states")
    s_att, t_att = _get(student_out, "attentions"), _get(teacher_out, "attentions")
    ref = s_hidden if s_hidden is not None else s_att
    t_ref = t_hidden if t_hidden is not None else t_att
    if ref is None or t_ref is None:
        raise ValueError("student_out and teacher_out need hidden_states or attentions (run with output_hidden_states=True)")
    ls = len(s_att) if s_att is not None else len(s_hidden) - 1
    lt = len(t_att) if t_att is not None else len(t_hidden) - 1
    g = _layer_map(ls, lt, layer_map)

    terms, total = {}, jnp.zeros((), jnp.float32)
    if weights.get("hidden"):
        if s_hidden is None or t_hidden is None:
            raise ValueError("the hidden term needs hidden_states from both models")
        s = jnp.stack([s_hidden[l] for l in range(1, ls + 1)])
        t = jnp.stack([t_hidden[gl] for gl in g])
        terms["hidden"] = hidden_state_mse(s, jax.lax.stop_gradient(t), projections.get("hidden"), mask=mask)
    if weights.get("attention"):
        if s_att is None or t_att is None:
            raise ValueError("the attention term needs attentions from both models (output_attentions=True)")
        s = jnp.stack([s_att[l - 1] for l in range(1, ls + 1)])
        t = jax.lax.stop_gradient(jnp.stack([t_att[gl - 1] for gl in g]))
        fn = attention_kl if attention_loss == "kl" else attention_mse
        terms["attention"] = fn(s, t, mask=mask)
    if weights.get("embedding"):
        if s_hidden is None or t_hidden is None:
            raise ValueError("the embedding term needs hidden_states from both models")
        terms["embedding"] = embedding_mse(s_hidden[0], jax.lax.stop_gradient(t_hidden[0]),
                                           projections.get("embedding"), mask=mask)
    for name, value in terms.items():
        total = total + float(weights[name]) * value
    return total, terms


def make_intermediate_score_fn(student, teacher, teacher_params, *, layer_map: Union[str, Sequence[int]] = "uniform",
                               weights: Optional[Mapping[str, float]] = None, attention_loss: str = "kl") -> Callable:
    """``score_fn(params, batch, *, rng=None, train=False)`` for a cross-encoder student trained with
    intermediate-layer terms. ``params = {"student": CrossEncoder params, "projections": ...}``
    (:func:`init_projections`); ``student``/``teacher`` are ``CrossEncoder`` modules sharing the
    tokenizer (uniform architecture), ``teacher_params`` are frozen (closed over, no gradient).

    Training returns ``(scores [B, n], {"intermediate": weighted total, "hidden", "attention",
    "embedding": unweighted terms})``; weight them with ``objective.aux_losses`` (e.g.
    ``{intermediate: 1.0}``). Evaluation (``train=False``) returns the scores only and does not
    run the teacher. Batch keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, n, L]``.
    """
    want_att = bool((weights or DEFAULT_WEIGHTS).get("attention"))

    def score_fn(params, batch, *, rng=None, train=False):
        ids = jnp.asarray(batch["input_ids"])
        B, n, L = ids.shape
        flat = lambda x: None if x is None else jnp.asarray(x).reshape(B * n, L)
        mask, types = flat(batch["attention_mask"]), flat(batch.get("token_type_ids"))
        deterministic = not (train and rng is not None)
        rngs = {} if deterministic else {"dropout": rng}
        if not train:
            s = student.apply({"params": params["student"]}, flat(ids), mask, types, deterministic=True)
            return jnp.asarray(s, jnp.float32).reshape(B, n)
        s, s_out = student.apply({"params": params["student"]}, flat(ids), mask, types, deterministic=deterministic,
                                 output_hidden_states=True, output_attentions=want_att, rngs=rngs)
        _, t_out = teacher.apply({"params": teacher_params}, flat(ids), mask, types, deterministic=True,
                                 output_hidden_states=True, output_attentions=want_att)
        t_out = jax.lax.stop_gradient(t_out)
        total, terms = intermediate_loss(s_out, t_out, params.get("projections"), mask=mask, layer_map=layer_map,
                                         weights=weights, attention_loss=attention_loss)
        return jnp.asarray(s, jnp.float32).reshape(B, n), {"intermediate": total, **terms}

    return score_fn
