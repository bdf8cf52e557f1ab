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


# ---------------------------------------------------------------- a tiny end-to-end train() setup

TEXT_LEN = 6


def tiny_collection(num_queries: int = 16, n: int = 4, teachers: int = 2, seed: int = 0):
    """(queries, docs, examples): synthetic texts and ranking groups in the train() record layout."""
    r = np.random.default_rng(seed)
    words = "alpha beta gamma delta eps zeta eta theta iota kappa lambda mu".split()
    queries = {f"q{i}": " ".join(r.choice(words, 3)) for i in range(num_queries)}
    docs = {f"d{j}": " ".join(r.choice(words, 5)) for j in range(num_queries * n)}
    examples = []
    for i in range(num_queries):
        labels = r.integers(0, 3, size=n).astype(np.float32)
        examples.append({
            "query_id": f"q{i}",
            "doc_ids": [f"d{i * n + k}" for k in range(n)],
            "labels": labels,
            "label_mask": np.ones(n, bool),
            "mask": np.ones(n, bool),
            "teacher_scores": (labels[None] + r.normal(size=(teachers, n))).astype(np.float32),
        })
    return queries, docs, examples


def featurize(q_texts, d_texts):
    """Texts -> [B, n, TEXT_LEN] ids (query chars then doc chars, hashed into the vocabulary)."""
    def ids(q, d):
        chars = (q + "|" + d)[: TEXT_LEN * 3: 3] if (q or d) else ""
        out = [1 + (ord(c) % (VOCAB - 1)) for c in chars]
        return out + [0] * (TEXT_LEN - len(out))

    arr = np.array([[ids(q, d) for d in row] for q, row in zip(q_texts, d_texts)], np.int32)
    return {"input_ids": arr, "attention_mask": (arr > 0).astype(np.int32)}


def tiny_ranker(dropout: float = 0.1, seed: int = 0):
    from pile_jax.train.loop import Ranker

    model = TinyScorer(dropout=dropout)
    params = init_params(model, {"input_ids": np.ones((1, 2, TEXT_LEN), np.int32),
                                 "attention_mask": np.ones((1, 2, TEXT_LEN), np.int32)}, seed=seed)
    return Ranker(params=jax.device_get(params), score_fn=make_score_fn(model), featurize=featurize)


class PoisonedSource:
    """A list of examples whose items at ``poison`` indices get a NaN teacher score (a non-finite
    batch wherever one of them is read); ``on_read(i)`` is called for every index read."""

    def __init__(self, examples, poison=(), on_read=None):
        self.examples, self.poison, self.on_read = examples, set(poison), on_read

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        if self.on_read is not None:
            self.on_read(i)
        ex = dict(self.examples[i])
        if i in self.poison:
            ts = np.array(ex["teacher_scores"], np.float32)
            ts[0, 1] = np.nan
            ex["teacher_scores"] = ts
        return ex


# pointwise_mse pins the score offset: with shift-invariant losses only, the last layer's bias
# gets float-noise gradients that Adam scales up to full-size steps, so parallel modes would differ.
TINY_OBJECTIVE = {"label_losses": {"pointwise_mse": 0.5, "pairwise_logistic": 1.0},
                  "distill_losses": {"margin_mse": 0.5}, "ensemble": {"name": "mean"}}
