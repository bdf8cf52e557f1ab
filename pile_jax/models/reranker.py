"""Reranker: a ready-to-use cross-encoder scorer with a sentence-transformers-like API.

    rr = Reranker.from_pretrained("cross-encoder/ms-marco-MiniLM-L6-v2")  # folder, hub id (local cache)
    scores = rr.predict([(query, doc), ...], batch_size=64)   # np.float32 [N], input order
    rr.rank(query, docs, top_k=10)                              # [{"corpus_id", "score"}, ...]
    rr.save_pretrained("out/")                                  # HF folder + tokenizer

``predict`` tokenises every unique text once, sorts pairs by token length, assembles each batch
from ids padded to a bucket length and the last batch to the full ``batch_size`` (static shapes:
at most one compilation per bucket; :func:`pile_jax.parallel.map_sorted`), runs a jit-compiled
``CrossEncoder`` and returns one raw logit per pair
(``[N, num_labels]`` when ``num_labels > 1``). A single ``(query, document)`` tuple gives a 0-d array.
``predict`` and ``rank`` take sentence-transformers' ``CrossEncoder`` options (``activation_fn``,
``apply_softmax``, ``show_progress_bar``, ``convert_to_numpy``; ``rank``: ``top_k``,
``return_documents``) with the same meaning; by default the scores are the raw logits, which
is also what an exported folder declares to sentence-transformers (``activation_fn = Identity``).

A checkpoint without a score head (a bi-encoder such as all-MiniLM-L6-v2) cannot score: that
is a ``ValueError`` unless ``from_pretrained(..., new_head=True)`` asks for a new (random,
untrained) head, e.g. to fine-tune it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from .config import EncoderConfig
from .cross_encoder import CrossEncoder
from .hf_io import export_pretrained, load_pretrained
from .hub import resolve_model_path
from .tokenize import DEFAULT_BUCKETS, DEFAULT_MAX_LENGTH, DEFAULT_MAX_QUERY_LENGTH, PairTokenizer

__all__ = ["Reranker"]

log = logging.getLogger(__name__)


class Reranker:
    """``(config, params, tokenizer)`` bundled with a jit-compiled scoring function."""

    def __init__(self, config: EncoderConfig, params, tokenizer: PairTokenizer):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.model = CrossEncoder(config)
        model = self.model

        def score(params, input_ids, attention_mask, token_type_ids):
            return model.apply({"params": params}, input_ids, attention_mask, token_type_ids)

        self._score = jax.jit(score)

    @classmethod
    def from_pretrained(cls, path, num_layers: int | None = None, max_length: int = DEFAULT_MAX_LENGTH,
                        dtype: str = "float32", *, max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                        num_labels: int = 1,
                        seed: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS, new_head: bool = False,
                        attention_impl: Optional[str] = None) -> "Reranker":
        """Load weights + tokenizer from a local HF folder, a hub id in the local Hugging Face cache,
        or a name ``resolve_model_path`` knows. A checkpoint without a score head is a ``ValueError``
        unless ``new_head=True`` (a new head from ``seed``, untrained: for fine-tuning, not scoring)."""
        folder = resolve_model_path(path)
        config, params = load_pretrained(folder, num_layers=num_layers, num_labels=num_labels, dtype=dtype,
                                         seed=seed, new_head=bool(new_head), attention_impl=attention_impl)
        limit = config.max_position_embeddings - config.position_offset
        if max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the {limit} positions of {folder}")
        tok = PairTokenizer(folder, max_length=max_length, max_query_length=max_query_length, buckets=buckets)
        return cls(config, params, tok)

    def predict(self, pairs, batch_size: int = 64, show_progress_bar: Optional[bool] = None,
                activation_fn: Optional[Callable] = None, apply_softmax: bool = False,
                convert_to_numpy: bool = True):
        """One float32 score per ``(query, document)`` pair, in input order (sentence-transformers'
        ``CrossEncoder.predict`` options).

        ``activation_fn``: applied to the logits ``[N]`` / ``[N, labels]`` (None = identity: raw
        logits); a callable on a float32 NumPy array or a torch module such as
        ``torch.nn.Sigmoid()``. ``apply_softmax``: softmax over the labels after the activation
        (only when ``num_labels > 1``). ``convert_to_numpy=False`` returns a list (Python floats, or
        one NumPy row per pair). ``show_progress_bar=None`` shows a bar when this module's logger
        is at INFO or DEBUG.
        """
        single = isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        if single:
            pairs = [pairs]
        pairs = list(pairs)
        for i, p in enumerate(pairs):
            if len(p) != 2:
                raise ValueError(f"pairs[{i}] must be a (query, document) pair, got {len(p)} items")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if show_progress_bar is None:
            show_progress_bar = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        out_shape = (len(pairs),) if self.config.num_labels == 1 else (len(pairs), self.config.num_labels)
        scores = np.zeros(out_shape, np.float32)
        if pairs:
            from pile_jax.parallel import map_sorted

            from .tokenize import pair_batches

            lengths, make_batch = pair_batches(self.tokenizer, pairs)   # each unique text tokenised once

            def run(arrays):   # groups of one pair -> rows
                return self._score(self.params, *(arrays[k][:, 0] for k in ("input_ids", "attention_mask",
                                                                             "token_type_ids")))

            scores[:] = map_sorted(lengths, batch_size, make_batch, run,
                                   tail=out_shape[1:], progress="Scoring" if show_progress_bar else None,
                                   distributed=False)
        scores = _postprocess(scores, activation_fn, apply_softmax)
        if single:
            return scores[0] if convert_to_numpy else (scores[0].tolist() if scores.ndim > 1 else float(scores[0]))
        if convert_to_numpy:
            return scores
        return [float(x) for x in scores] if scores.ndim == 1 else list(scores)

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False, batch_size: int = 64, show_progress_bar: Optional[bool] = None,
             activation_fn: Optional[Callable] = None, apply_softmax: bool = False,
             convert_to_numpy: bool = True) -> list:
        """Documents sorted by score, best first: ``[{"corpus_id": i, "score": s(, "text": d)}]``
        (``corpus_id`` = index into ``documents``; ties keep input order), the ``top_k`` best when
        given; the shape of sentence-transformers' ``CrossEncoder.rank``. Scores as in
        :meth:`predict` (``convert_to_numpy`` is accepted for signature parity; scores are floats)."""
        if self.config.num_labels != 1:
            raise ValueError(f"rank needs one score per pair; this model has num_labels={self.config.num_labels}")
        documents = list(documents)
        scores = np.asarray(self.predict([(query, d) for d in documents], batch_size=batch_size,
                                         show_progress_bar=show_progress_bar, activation_fn=activation_fn,
                                         apply_softmax=apply_softmax), np.float32).reshape(-1)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [dict(corpus_id=int(i), score=float(scores[i]), **({"text": documents[i]} if return_documents else {}))
                for i in order]

    def save_pretrained(self, path) -> Path:
        """Write a Hugging Face folder (weights, config, tokenizer) via ``export_pretrained``."""
        return export_pretrained(self.params, self.config, path, tokenizer=self.tokenizer.tokenizer)


def _postprocess(logits: np.ndarray, activation_fn: Optional[Callable], apply_softmax: bool) -> np.ndarray:
    """``activation_fn`` (NumPy callable or torch module) then, for ``[N, labels>1]``, a softmax."""
    scores = logits
    if activation_fn is not None:
        torch = _torch_if_module(activation_fn)
        if torch is not None:
            with torch.no_grad():
                scores = activation_fn(torch.from_numpy(np.ascontiguousarray(scores))).float().numpy()
        else:
            scores = activation_fn(scores)
        scores = np.asarray(scores, np.float32)
        if scores.shape != logits.shape:
            raise ValueError(f"activation_fn changed the score shape {logits.shape} -> {scores.shape}")
    if apply_softmax and scores.ndim == 2 and scores.shape[1] > 1:
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return scores


def _torch_if_module(fn):
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(fn, torch.nn.Module):
        return torch
    return None
