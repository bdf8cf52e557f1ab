"""Reranker: a ready-to-use cross-encoder scorer with a sentence-transformers-like API.

    rr = Reranker.from_pretrained("all-MiniLM-L6-v2", num_layers=None, max_length=256)
    scores = rr.predict([(query, doc), ...], batch_size=64)   # np.float32 [N], input order
    rr.rank(query, docs, top_k=10)                              # [{"corpus_id", "score"}, ...]
    rr.save_pretrained("out/")                                  # HF folder + tokenizer

``predict`` tokenises every unique text once, sorts pairs by token length, assembles each batch
from ids padded to a bucket length and the last batch to the full ``batch_size`` (static shapes:
at most one compilation per bucket; :func:`pile_jax.scoring.map_sorted`), runs a jit-compiled ``CrossEncoder`` and returns one raw logit per pair
(``[N, num_labels]`` when ``num_labels > 1``). A single ``(query, document)`` tuple gives a 0-d array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from .config import EncoderConfig
from .cross_encoder import CrossEncoder
from .hf_io import export_pretrained, load_pretrained
from .hub import resolve_model_path
from .tokenize import DEFAULT_BUCKETS, PairTokenizer

__all__ = ["Reranker"]


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
    def from_pretrained(cls, path, num_layers: int | None = None, max_length: int = 256,
                        dtype: str = "float32", *, max_query_length: int = 64, num_labels: int = 1,
                        seed: int = 0, buckets: Sequence[int] = DEFAULT_BUCKETS) -> "Reranker":
        """Load weights + tokenizer from a local HF folder (or a name ``resolve_model_path`` knows)."""
        folder = resolve_model_path(path)
        config, params = load_pretrained(folder, num_layers=num_layers, num_labels=num_labels, dtype=dtype,
                                         seed=seed)
        limit = config.max_position_embeddings - config.position_offset
        if max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the {limit} positions of {folder}")
        tok = PairTokenizer(folder, max_length=max_length, max_query_length=max_query_length, buckets=buckets)
        return cls(config, params, tok)

    def predict(self, pairs, batch_size: int = 64, show_progress_bar: bool = False) -> np.ndarray:
        """One float32 logit per ``(query, document)`` pair, in input order."""
        single = isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        if single:
            pairs = [pairs]
        pairs = list(pairs)
        for i, p in enumerate(pairs):
            if len(p) != 2:
                raise ValueError(f"pairs[{i}] must be a (query, document) pair, got {len(p)} items")
        out_shape = (len(pairs),) if self.config.num_labels == 1 else (len(pairs), self.config.num_labels)
        scores = np.zeros(out_shape, np.float32)
        if not pairs:
            return scores
        from pile_jax.scoring import map_sorted, pair_batches

        lengths, make_batch = pair_batches(self.tokenizer, pairs)   # each unique text tokenised once

        def run(arrays):   # groups of one pair -> rows
            return self._score(self.params, *(arrays[k][:, 0] for k in ("input_ids", "attention_mask", "token_type_ids")))

        scores[:] = map_sorted(lengths, batch_size, make_batch, run,
                               tail=out_shape[1:], progress="Scoring" if show_progress_bar else None,
                               distributed=False)
        return scores[0] if single else scores

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False, batch_size: int = 64) -> list:
        """Documents sorted by score: ``[{"corpus_id", "score"(, "text")}]`` (best first)."""
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [dict(corpus_id=int(i), score=float(scores[i]), **({"text": documents[i]} if return_documents else {}))
                for i in order]

    def save_pretrained(self, path) -> Path:
        """Write a Hugging Face folder (weights, config, tokenizer) via ``export_pretrained``."""
        return export_pretrained(self.params, self.config, path, tokenizer=self.tokenizer.tokenizer)
