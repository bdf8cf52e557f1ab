"""Tiny flax scorer + synthetic ranking batches for the train tests (no real models needed)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VOCAB = 40


class TinyScorer(nn.Module):
    """Embedding bag over [B, n, L] tokens -> Dense -> LayerNorm -> gelu -> dropout -> Dense."""

    dim: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, input_ids, attention_mask, *, train: bool):
        emb = nn.Embed(VOCAB, self.dim)(input_ids)
        m = attention_mask[..., None].astype(jnp.float32)
        bag = (emb * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)
        h = nn.Dense(self.dim)(bag)
        h = nn.LayerNorm()(h)
        h = nn.gelu(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(1)(h)[..., 0]


def make_score_fn(model: TinyScorer, aux: bool = False):
    """score_fn(params, batch, *, rng, train); with aux=True also returns {"l2": ...}."""

    def score_fn(params, batch, *, rng, train):
        rngs = {"dropout": rng} if (train and rng is not None) else {}
        scores = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                             train=train, rngs=rngs)
        if aux:
            l2 = sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(params))
            return scores, {"l2": l2}
        return scores

    return score_fn


def init_params(model: TinyScorer, batch, seed: int = 0):
    init = jax.jit(lambda key, ids, att: model.init(key, ids, att, train=False)["params"])
    return init(jax.random.PRNGKey(seed), batch["input_ids"][:1], batch["attention_mask"][:1])


def make_batch(seed: int, batch_size: int, n: int = 5, length: int = 6, teachers: int = 3,
               ragged: bool = True) -> dict[str, np.ndarray]:
    """Deterministic synthetic train batch in the documented layout (numpy)."""
    r = np.random.default_rng(seed)
    ids = r.integers(1, VOCAB, size=(batch_size, n, length)).astype(np.int32)
    att = np.ones_like(ids)
    att[..., length - 2:] = r.integers(0, 2, size=(batch_size, n, 2))
    mask = np.ones((batch_size, n), bool)
    label_mask = np.ones((batch_size, n), bool)
    if ragged:  # padded tails and unjudged items of varying counts
        for b in range(batch_size):
            k = r.integers(0, 2)
            if k:
                mask[b, n - k:] = False
            label_mask[b, r.integers(0, n)] = b % 3 == 0
    labels = r.integers(0, 3, size=(batch_size, n)).astype(np.float32)
    teacher = (r.normal(size=(batch_size, 1, n)) + 0.5 * r.normal(size=(batch_size, teachers, n)))
    return {
        "input_ids": ids,
        "attention_mask": att,
        "token_type_ids": np.zeros_like(ids),
        "labels": labels,
        "label_mask": label_mask & mask,
        "mask": mask,
        "teacher_scores": teacher.astype(np.float32),
        "target": teacher.mean(1).astype(np.float32),
    }
