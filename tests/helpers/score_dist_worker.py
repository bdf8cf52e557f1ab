"""One process of the two-process scoring test (tests/test_scoring.py).

Usage: python score_dist_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Scores the pairs of :func:`pairs` with :func:`pile_jax.scoring.score_pairs` (this process's
batches on its 2 devices, then all-gathered) and writes OUT_DIR/p{ID}.npy. Then (issue 19):
builds a train collate with a token store folder OUT_DIR/tokens (only process 0 may tokenise;
the calls are counted in OUT_DIR/p{ID}_tokenised.json), and a frozen document index over
:data:`INDEX_DOCS` documents, distributed, after process 1 alone encoded the first 10 locally
(different local caches); its vectors go to OUT_DIR/p{ID}_index.npy.
"""

import os
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def ranker():
    """MiniLM's pair featuriser + a position-weighted token checksum as the 'model' (exact in
    float32, independent of padding and batch composition)."""
    from pile_jax.models.tokenize import PairTokenizer
    from pile_jax.train.loop import Ranker

    tok = PairTokenizer("all-MiniLM-L6-v2", max_length=64, max_query_length=16)

    def score_fn(params, batch, *, rng=None, train=False):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        pos = jnp.arange(ids.shape[-1]) + 1
        s = jnp.sum((ids % 97) * mask * (pos % 13) + batch["token_type_ids"], axis=-1)
        return params["w"] * s.astype(jnp.float32)

    return Ranker(params={"w": jnp.float32(1.0)}, score_fn=score_fn, featurize=tok.featurize,
                  meta={"features": tok})


def pairs():
    from pile_jax.data import load_collection

    coll = load_collection("cranfield")
    rng = np.random.default_rng(5)
    qids, dids = list(coll.queries), list(coll.docs)
    return [(coll.queries[qids[i]], coll.docs[dids[j]])
            for i, j in zip(rng.integers(0, len(qids), 150), rng.integers(0, len(dids), 150))]


INDEX_DOCS = 40


def index_features():
    from pile_jax.models.frozen_docs import FrozenDocFeatures

    return FrozenDocFeatures("all-MiniLM-L6-v2", doc_layers=1, max_query_length=8, max_doc_length=24)


def index_texts():
    from pile_jax.data import load_collection

    coll = load_collection("cranfield")
    return [coll.docs[d] for d in list(coll.docs)[:INDEX_DOCS]]


def tokens_and_index(r, pid, out):
    import json

    from pile_jax.data import load_collection
    from pile_jax.scoring import make_collate

    coll = load_collection("cranfield")
    feats = r.meta["features"]
    calls = []
    real = feats.tokenize_texts
    feats.tokenize_texts = lambda *a, **k: calls.append(len(a[0])) or real(*a, **k)
    collate = make_collate(r, coll.queries, coll.docs, store_dir=os.path.join(out, "tokens"))
    with open(os.path.join(out, f"p{pid}_tokenised.json"), "w") as f:
        json.dump({"calls": calls, "docs": len(collate.doc_store), "doc_tokens": int(collate.doc_store.tokens.sum())}, f)

    f = index_features()
    texts = index_texts()
    store = f.tokenize_texts(texts, [str(i) for i in range(len(texts))])
    if pid == 1:
        f.index_documents(store, np.arange(10), distributed=False)   # this process's own cache only
    f.index_documents(store, distributed=True)
    np.save(os.path.join(out, f"p{pid}_index.npy"), f.index.vectors(store, np.arange(len(texts))))


def main():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from pile_jax.scoring import score_pairs
    from pile_jax.train import maybe_initialize_distributed

    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    assert maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60)
    assert jax.process_count() == nproc and jax.local_device_count() == 2
    r = ranker()
    scores = score_pairs(r, r.params, pairs(), batch_size=16)   # distributed by default on 2 processes
    np.save(os.path.join(out, f"p{pid}.npy"), scores)
    tokens_and_index(r, pid, out)


if __name__ == "__main__":
    main()
