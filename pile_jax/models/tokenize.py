"""PairTokenizer: (query, document) pairs -> fixed-shape, length-bucketed int32 arrays.

Uses the checkpoint's own fast tokenizer (``AutoTokenizer.from_pretrained(local_folder)``) and its
special-token template (``[CLS] q [SEP] d [SEP]`` for BERT, ``<s> q </s></s> d </s>`` for RoBERTa...).

Contract of ``encode(queries, documents)``:
  * the query keeps at most ``max_query_length`` content tokens; the document keeps at most
    ``max_length - special_tokens - len(query)`` content tokens, so a pair is never longer than
    ``max_length``;
  * every row is padded (right, with the tokenizer's pad id, mask 0, type 0) to the smallest
    bucket ``>= `` the longest pair of the call; buckets are ``buckets`` clipped to
    ``max_length`` plus ``max_length`` itself, so a model sees only a few static shapes;
  * returns ``dict(input_ids, attention_mask, token_type_ids)`` of int32 ``[N, Lb]``
    (``token_type_ids`` are zeros for tokenizers without them, e.g. RoBERTa).

``bucketed_batches(lengths, batch_size)`` groups item indices into length-sorted batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["PairTokenizer", "bucketed_batches", "DEFAULT_BUCKETS"]

DEFAULT_BUCKETS = (32, 64, 128, 192, 256, 384, 512)


def bucketed_batches(lengths: Sequence[int], batch_size: int) -> list:
    """Indices grouped into batches of ``batch_size`` (the last may be shorter) after a stable
    sort by length, so every batch holds similar lengths. Returns a list of int64 arrays."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class PairTokenizer:
    """Tokenise (query, document) pairs with a query budget and bucketed padding (see module doc).

    ``tokenizer_or_path``: a transformers *fast* tokenizer, or a folder / name known to
    ``resolve_model_path``.
    """

    def __init__(self, tokenizer_or_path, *, max_length: int = 256, max_query_length: int = 64,
                 buckets: Sequence[int] = DEFAULT_BUCKETS):
        from tokenizers import Tokenizer

        if isinstance(tokenizer_or_path, (str, Path)):
            from transformers import AutoTokenizer

            from .hub import resolve_model_path

            tokenizer_or_path = AutoTokenizer.from_pretrained(str(resolve_model_path(tokenizer_or_path)))
        self.tokenizer = tokenizer_or_path
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{type(self.tokenizer).__name__} is not a fast tokenizer; PairTokenizer needs one "
                             "(a tokenizer.json in the model folder)")
        # A private copy without the truncation/padding settings some tokenizer.json files carry.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self.num_special = int(self.tokenizer.num_special_tokens_to_add(pair=True))
        self.max_length = int(max_length)
        self.max_query_length = int(max_query_length)
        if self.max_length < self.num_special + 2:
            raise ValueError(f"max_length={max_length} leaves no room for text after {self.num_special} special tokens")
        if self.max_query_length < 1:
            raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
        # The query never takes the whole budget: at least one document token always fits.
        self.max_query_length = min(self.max_query_length, self.max_length - self.num_special - 1)
        self.buckets = tuple(sorted({int(b) for b in buckets if 0 < int(b) < self.max_length} | {self.max_length}))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)

    def bucket_for(self, length: int) -> int:
        """The smallest bucket ``>= length``."""
        for b in self.buckets:
            if b >= length:
                return b
        raise ValueError(f"length {length} exceeds max_length {self.max_length}")

    def tokenize(self, queries: Sequence[str], documents: Sequence[str]) -> list:
        """Unpadded ``(ids, type_ids)`` int32 arrays per pair, truncated to the budgets."""
        queries, documents = list(queries), list(documents)
        if len(queries) != len(documents):
            raise ValueError(f"queries ({len(queries)}) and documents ({len(documents)}) differ in length")
        q_enc = self._backend.encode_batch([str(q) for q in queries], add_special_tokens=False)
        d_enc = self._backend.encode_batch([str(d) for d in documents], add_special_tokens=False)
        out = []
        for q, d in zip(q_enc, d_enc):
            if len(q.ids) > self.max_query_length:
                q.truncate(self.max_query_length)
            budget = self.max_length - self.num_special - len(q.ids)
            if len(d.ids) > budget:
                d.truncate(budget)
            pair = self._backend.post_process(q, d, add_special_tokens=True)
            out.append((np.asarray(pair.ids, np.int32), np.asarray(pair.type_ids, np.int32)))
        return out

    def pair_lengths(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """Token count of each pair after truncation (what :meth:`tokenize` gives), int64 [N];
        cheaper than tokenising (no per-pair post-processing), for sorting pairs by length."""
        q_enc = self._backend.encode_batch([str(q) for q in queries], add_special_tokens=False)
        d_enc = self._backend.encode_batch([str(d) for d in documents], add_special_tokens=False)
        q = np.minimum([len(e.ids) for e in q_enc], self.max_query_length)
        d = np.asarray([len(e.ids) for e in d_enc], np.int64)
        return q + np.minimum(d, self.max_length - self.num_special - q) + self.num_special

    def pad(self, encoded: Sequence[tuple], length: int | None = None, rows: int | None = None) -> dict:
        """Pad ``tokenize`` output to ``length`` (default: the bucket of the longest) and, optionally,
        to ``rows`` rows (extra rows are all padding, mask 0)."""
        longest = max((len(ids) for ids, _ in encoded), default=1)
        length = self.bucket_for(longest) if length is None else int(length)
        if longest > length:
            raise ValueError(f"a pair has {longest} tokens, more than the requested length {length}")
        n = len(encoded) if rows is None else int(rows)
        ids = np.full((n, length), self.pad_token_id, np.int32)
        mask = np.zeros((n, length), np.int32)
        types = np.zeros((n, length), np.int32)
        for row, (i, t) in enumerate(encoded):
            ids[row, :len(i)] = i
            mask[row, :len(i)] = 1
            types[row, :len(t)] = t
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def encode(self, queries: Sequence[str], documents: Sequence[str]) -> dict:
        """Tokenise and pad to the smallest bucket fitting the longest pair (see module docstring)."""
        return self.pad(self.tokenize(queries, documents))

    __call__ = encode
