"""CrossEncoder: encoder + the family's own sequence-classification head on the first token.

Heads (parameter names match Hugging Face so exports load without warnings):

* bert:               ``pooler`` (dense + tanh) -> dropout -> ``classifier``
* electra:            dropout -> ``dense`` -> gelu -> dropout -> ``out_proj``
* roberta/xlm-roberta: dropout -> ``dense`` -> tanh -> dropout -> ``out_proj``
* distilbert:         ``pre_classifier`` -> ReLU -> dropout -> ``classifier``

Parameter tree: ``{"encoder": <Encoder tree>, "head": {...}}``.
``CrossEncoder(cfg).apply({"params": p}, input_ids, attention_mask, token_type_ids)`` returns
float32 scores (the head computes in float32 even under bf16 compute) ``[N]`` (``[N, num_labels]`` when ``num_labels > 1``), or
``(scores, EncoderOutput)`` when hidden states or attentions are requested.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pile_jax.numerics import SCORE_PRECISION

from .config import EncoderConfig
from .encoder import Encoder, EncoderOutput, dense_init

__all__ = ["CrossEncoder", "ScoreHead"]


class ScoreHead(nn.Module):
    """Family-specific classification head on the ``[CLS]``/``<s>`` vector ``[N, H]`` -> ``[N, labels]``.

    Always computes in float32, whatever ``config.dtype``: the input is cast up and every dense
    layer runs in float32, so bf16 compute does not quantise the logits into ties (bf16 keeps
    8 significant bits: scores 0.01 apart near 4 would collide). The head is two small matrix
    products per pair, so this costs nothing measurable.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, cls_vector, *, deterministic: bool = True):
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, dtype=jnp.float32, param_dtype=jnp.float32, precision=SCORE_PRECISION,
                                         kernel_init=dense_init(), name=name)
        drop = nn.Dropout(cfg.head_dropout)
        x = jnp.asarray(cls_vector).astype(jnp.float32)
        if cfg.family == "bert":
            x = jnp.tanh(dense(cfg.hidden_size, "pooler")(x))
            x = drop(x, deterministic=deterministic)
            return dense(cfg.num_labels, "classifier")(x)
        if cfg.family == "distilbert":
            x = jax.nn.relu(dense(cfg.hidden_size, "pre_classifier")(x))
            x = drop(x, deterministic=deterministic)
            return dense(cfg.num_labels, "classifier")(x)
        # electra, roberta, xlm-roberta
        act = (lambda y: jax.nn.gelu(y, approximate=False)) if cfg.family == "electra" else jnp.tanh
        x = drop(x, deterministic=deterministic)
        x = act(dense(cfg.hidden_size, "dense")(x))
        x = drop(x, deterministic=deterministic)
        return dense(cfg.num_labels, "out_proj")(x)


class CrossEncoder(nn.Module):
    """Score (query, document) pairs encoded jointly; see the module docstring."""

    config: EncoderConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.head = ScoreHead(self.config)

    def score_from_hidden(self, last_hidden_state, *, deterministic: bool = True):
        """Scores from the encoder's ``last_hidden_state [N, L, H]`` (uses position 0)."""
        logits = self.head(last_hidden_state[:, 0], deterministic=deterministic).astype(jnp.float32)
        return logits[:, 0] if self.config.num_labels == 1 else logits

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        out: EncoderOutput = self.encoder(
            input_ids, attention_mask, token_type_ids, deterministic=deterministic,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        scores = self.score_from_hidden(out.last_hidden_state, deterministic=deterministic)
        if output_hidden_states or output_attentions:
            return scores, out
        return scores
