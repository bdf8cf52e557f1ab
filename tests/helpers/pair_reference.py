"""The former per-pair tokenisation path, kept as the independent reference of the parity tests."""

from __future__ import annotations

import numpy as np

DEFAULT_BUCKETS = (32, 64, 128, 192, 256, 384, 512)


def reference_encode(hf_tok, queries, docs, *, max_length, max_query_length, buckets=DEFAULT_BUCKETS):
    """The former per-pair path: encode content, truncate each Encoding, post_process each pair,
    pad to the smallest bucket >= the longest pair."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    num_special = hf_tok.num_special_tokens_to_add(pair=True)
    mq = min(max_query_length, max_length - num_special - 1)
    rows = []
    for q, d in zip(backend.encode_batch(list(queries), add_special_tokens=False),
                    backend.encode_batch(list(docs), add_special_tokens=False)):
        if len(q.ids) > mq:
            q.truncate(mq)
        budget = max_length - num_special - len(q.ids)
        if len(d.ids) > budget:
            d.truncate(budget)
        pair = backend.post_process(q, d, add_special_tokens=True)
        rows.append((pair.ids, pair.type_ids))
    longest = max(len(i) for i, _ in rows)
    L = min(b for b in [*[b for b in buckets if b < max_length], max_length] if b >= longest)
    ids = np.full((len(rows), L), hf_tok.pad_token_id, np.int32)
    mask = np.zeros((len(rows), L), np.int32)
    types = np.zeros((len(rows), L), np.int32)
    for r, (i, t) in enumerate(rows):
        ids[r, :len(i)], mask[r, :len(i)], types[r, :len(t)] = i, 1, t
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
