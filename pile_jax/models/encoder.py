"""BERT-family Transformer encoder in flax.linen (BERT/MiniLM, ELECTRA, RoBERTa/XLM-R, DistilBERT).

All families are post-LayerNorm encoders; they differ only in the embeddings (token types,
RoBERTa's padding-aware position ids, ELECTRA's ``embeddings_project``) and in weight names,
which ``hf_io`` maps onto ONE uniform parameter tree::

    embeddings/{word_embeddings, position_embeddings, token_type_embeddings?}/embedding
    embeddings/LayerNorm/{scale, bias}
    embeddings_project/{kernel, bias}                      (ELECTRA with embedding_size != hidden)
    layer_{i}/{query, key, value, attention_out}/{kernel, bias}
    layer_{i}/attention_norm/{scale, bias}
    layer_{i}/{intermediate, output}/{kernel, bias}
    layer_{i}/output_norm/{scale, bias}

Design for partial / split application (PreTT, bi-encoders, intermediate-layer KD)
------------------------------------------------------------------------------
``Encoder`` exposes the two halves of its forward pass as methods that can be applied on
their own with ``Encoder(cfg).apply({"params": p}, ..., method="embed" | "run_layers")``
(or ``method=lambda m, *a, **k: m.encoder.run_layers(*a, **k)`` from a wrapping module):

* ``embed(input_ids, token_type_ids=None, position_ids=None, *, deterministic=True)``
  -> ``[B, L, hidden]`` (after LayerNorm, dropout and ELECTRA's projection);
* ``run_layers(hidden_states, attention_mask, *, start=0, stop=None, deterministic=True,
  output_hidden_states=False, output_attentions=False)`` -> ``EncoderOutput`` for layers
  ``start..stop-1`` (0-based, python-slice semantics).  ``attention_mask`` is ``[B, L]``
  (1 = real token) or ``[B, Lq, Lk]`` for custom patterns;
* ``__call__`` = ``embed`` + ``run_layers``; passing ``hidden_states=`` instead of
  ``input_ids`` skips the embeddings, ``layer_range=(start, stop)`` selects the layers.

A PreTT student therefore runs ``__call__(..., layer_range=(0, k))`` on query and document
separately, concatenates the two ``last_hidden_state`` tensors (and masks) and continues with
``run_layers(h, mask, start=k)``.  Applying a method only touches the parameters it uses,
so a params tree holding just some layers works for the matching ``layer_range``.

Numerics: parameters are float32; ``config.dtype`` is the compute dtype (bf16 or f32);
attention logits/softmax and LayerNorm statistics are computed in float32. Dropout is active
when ``deterministic=False`` and draws from the ``"dropout"`` rng.

Attention: ``jax.nn.dot_product_attention`` (:func:`fused_attention`; ``config.attention_impl``
= ``None`` lets JAX choose, ``"xla"``, or ``"cudnn"`` for cuDNN flash attention on GPU), which
keeps no ``[B, heads, L, L]`` probabilities for the backward pass. The written-out einsum +
softmax (:func:`explicit_attention`) runs only when the probabilities are wanted
(``output_attentions=True``, attention distillation) or attention-probability dropout is on
(``config.attention_dropout > 0`` in training; off by default, since no fused kernel has it).
Both give the same numbers (tests/test_models.py checks them against a float64 reference).
``config.remat`` wraps each layer in ``nn.remat`` (same parameter tree).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from .config import EncoderConfig

__all__ = ["Encoder", "EncoderLayer", "Embeddings", "EncoderOutput", "activation", "attention_bias",
           "attention_keep", "explicit_attention", "fused_attention", "compute_dtype", "dense_init"]


@flax.struct.dataclass
class EncoderOutput:
    """``last_hidden_state [B, L, H]``; ``hidden_states`` = (input of the first applied layer,
    output of each applied layer) when requested, else None; ``attentions`` = per-layer
    probabilities ``[B, heads, Lq, Lk]`` (float32) when requested, else None."""

    last_hidden_state: jax.Array
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


def compute_dtype(config: EncoderConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def dense_init(stddev: float = 0.02):
    return nn.initializers.normal(stddev=stddev)


def activation(name: str):
    """The activation named by a Hugging Face ``hidden_act`` string ("gelu" is the exact erf GELU)."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "relu":
        return jax.nn.relu
    if name in ("silu", "swish"):
        return jax.nn.silu
    if name == "tanh":
        return jnp.tanh
    raise ValueError(f"unsupported activation {name!r}")


def attention_bias(attention_mask: jax.Array) -> jax.Array:
    """Additive float32 bias ``[B, 1, Lq|1, Lk]`` from a ``[B, Lk]`` or ``[B, Lq, Lk]`` mask (1 = keep)."""
    return jnp.where(attention_keep(attention_mask), 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def _dense(config: EncoderConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=compute_dtype(config), param_dtype=jnp.float32,
                    kernel_init=dense_init(), name=name)


def _norm(config: EncoderConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=compute_dtype(config), param_dtype=jnp.float32,
                        use_fast_variance=False, name=name)


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, LayerNorm, dropout (width ``embedding_size``)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, position_ids=None, *, deterministic: bool = True):
        cfg = self.config
        dtype = compute_dtype(cfg)
        emb = lambda n, name: nn.Embed(n, cfg.embedding_size, dtype=jnp.float32, param_dtype=jnp.float32,
                                       embedding_init=dense_init(), name=name)
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if position_ids is None:
            position_ids = position_ids_for(input_ids, cfg)
        x = emb(cfg.vocab_size, "word_embeddings")(input_ids)
        x = x + emb(cfg.max_position_embeddings, "position_embeddings")(jnp.asarray(position_ids, jnp.int32))
        if cfg.type_vocab_size > 0:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + emb(cfg.type_vocab_size, "token_type_embeddings")(jnp.asarray(token_type_ids, jnp.int32))
        x = _norm(cfg, "LayerNorm")(x.astype(dtype))
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


def position_ids_for(input_ids: jax.Array, config: EncoderConfig) -> jax.Array:
    """Default position ids: ``0..L-1``, or RoBERTa's padding-aware ids when ``position_offset > 0``."""
    seq_len = input_ids.shape[-1]
    if config.position_offset <= 0:
        return jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), input_ids.shape)
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + (config.position_offset - 1)


def attention_keep(attention_mask: jax.Array) -> jax.Array:
    """Boolean ``[B, 1, Lq|1, Lk]`` (True = the key takes part) from a ``[B, Lk]`` or ``[B, Lq, Lk]`` mask."""
    mask = jnp.asarray(attention_mask)
    if mask.ndim == 2:
        mask = mask[:, None, None, :]
    elif mask.ndim == 3:
        mask = mask[:, None, :, :]
    else:
        raise ValueError(f"attention_mask must be [B, L] or [B, Lq, Lk], got shape {mask.shape}")
    return mask > 0


def explicit_attention(q, k, v, keep, *, dropout=None, deterministic: bool = True):
    """``softmax(q·kᵀ/√d + bias) v`` written out, returning ``(context [B, Lq, h, d], probs [B, h, Lq, Lk])``.

    ``bias = 0`` where ``keep`` else ``finfo(float32).min`` (Hugging Face's additive mask: a row
    with no kept key becomes uniform, never NaN); logits and softmax in float32, the probabilities
    cast to ``v.dtype`` for the second product. ``dropout`` (a ``nn.Dropout``) acts on the
    probabilities. Used when the probabilities are needed (``output_attentions``) or
    attention-probability dropout is on; otherwise :func:`fused_attention` computes the same thing.
    """
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    dropped = probs if dropout is None else dropout(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(v.dtype), v)
    return ctx, probs


def fused_attention(q, k, v, keep, *, implementation: Optional[str] = None):
    """The same attention through ``jax.nn.dot_product_attention`` (no probabilities kept).

    ``q, k, v [B, L, heads, head_dim]`` in the compute dtype, ``keep`` boolean ``[B, 1, Lq|1, Lk]``
    (broadcast to ``[B, 1, Lq, Lk]`` for cuDNN, which wants the full query length). JAX's XLA
    implementation computes logits and softmax in float32 and fills masked logits with a large
    negative number (a row with no kept key becomes uniform, as in :func:`explicit_attention`);
    ``implementation`` is ``None`` (JAX chooses), ``"xla"`` or ``"cudnn"`` (GPU only: bf16/fp16,
    head_dim a multiple of 8 up to 128).
    """
    if implementation == "cudnn":
        keep = jnp.broadcast_to(keep, (keep.shape[0], 1, q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=q.shape[-1] ** -0.5,
                                        implementation=implementation)


class EncoderLayer(nn.Module):
    """One post-LN Transformer block. Returns ``(hidden [B, L, H], probs [B, h, Lq, Lk] | None)``.

    ``keep`` is the boolean mask of :func:`attention_keep`. Attention goes through
    :func:`fused_attention` unless the probabilities are requested (``output_attentions``) or
    attention-probability dropout is active (``attention_dropout > 0`` and not ``deterministic``),
    which take :func:`explicit_attention`.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden, keep, deterministic: bool = True, output_attentions: bool = False):
        cfg = self.config
        batch, length = hidden.shape[:2]
        heads, head_dim = cfg.num_heads, cfg.head_dim

        def split(t):
            return t.reshape(batch, t.shape[1], heads, head_dim)

        q = split(_dense(cfg, cfg.hidden_size, "query")(hidden))
        k = split(_dense(cfg, cfg.hidden_size, "key")(hidden))
        v = split(_dense(cfg, cfg.hidden_size, "value")(hidden))
        probs = None
        if output_attentions or (cfg.attention_dropout > 0 and not deterministic):
            ctx, probs = explicit_attention(q, k, v, keep, dropout=nn.Dropout(cfg.attention_dropout),
                                            deterministic=deterministic)
        else:
            ctx = fused_attention(q, k, v, keep, implementation=cfg.attention_impl)
        ctx = ctx.reshape(batch, length, cfg.hidden_size)
        attn = _dense(cfg, cfg.hidden_size, "attention_out")(ctx)
        if cfg.family != "distilbert":  # DistilBERT has no dropout after its out_lin
            attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
        hidden = _norm(cfg, "attention_norm")(attn + hidden)

        ffn = activation(cfg.hidden_act)(_dense(cfg, cfg.intermediate_size, "intermediate")(hidden))
        ffn = _dense(cfg, cfg.hidden_size, "output")(ffn)
        ffn = nn.Dropout(cfg.hidden_dropout)(ffn, deterministic=deterministic)
        hidden = _norm(cfg, "output_norm")(ffn + hidden)
        return hidden, (probs if output_attentions else None)


class Encoder(nn.Module):
    """The encoder body (no pooler/head); see the module docstring for the split-application API."""

    config: EncoderConfig

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        if cfg.embedding_size != cfg.hidden_size:
            self.embeddings_project = _dense(cfg, cfg.hidden_size, "embeddings_project")
        layer_cls = nn.remat(EncoderLayer, static_argnums=(3, 4)) if cfg.remat else EncoderLayer
        self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]

    def embed(self, input_ids, token_type_ids=None, position_ids=None, *, deterministic: bool = True):
        """Token ids ``[B, L]`` -> embeddings ``[B, L, hidden]`` (compute dtype)."""
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic=deterministic)
        if self.config.embedding_size != self.config.hidden_size:
            x = self.embeddings_project(x)
        return x

    def run_layers(self, hidden_states, attention_mask, *, start: int = 0, stop: Optional[int] = None,
                   deterministic: bool = True, output_hidden_states: bool = False,
                   output_attentions: bool = False) -> EncoderOutput:
        """Apply layers ``start..stop-1`` to ``hidden_states [B, L, hidden]``."""
        n = self.config.num_layers
        start, stop, _ = slice(start, stop).indices(n)
        if attention_mask is None:
            attention_mask = jnp.ones(hidden_states.shape[:2], jnp.int32)
        keep = attention_keep(attention_mask)
        hidden = hidden_states.astype(compute_dtype(self.config))
        all_hidden = [hidden] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for i in range(start, stop):
            hidden, probs = self.layers[i](hidden, keep, deterministic, output_attentions)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                all_attn.append(probs)
        return EncoderOutput(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 hidden_states=None, layer_range: Optional[tuple] = None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False) -> EncoderOutput:
        """Embed ``input_ids`` (or take ``hidden_states``) and run ``layer_range`` (default: all)."""
        if (input_ids is None) == (hidden_states is None):
            raise ValueError("pass exactly one of input_ids or hidden_states")
        if hidden_states is None:
            hidden_states = self.embed(input_ids, token_type_ids, position_ids, deterministic=deterministic)
        start, stop = layer_range if layer_range is not None else (0, None)
        return self.run_layers(hidden_states, attention_mask, start=start, stop=stop,
                               deterministic=deterministic, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)
