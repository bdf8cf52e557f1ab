"""Cross-architecture students (Hofstätter et al. 2020, arXiv 2010.02666; specs: kd_papers.md A5).

Every student scores one (query, document) pair and plugs into the train step through
``score_fn(params, batch, *, rng, train) -> scores [B, n]`` (float32). Enc(x) is the last hidden
layer of the shared BERT-family :class:`~pile_jax.models.encoder.Encoder`; all masks exclude padding.
Under bf16 compute only the encoder runs in bf16: its output is cast to float32 before every
student's pooling, projection (``compressor``, PreTT's ``score``) and interaction, so the final
scores are never quantised to bf16 (as the cross-encoder's ``ScoreHead``).

* :class:`BertDot`  s = q⃗·p⃗, q⃗ = pool(Enc([CLS] q [SEP])) (optionally W·q⃗+b, optionally
  L2-normalised: ``normalize=True`` gives the cosine), ``pooling="cls"|"mean"``; one shared encoder.
* :class:`ColBERT`  Q = W_c Enc(q) + b, D = W_c Enc(p) + b,
  s = Σ_{i∈q, unmasked} max_{j∈p, unmasked} Q_i·D_j   (dot, not cosine; optional [MASK] query augmentation).
* :class:`PreTT`    layers 1..k separately on ``[CLS] q [SEP]`` and ``p [SEP]`` (document position ids
  offset by the padded query length, token type 1 where the family has token types), concatenation,
  layers k+1..L jointly, s = w·h_[CLS] (no bias). k = 0 is a plain cross-encoder on [q ; p].
* :class:`TK`       x̂ = α·x + (1−α)·ctx(x + P) (P sinusoidal, document positions +500),
  M_ij = cos(q̂_i, d̂_j), K_k(M_ij) = exp(−(M_ij − μ_k)²/(2σ²)),
  φ_k = Σ_{i∈q} log(max(a_k Σ_{j∈d} K_k(M_ij), 1e-10)), s = Σ_k w_k φ_k.
* ``query_encoder``  s = q⃗·v_d: BertDot's query tower against the vectors ``v_d`` of a frozen,
  precomputed document encoder (:mod:`pile_jax.models.frozen_docs`); only the query side trains.

Batch keys read by each ``score_fn`` (``B`` groups of ``n`` documents):

===================  =====================================================================
cross_encoder        ``input_ids``, ``attention_mask``, ``token_type_ids`` int32 ``[B, n, L]``
bert_dot/colbert/tk  ``query_ids``, ``query_mask`` ``[B, Lq]`` (one query per group),
                     ``doc_ids``, ``doc_mask`` ``[B, n, Ld]``
prett                same keys; the documents are ``d [SEP]`` (no leading [CLS]) and the
                     queries are padded to one fixed length (so document halves are precomputable)
query_encoder        ``query_ids``, ``query_mask`` ``[B, Lq]``, ``doc_vecs`` float32 ``[B, n, H]``
===================  =====================================================================

``build_student(kind, path_or_config, **opts) -> (module, params, score_fn, input_kind)``;
``input_kind`` names the featuriser: ``"pair"`` (:class:`~pile_jax.models.tokenize.PairTokenizer`),
``"two_tower"``, ``"two_tower_prett"`` or ``"two_tower_words"`` (:class:`TwoTowerTokenizer`;
see :func:`pile_jax.models.features.make_featurizer`) or ``"frozen_docs"``
(:class:`~pile_jax.models.frozen_docs.FrozenDocFeatures`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pile_jax.numerics import SCORE_PRECISION

from .config import EncoderConfig
from .encoder import Encoder, dense_init

__all__ = [
    # scoring math (pure functions)
    "cls_pool", "mean_pool", "l2_normalize", "dot_scores", "colbert_maxsim", "cosine_matrix",
    "rbf_kernel_pooling", "sinusoidal_positions", "augment_query_with_masks", "TK_MUS",
    # modules
    "BertDot", "ColBERT", "PreTT", "TK", "init_tk_embeddings_from",
    # index-time document representations, query-time scoring
    "precompute_documents", "score_with_cache",
    # factory + featurisers
    "build_student", "make_score_fn", "TwoTowerTokenizer", "STUDENT_KINDS",
    "INPUT_KINDS",
]

STUDENT_KINDS = ("cross_encoder", "bert_dot", "colbert", "prett", "tk", "query_encoder")
INPUT_KINDS = ("pair", "two_tower", "two_tower_prett", "two_tower_words", "frozen_docs")
TK_MUS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)

_NEG = -1e9  # stands in for -inf in masked maxima (finite: no NaN gradients)


# ============================================================================ scoring math
def cls_pool(hidden: jax.Array) -> jax.Array:
    """``[..., L, H] -> [..., H]``: the first ([CLS]) position."""
    return hidden[..., 0, :]


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """``Σ_i m_i h_i / max(Σ_i m_i, 1e-9)`` over the token axis (sentence-transformers mean pooling)."""
    m = jnp.asarray(mask)[..., None].astype(hidden.dtype)
    return (hidden * m).sum(-2) / jnp.maximum(m.sum(-2), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(‖x‖₂, eps)`` over the last axis (finite gradient at x = 0, e.g. masked positions)."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    big = sq > eps * eps
    inv = jnp.where(big, jax.lax.rsqrt(jnp.where(big, sq, 1.0)), 1.0 / eps)   # double where: no inf·0 in the VJP
    return x * inv


def dot_scores(query_vecs: jax.Array, doc_vecs: jax.Array) -> jax.Array:
    """``s = q⃗·d⃗``; ``[B, D] x [B, n, D] -> [B, n]`` (or ``[N, D] x [N, D] -> [N]``), in float32
    (products and sum; :mod:`pile_jax.numerics`)."""
    query_vecs, doc_vecs = jnp.asarray(query_vecs, jnp.float32), jnp.asarray(doc_vecs, jnp.float32)
    if doc_vecs.ndim == query_vecs.ndim + 1:
        query_vecs = query_vecs[..., None, :]
    return jnp.sum(query_vecs * doc_vecs, axis=-1)


def colbert_maxsim(q: jax.Array, q_mask: jax.Array, d: jax.Array, d_mask: jax.Array) -> jax.Array:
    """ColBERT late interaction: ``s = Σ_{i: q_mask_i} max_{j: d_mask_j} q_i·d_j``.

    ``q [..., Lq, D]``, ``d [..., Ld, D]`` with broadcastable leading axes (e.g. ``[B, 1, Lq, D]``
    against ``[B, n, Ld, D]``) -> ``[...]``. Padded document positions never win the max; padded
    query positions add 0; a document with no valid token scores 0.
    """
    sim = jnp.matmul(q, jnp.swapaxes(d, -1, -2), precision=SCORE_PRECISION)   # [..., Lq, Ld]
    dm = jnp.asarray(d_mask)[..., None, :] > 0
    best = jnp.max(jnp.where(dm, sim, _NEG), axis=-1)                    # [..., Lq]
    best = jnp.where(jnp.any(dm, axis=-1), best, 0.0)
    return jnp.sum(jnp.where(jnp.asarray(q_mask) > 0, best, 0.0), axis=-1)


def cosine_matrix(q: jax.Array, d: jax.Array, eps: float = 1e-13) -> jax.Array:
    """``M_ij = q_i·d_j / (max(‖q_i‖, eps) max(‖d_j‖, eps))``: ``[..., Lq, E] x [..., Ld, E] -> [..., Lq, Ld]``."""
    qn = l2_normalize(q, eps)
    dn = l2_normalize(d, eps)
    return jnp.matmul(qn, jnp.swapaxes(dn, -1, -2), precision=SCORE_PRECISION)


def rbf_kernel_pooling(sim: jax.Array, q_mask: jax.Array, d_mask: jax.Array, mu: Sequence[float] = TK_MUS,
                       sigma: float | Sequence[float] = 0.1, alpha: Optional[jax.Array] = None,
                       clamp: float = 1e-10) -> jax.Array:
    """TK/KNRM kernel pooling of an interaction matrix ``sim [..., Lq, Ld]`` -> ``φ [..., K]``.

    ``K_k(M_ij) = exp(−(M_ij − μ_k)² / (2σ_k²))``; ``φ_k = Σ_{i∈q} log(max(a_k Σ_{j∈d} K_k(M_ij), clamp))``
    (``a_k = alpha``, default 1); padded document positions are excluded from Σ_j and padded query
    positions from Σ_i.
    """
    mu = jnp.asarray(mu, jnp.float32)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), mu.shape)
    k = jnp.exp(-jnp.square(sim[..., None] - mu) / (2.0 * jnp.square(sigma)))   # [..., Lq, Ld, K]
    k = k * (jnp.asarray(d_mask) > 0)[..., None, :, None]
    soft_tf = k.sum(-2)                                                           # [..., Lq, K]
    if alpha is not None:
        soft_tf = soft_tf * alpha
    logs = jnp.log(jnp.maximum(soft_tf, clamp)) * (jnp.asarray(q_mask) > 0)[..., None]
    return logs.sum(-2)


def sinusoidal_positions(positions: jax.Array, dim: int) -> jax.Array:
    """Transformer sinusoids: ``P[p, 2i] = sin(p / 10000^{2i/dim})``, ``P[p, 2i+1] = cos(...)``;
    ``positions [...]`` (int) -> ``[..., dim]`` float32."""
    half = (dim + 1) // 2
    inv = jnp.exp(-math.log(10000.0) * (2.0 * jnp.arange(half, dtype=jnp.float32) / dim))
    ang = jnp.asarray(positions, jnp.float32)[..., None] * inv
    out = jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(*ang.shape[:-1], 2 * half)
    return out[..., :dim]


def augment_query_with_masks(query_ids, query_mask, num_masks: int, mask_token_id: int, pad_token_id: int = 0):
    """ColBERT query augmentation: put ``num_masks`` [MASK] tokens (attention mask 1) right after
    each query's last real token; ``[N, Lq] -> [N, Lq + num_masks]`` (right padding kept).
    Works on NumPy and traced arrays."""
    if num_masks <= 0:
        return query_ids, query_mask
    ids = jnp.asarray(query_ids)
    mask = jnp.asarray(query_mask)
    length = jnp.sum(mask > 0, axis=-1, keepdims=True)
    pos = jnp.arange(ids.shape[-1] + num_masks)
    ext = jnp.concatenate([ids, jnp.full((*ids.shape[:-1], num_masks), pad_token_id, ids.dtype)], axis=-1)
    new_ids = jnp.where(pos < length, ext, jnp.where(pos < length + num_masks, mask_token_id, pad_token_id))
    new_mask = (pos < length + num_masks).astype(mask.dtype)
    return new_ids.astype(ids.dtype), new_mask


def _flat(x):
    """``[B, n, L, ...] -> [B*n, L, ...]``."""
    return x.reshape(-1, *x.shape[2:])


def _check_groups(query_ids, doc_ids):
    if query_ids.ndim != 2 or doc_ids.ndim != 3 or query_ids.shape[0] != doc_ids.shape[0]:
        raise ValueError(f"expected query_ids [B, Lq] and doc_ids [B, n, Ld], got {query_ids.shape} and {doc_ids.shape}")


# ============================================================================ BERT_DOT
class BertDot(nn.Module):
    """BERT_DOT bi-encoder: one shared encoder, ``s = v(q)·v(d)``, ``v(x) = norm?(W·pool(Enc(x)) + b)``.

    ``pooling="cls"`` (the paper) or ``"mean"`` (all-MiniLM-L6-v2's training); ``compress_dim``
    adds a linear map ``H -> compress_dim`` (default none); ``normalize=True`` L2-normalises the
    vectors, i.e. the cosine (the zero-shot MiniLM bi-encoder teacher is ``pooling="mean",
    normalize=True`` with pretrained weights). ``encode_queries`` / ``encode_documents`` (same
    function, shared weights) are separately applicable for indexing.
    Params: ``{"encoder": <Encoder tree>, "compressor"?: {kernel, bias}}``.
    """

    config: EncoderConfig
    compress_dim: Optional[int] = None
    pooling: str = "cls"
    normalize: bool = False

    def setup(self):
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"BertDot.pooling must be 'cls' or 'mean', got {self.pooling!r}")
        self.encoder = Encoder(self.config)
        if self.compress_dim:
            self.compressor = nn.Dense(int(self.compress_dim), dtype=jnp.float32, param_dtype=jnp.float32,
                                       kernel_init=dense_init(), name="compressor")

    def encode(self, ids, mask, *, deterministic: bool = True):
        """``[N, L] -> [N, D]`` float32 vectors."""
        h = self.encoder(ids, mask, jnp.zeros_like(ids), deterministic=deterministic).last_hidden_state
        h = h.astype(jnp.float32)
        v = cls_pool(h) if self.pooling == "cls" else mean_pool(h, mask)
        if self.compress_dim:
            v = self.compressor(v)
        return l2_normalize(v) if self.normalize else v

    def encode_queries(self, query_ids, query_mask, *, deterministic: bool = True):
        return self.encode(query_ids, query_mask, deterministic=deterministic)

    def encode_documents(self, doc_ids, doc_mask, *, deterministic: bool = True):
        return self.encode(doc_ids, doc_mask, deterministic=deterministic)

    def __call__(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        """Pairs: ``[N, Lq]``, ``[N, Ld]`` -> ``[N]``."""
        return dot_scores(self.encode(query_ids, query_mask, deterministic=deterministic),
                          self.encode(doc_ids, doc_mask, deterministic=deterministic))

    def score_groups(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        """Groups: ``[B, Lq]``, ``[B, n, Ld]`` -> ``[B, n]`` (each query encoded once)."""
        _check_groups(query_ids, doc_ids)
        B, n = doc_ids.shape[:2]
        q = self.encode(query_ids, query_mask, deterministic=deterministic)
        d = self.encode(_flat(doc_ids), _flat(doc_mask), deterministic=deterministic).reshape(B, n, -1)
        return dot_scores(q, d)


# ============================================================================ ColBERT
class ColBERT(nn.Module):
    """ColBERT: ``Q = W_c Enc(q) + b``, ``D = W_c Enc(d) + b`` (all tokens kept),
    ``s = Σ_{i∈q} max_{j∈d} Q_i·D_j`` (see :func:`colbert_maxsim`).

    ``compress_dim`` defaults to the hidden size (the paper: 768, "no compression", but still a
    linear layer). ``query_augment=k`` appends k [MASK] tokens (``mask_token_id``) to every query
    with attention mask 1 (:func:`augment_query_with_masks`), inside the model, so the batch
    does not change. Params: ``{"encoder": ..., "compressor": {kernel, bias}}``.
    """

    config: EncoderConfig
    compress_dim: Optional[int] = None
    query_augment: int = 0
    mask_token_id: int = 103

    def setup(self):
        if self.query_augment and not 0 <= self.mask_token_id < self.config.vocab_size:
            raise ValueError(f"ColBERT.mask_token_id={self.mask_token_id} is outside the vocabulary "
                             f"(vocab_size={self.config.vocab_size})")
        self.encoder = Encoder(self.config)
        dim = int(self.compress_dim or self.config.hidden_size)
        self.compressor = nn.Dense(dim, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=dense_init(),
                                   name="compressor")

    def token_vectors(self, ids, mask, *, deterministic: bool = True):
        """``[N, L] -> [N, L, D]`` float32 token vectors (padding rows included; mask them)."""
        h = self.encoder(ids, mask, jnp.zeros_like(ids), deterministic=deterministic).last_hidden_state
        return self.compressor(h.astype(jnp.float32))

    def augment(self, query_ids, query_mask):
        return augment_query_with_masks(query_ids, query_mask, self.query_augment, self.mask_token_id,
                                        self.config.pad_token_id)

    def encode_queries(self, query_ids, query_mask, *, deterministic: bool = True):
        """``[N, Lq] -> (vectors [N, Lq', D], mask [N, Lq'])`` (after [MASK] augmentation)."""
        ids, mask = self.augment(query_ids, query_mask)
        return self.token_vectors(ids, mask, deterministic=deterministic), mask

    def encode_documents(self, doc_ids, doc_mask, *, deterministic: bool = True):
        """``[N, Ld] -> [N, Ld, D]`` (index these with ``doc_mask``)."""
        return self.token_vectors(doc_ids, doc_mask, deterministic=deterministic)

    def __call__(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        q, qm = self.encode_queries(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents(doc_ids, doc_mask, deterministic=deterministic)
        return colbert_maxsim(q, qm, d, doc_mask)

    def score_groups(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        _check_groups(query_ids, doc_ids)
        B, n, Ld = doc_ids.shape
        q, qm = self.encode_queries(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents(_flat(doc_ids), _flat(doc_mask), deterministic=deterministic)
        return colbert_maxsim(q[:, None], qm[:, None], d.reshape(B, n, Ld, -1), doc_mask)


# ============================================================================ PreTT
class PreTT(nn.Module):
    """PreTT(R): layers 1..k on the query ``[CLS] q [SEP]`` and on the document ``d [SEP]`` apart,
    then layers k+1..L on the concatenation ``[q ; d]`` (masks concatenated), ``s = w·h_[CLS]``.

    Document position ids are ``position_offset + Lq + j`` with ``Lq`` the *padded* query length
    (so the document half does not depend on the query and can be precomputed for a fixed query
    length); document token types are 1 when ``type_vocab_size > 1``. With ``split_layer=0`` this
    is exactly ``Encoder`` on the concatenated ids ``[q_ids ; d_ids]`` (types ``[0…0 ; 1…1]``) plus
    the linear score. Params: ``{"encoder": ..., "score": {kernel [H, 1]}}`` (bias-free).
    """

    config: EncoderConfig
    split_layer: int = 3

    def setup(self):
        if not 0 <= self.split_layer <= self.config.num_layers:
            raise ValueError(f"PreTT.split_layer must be in [0, {self.config.num_layers}], got {self.split_layer}")
        self.encoder = Encoder(self.config)
        self.score = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                              kernel_init=dense_init(), name="score")

    def encode_queries_partial(self, query_ids, query_mask, *, deterministic: bool = True):
        """``[N, Lq] -> [N, Lq, H]``: embeddings + layers 1..k on the query alone."""
        h = self.encoder.embed(query_ids, jnp.zeros_like(query_ids), deterministic=deterministic)
        return self.encoder.run_layers(h, query_mask, start=0, stop=self.split_layer,
                                       deterministic=deterministic).last_hidden_state

    def encode_documents_partial(self, doc_ids, doc_mask, *, query_length: int, deterministic: bool = True):
        """``[N, Ld] -> [N, Ld, H]``: layers 1..k on ``d [SEP]`` alone, positions offset by
        ``query_length`` (the padded query length used at scoring time)."""
        cfg = self.config
        Ld = doc_ids.shape[-1]
        if int(query_length) + Ld + cfg.position_offset > cfg.max_position_embeddings:
            raise ValueError(f"query_length {query_length} + document length {Ld} exceeds "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        pos = cfg.position_offset + int(query_length) + jnp.arange(Ld, dtype=jnp.int32)
        pos = jnp.broadcast_to(pos, doc_ids.shape)
        types = jnp.full(doc_ids.shape, 1 if cfg.type_vocab_size > 1 else 0, jnp.int32)
        h = self.encoder.embed(doc_ids, types, pos, deterministic=deterministic)
        return self.encoder.run_layers(h, doc_mask, start=0, stop=self.split_layer,
                                       deterministic=deterministic).last_hidden_state

    def join(self, query_hidden, query_mask, doc_hidden, doc_mask, *, deterministic: bool = True):
        """Layers k+1..L on ``[q ; d]`` and ``s = w·h_[CLS]``: ``[N, Lq, H], [N, Ld, H] -> [N]``."""
        h = jnp.concatenate([query_hidden, doc_hidden.astype(query_hidden.dtype)], axis=1)
        mask = jnp.concatenate([jnp.asarray(query_mask, jnp.int32), jnp.asarray(doc_mask, jnp.int32)], axis=1)
        h = self.encoder.run_layers(h, mask, start=self.split_layer, deterministic=deterministic).last_hidden_state
        return self.score(h[:, 0].astype(jnp.float32))[:, 0]

    def __call__(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        q = self.encode_queries_partial(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents_partial(doc_ids, doc_mask, query_length=query_ids.shape[-1],
                                          deterministic=deterministic)
        return self.join(q, query_mask, d, doc_mask, deterministic=deterministic)

    def score_groups(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        _check_groups(query_ids, doc_ids)
        B, n, Ld = doc_ids.shape
        Lq = query_ids.shape[-1]
        q = self.encode_queries_partial(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents_partial(_flat(doc_ids), _flat(doc_mask), query_length=Lq,
                                          deterministic=deterministic)
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return self.join(rep(q), rep(query_mask), d, _flat(doc_mask), deterministic=deterministic).reshape(B, n)


# ============================================================================ TK
class _TKLayer(nn.Module):
    """Post-LN Transformer block (self-attention, ReLU feed-forward), dropout ``rate``."""

    num_heads: int
    ff_dim: int
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        dim = x.shape[-1]
        att = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=dim, out_features=dim,
                                              dropout_rate=self.rate, deterministic=deterministic,
                                              name="attention")(x, x, mask=nn.make_attention_mask(mask > 0, mask > 0))
        x = nn.LayerNorm(name="attention_norm")(x + nn.Dropout(self.rate)(att, deterministic=deterministic))
        ff = nn.Dense(dim, name="ff_out")(nn.relu(nn.Dense(self.ff_dim, name="ff_in")(x)))
        return nn.LayerNorm(name="output_norm")(x + nn.Dropout(self.rate)(ff, deterministic=deterministic))


def _symmetric_uniform(bound: float):
    """Initializer ``U(−bound, bound)``."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def _default_heads(dim: int, preferred: int = 10) -> int:
    return max(h for h in range(1, preferred + 1) if dim % h == 0)


class TK(nn.Module):
    """Transformer-Kernel ranker (TK; kd_papers.md A5), on word pieces.

    x = E[ids] (word embeddings), P = sinusoids of the positions (documents start at
    ``doc_position_offset`` = 500), ctx = ``num_layers`` post-LN Transformer layers on x + P
    (``num_heads`` default: the largest divisor of ``embed_dim`` ≤ 10; 10 for 300-d),
    x̂ = (α·x + (1−α)·ctx) ⊙ mask with α learnable (init 0.5), M = cos(q̂, d̂), 11 RBF kernels
    (``mu``, ``sigma``), φ_k = Σ_{i∈q} log(max(a_k Σ_{j∈d} K_k(M_ij), 1e-10)) with a_k learnable
    (init 1), s = Σ_k w_k φ_k (bias-free, w ~ U(−0.014, 0.014)).

    The paper's TK uses word-level GloVe 42B vectors; those are not available offline, so here
    the vocabulary is the BERT tokenizer's word pieces and the embeddings can be initialised
    from a BERT-family checkpoint's token embeddings (e.g. all-MiniLM-L6-v2, 384-d) with
    :func:`init_tk_embeddings_from` (``build_student("tk", path)`` does this). Inputs should
    carry no special tokens (``input_kind="two_tower_words"``).
    Params: ``{"word_embeddings": {embedding}, "layer_i": ..., "mixer", "kernel_alpha", "score": {kernel}}``.
    """

    vocab_size: int
    embed_dim: int = 300
    num_layers: int = 2
    num_heads: Optional[int] = None
    ff_dim: int = 300
    mu: Sequence[float] = TK_MUS
    sigma: float = 0.1
    doc_position_offset: int = 500
    dropout: float = 0.0

    def setup(self):
        heads = self.num_heads or _default_heads(self.embed_dim)
        if self.embed_dim % heads:
            raise ValueError(f"TK.embed_dim={self.embed_dim} is not divisible by num_heads={heads}")
        self.word_embeddings = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=dense_init(),
                                        name="word_embeddings")
        self.layers = [_TKLayer(heads, self.ff_dim, self.dropout, name=f"layer_{i}") for i in range(self.num_layers)]
        self.mixer = self.param("mixer", nn.initializers.constant(0.5), ())
        self.kernel_alpha = self.param("kernel_alpha", nn.initializers.ones, (len(self.mu),))
        self.score = nn.Dense(1, use_bias=False, kernel_init=_symmetric_uniform(0.014), name="score")

    def encode(self, ids, mask, *, is_document: bool, deterministic: bool = True):
        """``[N, L] -> [N, L, E]``: the contextualised, hybrid-mixed, masked term vectors x̂."""
        mask = jnp.asarray(mask)
        x = self.word_embeddings(jnp.asarray(ids, jnp.int32))
        pos = jnp.arange(ids.shape[-1]) + (self.doc_position_offset if is_document else 0)
        ctx = x + sinusoidal_positions(pos, self.embed_dim)
        for layer in self.layers:
            ctx = layer(ctx, mask, deterministic)
        return (self.mixer * x + (1.0 - self.mixer) * ctx) * (mask > 0)[..., None]

    def encode_queries(self, query_ids, query_mask, *, deterministic: bool = True):
        return self.encode(query_ids, query_mask, is_document=False, deterministic=deterministic)

    def encode_documents(self, doc_ids, doc_mask, *, deterministic: bool = True):
        return self.encode(doc_ids, doc_mask, is_document=True, deterministic=deterministic)

    def score_vectors(self, q, q_mask, d, d_mask):
        """Kernel pooling + linear score from x̂ (broadcastable leading axes) -> ``[...]``."""
        phi = rbf_kernel_pooling(cosine_matrix(q, d), q_mask, d_mask, self.mu, self.sigma, self.kernel_alpha)
        return self.score(phi)[..., 0]

    def __call__(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        q = self.encode_queries(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents(doc_ids, doc_mask, deterministic=deterministic)
        return self.score_vectors(q, query_mask, d, doc_mask)

    def score_groups(self, query_ids, query_mask, doc_ids, doc_mask, *, deterministic: bool = True):
        _check_groups(query_ids, doc_ids)
        B, n, Ld = doc_ids.shape
        q = self.encode_queries(query_ids, query_mask, deterministic=deterministic)
        d = self.encode_documents(_flat(doc_ids), _flat(doc_mask), deterministic=deterministic)
        return self.score_vectors(q[:, None], jnp.asarray(query_mask)[:, None], d.reshape(B, n, Ld, -1), doc_mask)


def _find_word_embeddings(tree: Mapping) -> Optional[Any]:
    if "word_embeddings" in tree and isinstance(tree["word_embeddings"], Mapping):
        return tree["word_embeddings"].get("embedding")
    for value in tree.values():
        if isinstance(value, Mapping):
            found = _find_word_embeddings(value)
            if found is not None:
                return found
    return None


def init_tk_embeddings_from(source, params: Optional[Mapping] = None):
    """Word-embedding matrix for :class:`TK` from a BERT-family params tree (``Encoder``,
    ``CrossEncoder`` or any tree holding ``word_embeddings/embedding``) or an array ``[V, E]``.

    This stands in for the paper's GloVe vectors (not available offline). Returns the float32
    ``[V, E]`` array, or, when ``params`` (a TK params tree) is given, a copy of ``params`` with
    its ``word_embeddings`` replaced (``ValueError`` when the shapes differ).
    """
    table = _find_word_embeddings(source) if isinstance(source, Mapping) else source
    if table is None:
        raise ValueError("source has no word_embeddings/embedding entry")
    table = jnp.asarray(table, jnp.float32)
    if table.ndim != 2:
        raise ValueError(f"word embeddings must be [vocab, dim], got shape {table.shape}")
    if params is None:
        return table
    old = params["word_embeddings"]["embedding"]
    if tuple(old.shape) != tuple(table.shape):
        raise ValueError(f"TK word_embeddings are {tuple(old.shape)} but the source is {tuple(table.shape)}; "
                         "build TK with vocab_size/embed_dim of the source")
    out = dict(params)
    out["word_embeddings"] = {**params["word_embeddings"], "embedding": table}
    return out


# ============================================================================ score_fn adapters
def precompute_documents(module: nn.Module, params, doc_ids, doc_mask, *, query_length: Optional[int] = None) -> dict:
    """Index-time document representations of ``[n, Ld]`` documents, for :func:`score_with_cache`.

    BERT-dot: one vector per document; ColBERT: token vectors; TK: contextualised term vectors;
    PreTT: layers 1..k of the document half (positions offset by ``query_length``, the padded
    query length used at query time). A cross-encoder has no query-independent document side.
    """
    variables = {"params": params}
    if isinstance(module, PreTT):
        if query_length is None:
            raise ValueError("PreTT documents are precomputed for one padded query length: pass query_length")
        reps = module.apply(variables, doc_ids, doc_mask, query_length=int(query_length),
                            method=PreTT.encode_documents_partial)
    elif isinstance(module, (BertDot, ColBERT, TK)):
        reps = module.apply(variables, doc_ids, doc_mask, method=type(module).encode_documents)
    else:
        raise TypeError(f"{type(module).__name__} has no query-independent document representation to precompute")
    return {"reps": reps, "mask": jnp.asarray(doc_mask), "query_length": query_length}


def score_with_cache(module: nn.Module, params, query_ids, query_mask, cache: Mapping) -> jax.Array:
    """Scores of one query ``[1, Lq]`` against the ``n`` precomputed documents of ``cache`` -> ``[n]``:
    only the query side and the interaction run (what a deployed two-tower / PreTT ranker pays)."""
    reps, d_mask = cache["reps"], cache["mask"]
    n = d_mask.shape[0]

    def fn(m, q_ids, q_mask):
        if isinstance(m, BertDot):
            return dot_scores(m.encode_queries(q_ids, q_mask)[:, None], reps[None])[0]
        if isinstance(m, ColBERT):
            q, qm = m.encode_queries(q_ids, q_mask)
            return colbert_maxsim(q[:, None], qm[:, None], reps[None], d_mask[None])[0]
        if isinstance(m, TK):
            q = m.encode_queries(q_ids, q_mask)
            return m.score_vectors(q[:, None], jnp.asarray(q_mask)[:, None], reps[None], d_mask[None])[0]
        if isinstance(m, PreTT):
            if cache.get("query_length") not in (None, q_ids.shape[-1]):
                raise ValueError(f"documents were precomputed for query length {cache['query_length']}, "
                                 f"got queries of length {q_ids.shape[-1]}")
            q = m.encode_queries_partial(q_ids, q_mask)
            return m.join(jnp.repeat(q, n, axis=0), jnp.repeat(jnp.asarray(q_mask), n, axis=0), reps, d_mask)
        raise TypeError(f"{type(m).__name__} cannot score from precomputed documents")

    return module.apply({"params": params}, query_ids, query_mask, method=fn)


def _rngs(rng, train):
    return {"dropout": rng} if (train and rng is not None) else {}


def make_score_fn(module: nn.Module, kind: str) -> Callable:
    """``score_fn(params, batch, *, rng=None, train=False) -> [B, n]`` float32 for ``module``.

    Dropout is on only when ``train`` and an ``rng`` is given.
    """
    if kind == "cross_encoder":
        def score_fn(params, batch, *, rng=None, train=False):
            ids = jnp.asarray(batch["input_ids"])
            B, n, L = ids.shape
            types = batch.get("token_type_ids")
            types = None if types is None else _flat(jnp.asarray(types))
            s = module.apply({"params": params}, _flat(ids), _flat(jnp.asarray(batch["attention_mask"])), types,
                             deterministic=not (train and rng is not None), rngs=_rngs(rng, train))
            return jnp.asarray(s, jnp.float32).reshape(B, n)
        return score_fn
    if kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student kind {kind!r}; use one of {STUDENT_KINDS}")
    if kind == "query_encoder":
        return query_encoder_score_fn(module)

    def score_fn(params, batch, *, rng=None, train=False):
        s = module.apply({"params": params}, jnp.asarray(batch["query_ids"]), jnp.asarray(batch["query_mask"]),
                         jnp.asarray(batch["doc_ids"]), jnp.asarray(batch["doc_mask"]),
                         deterministic=not (train and rng is not None), rngs=_rngs(rng, train),
                         method="score_groups")
        return jnp.asarray(s, jnp.float32)
    return score_fn


def query_encoder_score_fn(module) -> Any:
    """``score_fn(params, batch, *, rng=None, train=False) -> float32 [B, n]``:
    ``s = E_q(query) · doc_vecs`` (``module``: a :class:`BertDot`; the document vectors ``doc_vecs [B, n, H]`` come from the
    featuriser's frozen index, :mod:`pile_jax.models.frozen_docs`)."""
    def score_fn(params, batch, *, rng=None, train=False):
        q = module.apply({"params": params}, jnp.asarray(batch["query_ids"]), jnp.asarray(batch["query_mask"]),
                         deterministic=not (train and rng is not None), rngs=_rngs(rng, train),
                         method="encode_queries")
        return jnp.einsum("bh,bnh->bn", q.astype(jnp.float32), jnp.asarray(batch["doc_vecs"], jnp.float32),
                          precision=SCORE_PRECISION)
    return score_fn


# ============================================================================ factory
def _load(pretrained_path_or_config, num_layers, seed, encoder_only: bool = False):
    """(config, encoder params or None, folder or None); ``encoder_only``: the student uses no
    score head (two-tower kinds, TK's embeddings), so a checkpoint without one is not news."""
    if isinstance(pretrained_path_or_config, EncoderConfig):
        cfg = pretrained_path_or_config
        if num_layers is not None:
            cfg = cfg.replace(num_layers=int(num_layers))
        return cfg, None, None
    from .hf_io import load_pretrained
    from .hub import resolve_model_path

    folder = resolve_model_path(pretrained_path_or_config)
    # A student is built to be trained: a checkpoint without a score head (a bi-encoder) gets a
    # new one, an expected step logged at INFO (the two-tower kinds keep only the encoder).
    cfg, params = load_pretrained(folder, num_layers=num_layers, seed=seed, new_head=True, encoder_only=encoder_only)
    return cfg, params, folder


def _mask_token_id(folder, default=103):
    if folder is None:
        return default
    try:
        from transformers import AutoTokenizer

        tid = AutoTokenizer.from_pretrained(str(folder)).mask_token_id
        return default if tid is None else int(tid)
    except Exception:  # pragma: no cover - tokenizer files missing
        return default


def build_student(kind: str, pretrained_path_or_config, *, seed: int = 0, num_layers: Optional[int] = None,
                  dtype: Optional[str] = None, remat: Optional[bool] = None, **opts):
    """Build a student: ``(module, params, score_fn, input_kind)``.

    ``pretrained_path_or_config``: a Hugging Face folder / name known to ``resolve_model_path``
    (encoder weights loaded, first ``num_layers`` layers; new parts initialised from ``seed``) or
    an :class:`EncoderConfig` (everything random). ``dtype`` / ``remat`` override the config.
    ``opts`` by kind: bert_dot ``compress_dim, pooling, normalize``; query_encoder ``pooling``
    (default ``mean``), ``normalize`` (default off: the query norm is the score scale; the frozen
    document side is set on the featuriser, :func:`pile_jax.models.features.make_features`); colbert ``compress_dim,
    query_augment, mask_token_id`` (default: the tokenizer's); prett ``split_layer`` (default
    ``num_layers // 2``); tk ``tk_layers`` (TK's own Transformer depth, default 2), ``embed_dim``
    (from a config: default ``embedding_size``; from a checkpoint: its embedding width, whose
    word embeddings initialise TK), ``num_heads``, ``ff_dim``, ``mu``, ``sigma``,
    ``doc_position_offset``, ``dropout`` (TK ignores ``num_layers``, ``dtype``, ``remat``;
    ``pretrained_path_or_config`` may also be a ``[V, E]`` embedding array for TK).
    ``input_kind``: ``"pair"`` (cross_encoder), ``"two_tower"`` (bert_dot, colbert),
    ``"two_tower_prett"`` (prett), ``"two_tower_words"`` (tk), ``"frozen_docs"`` (query_encoder);
    see :func:`pile_jax.models.features.make_featurizer`.
    """
    if kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student kind {kind!r}; use one of {STUDENT_KINDS}")
    rng = jax.random.PRNGKey(seed)
    if kind == "tk":
        return _build_tk(pretrained_path_or_config, rng=rng, seed=seed, **opts)
    cfg, loaded, folder = _load(pretrained_path_or_config, num_layers, seed, encoder_only=kind != "cross_encoder")
    changes = {k: v for k, v in (("dtype", dtype), ("remat", remat)) if v is not None}
    if changes:
        cfg = cfg.replace(**changes)

    if kind == "cross_encoder":
        from .cross_encoder import CrossEncoder

        if opts:
            raise TypeError(f"cross_encoder takes no options, got {sorted(opts)}")
        module = CrossEncoder(cfg)
        if loaded is None:
            ids = jnp.zeros((1, 4), jnp.int32)
            loaded = jax.jit(lambda r: module.init(r, ids, jnp.ones_like(ids), ids)["params"])(rng)
        return module, loaded, make_score_fn(module, kind), "pair"

    if kind == "bert_dot":
        module = BertDot(cfg, **_only(opts, ("compress_dim", "pooling", "normalize"), kind))
        input_kind = "two_tower"
    elif kind == "query_encoder":   # the document side is the featuriser's frozen index
        kw = _only(opts, ("pooling", "normalize"), kind)
        kw.setdefault("pooling", "mean")
        module = BertDot(cfg, **kw)
        input_kind = "frozen_docs"
    elif kind == "colbert":
        kw = _only(opts, ("compress_dim", "query_augment", "mask_token_id"), kind)
        if kw.get("query_augment") and "mask_token_id" not in kw:
            kw["mask_token_id"] = _mask_token_id(folder)
        module = ColBERT(cfg, **kw)
        input_kind = "two_tower"
    else:  # prett
        kw = _only(opts, ("split_layer",), kind)
        kw.setdefault("split_layer", cfg.num_layers // 2)
        module = PreTT(cfg, **kw)
        input_kind = "two_tower_prett"
    params = _init_params(module, rng, skip=() if loaded is None else ("encoder",))
    if loaded is not None:
        _check_same_structure(params["encoder"], loaded["encoder"])
        params["encoder"] = loaded["encoder"]
    return module, params, make_score_fn(module, kind), input_kind


def _init_params(module, rng, skip: Sequence[str] = ()) -> dict:
    """``module.init`` on dummy groups, jitted; subtrees named in ``skip`` come back as shape
    structs only (XLA drops their random initialisation, e.g. an encoder about to be replaced
    by pretrained weights)."""
    q = jnp.zeros((1, 4), jnp.int32)
    d = jnp.zeros((1, 1, 4), jnp.int32)
    init = lambda r: module.init(r, q, jnp.ones_like(q), d, jnp.ones_like(d), method="score_groups")["params"]
    shapes = jax.eval_shape(init, rng)
    kept = jax.jit(lambda r: {k: v for k, v in init(r).items() if k not in skip})(rng)
    return {k: (kept[k] if k not in skip else shapes[k]) for k in shapes}


def _only(opts: Mapping, allowed: Sequence[str], kind: str) -> dict:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise TypeError(f"{kind}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(opts)


def _check_same_structure(fresh, loaded):
    a = jax.tree_util.tree_structure(fresh)
    b = jax.tree_util.tree_structure(loaded)
    if a != b:
        raise ValueError(f"pretrained encoder parameters do not match the student's encoder: {b} vs {a}")
    for x, y in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(loaded)):
        if x.shape != y.shape:
            raise ValueError(f"pretrained encoder parameter shape {y.shape} != expected {x.shape}")


def _build_tk(source, *, rng, seed, tk_layers: int = 2, embed_dim: Optional[int] = None, **opts):
    kw = _only(opts, ("num_heads", "ff_dim", "mu", "sigma", "doc_position_offset", "dropout"), "tk")
    if "mu" in kw:
        kw["mu"] = tuple(float(m) for m in kw["mu"])
    table = None
    if isinstance(source, EncoderConfig):
        vocab, dim = source.vocab_size, int(embed_dim or source.embedding_size)
    elif isinstance(source, (str, Path)):
        from .hub import resolve_model_path

        _, loaded, _ = _load(resolve_model_path(source), 1, seed, encoder_only=True)
        table = init_tk_embeddings_from(loaded)
        vocab, dim = table.shape
        if embed_dim is not None and int(embed_dim) != dim:
            raise ValueError(f"tk: embed_dim={embed_dim} but the checkpoint's embeddings are {dim}-d")
    else:  # an embedding matrix [V, E]
        table = init_tk_embeddings_from(source)
        vocab, dim = table.shape
    module = TK(vocab_size=int(vocab), embed_dim=int(dim), num_layers=int(tk_layers), **kw)
    params = _init_params(module, rng, skip=() if table is None else ("word_embeddings",))
    if table is not None:
        params = init_tk_embeddings_from(table, params)
    return module, params, make_score_fn(module, "tk"), "two_tower_words"


# ============================================================================ featurisers
# One tokenisation path (pile_jax.models.tokenize): texts are tokenised once into token stores and
# batches are assembled from ids; TwoTowerTokenizer lives there and is re-exported here. The
# featuriser of each input kind: pile_jax.models.features.make_features (above this module).
from .tokenize import (  # noqa: E402, F401 (re-exported)
    DEFAULT_MAX_DOC_LENGTH,
    DEFAULT_MAX_LENGTH,
    DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
    TWO_TOWER_BUCKETS,
    TwoTowerTokenizer,
)
