"""The grain training loader: the documented order, process shards, exact resume through a JSON
checkpoint, prefetch = no prefetch, errors from the background thread, length-aware padding on
real Cranfield groups, device prefetch."""

import json
import threading

import numpy as np
import pytest

from pile_jax.data.loader import DevicePrefetch, make_train_loader


def _records(N, n=3):
    return [{"query_id": f"q{i}", "doc_ids": [f"d{i}_{j}" for j in range(n)], "gid": np.int64(i),
             "mask": np.ones(n, bool)} for i in range(N)]


def _gids(loader, k):
    return [loader.next_batch()["gid"].tolist() for _ in range(k)]


def _plain(N, B, seed, epoch, drop=True):
    """The documented plain order, re-derived: rng([seed, epoch]).permutation(N) cut into B."""
    perm = np.random.default_rng([seed, epoch]).permutation(N).tolist()
    S = N // B if drop else -(-N // B)
    perm = (perm + [-1] * S * B)[:S * B]
    return [perm[s * B:(s + 1) * B] for s in range(S)]


def test_yields_the_documented_order_epoch_after_epoch():
    N, B = 23, 4
    loader = make_train_loader(_records(N), global_batch_size=B, seed=9)
    assert loader.steps_per_epoch == 5
    got = _gids(loader, 3 * 5)
    ref = [b for e in range(3) for b in _plain(N, B, 9, e)]
    assert got == ref
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["step_in_epoch"] == 0
    loader.close()


def test_drop_remainder_false_pads_with_masked_rows():
    loader = make_train_loader(_records(5), global_batch_size=4, seed=0, shuffle=False,
                               drop_remainder=False)
    loader.next_batch()
    b = loader.next_batch()
    assert b["gid"].tolist() == [4, 0, 0, 0] and b["query_id"] == ["q4", "", "", ""]
    np.testing.assert_array_equal(b["mask"], [[1, 1, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert b["doc_ids"][1].tolist() == ["", "", ""]
    loader.close()


@pytest.mark.parametrize("length_aware", [False, True])
def test_process_shards_disjoint_and_cover_the_same_global_batch_for_any_process_count(length_aware):
    N, B, steps = 50, 12, 9  # 4 steps per epoch: crosses two epoch boundaries
    lengths = np.random.default_rng(0).integers(1, 50, size=N) if length_aware else None
    kw = dict(global_batch_size=B, seed=5, lengths=lengths, length_aware=length_aware, window=2)
    one = _gids(make_train_loader(_records(N), **kw), steps)
    for P in (2, 3, 4):
        parts = [_gids(make_train_loader(_records(N), process_index=p, process_count=P, **kw), steps)
                 for p in range(P)]
        for s in range(steps):
            flat = [g for p in range(P) for g in parts[p][s]]
            assert all(len(parts[p][s]) == B // P for p in range(P))
            assert flat == one[s] and len(set(flat)) == B
    if not length_aware:
        assert one == [b for e in range(3) for b in _plain(N, B, 5, e)][:steps]


@pytest.mark.parametrize("stop", [3, 7, 10])  # mid-epoch, at the epoch boundary, mid-epoch 2
def test_resume_through_a_json_checkpoint_equals_uninterrupted(stop):
    N, B = 29, 4  # 7 steps per epoch
    lengths = np.random.default_rng(2).integers(1, 100, size=N)
    kw = dict(global_batch_size=B, seed=11, lengths=lengths, process_index=1, process_count=2, prefetch=3)
    expected = _gids(make_train_loader(_records(N), **kw), 20)
    first = make_train_loader(_records(N), **kw)
    head = _gids(first, stop)  # the prefetch has run ahead of `stop`: the state must not
    state = json.loads(json.dumps(first.state_dict()))  # what orbax's JsonSave keeps
    first.close()
    assert (state["epoch"], state["step_in_epoch"]) == divmod(stop, 7)
    resumed = make_train_loader(_records(N), **kw)
    resumed.load_state_dict(state)
    assert head + _gids(resumed, 20 - stop) == expected
    # the older sampler's state (no "order", lazy epoch rollover) loads too
    old = make_train_loader(_records(N), **kw)
    old.load_state_dict({"epoch": 0, "step_in_epoch": 7})
    assert _gids(old, 2) == expected[7:9]
    # a state of another order is refused; a different process count is fine (same global order)
    other = make_train_loader(_records(N), **{**kw, "seed": 12})
    with pytest.raises(ValueError, match="another batch order"):
        other.load_state_dict(state)
    single = make_train_loader(_records(N), **{**kw, "process_index": 0, "process_count": 1})
    single.load_state_dict(state)
    assert single.next_batch()["gid"].tolist()[2:] == expected[stop]
    for bad in ({"epoch": 0}, {"epoch": 0, "step_in_epoch": 8}, {"epoch": -1, "step_in_epoch": 0}):
        with pytest.raises(ValueError):
            single.load_state_dict(bad)


def test_prefetch_yields_the_same_sequence_and_builds_in_the_background():
    N, B = 31, 4
    lengths = np.arange(N) % 5
    threads = []

    def collate(records):
        threads.append(threading.current_thread() is threading.main_thread())
        return {"gid": np.array([r["gid"] for r in records])}

    ref = _gids(make_train_loader(_records(N), global_batch_size=B, seed=1, lengths=lengths,
                                  collate=collate, prefetch=0), 17)
    assert all(threads)  # prefetch=0: built in the caller's thread
    threads.clear()
    for prefetch, num_threads in ((1, 1), (4, 2)):
        loader = make_train_loader(_records(N), global_batch_size=B, seed=1, lengths=lengths,
                                   collate=collate, prefetch=prefetch, num_threads=num_threads)
        assert _gids(loader, 17) == ref
        loader.close()
    assert threads and not any(threads)  # prefetch > 0: built in grain's worker threads


def test_error_in_the_background_thread_surfaces_with_its_message():
    N, B = 12, 4
    order = [b for e in range(2) for b in _plain(N, B, 0, e)]
    bad = order[2][1]  # a group of the third batch

    def collate(records):
        for r in records:
            if int(r["gid"]) == bad:
                raise ValueError(f"group {bad}: doc_ids[2] is not a known document")
        return {"gid": np.array([r["gid"] for r in records])}

    loader = make_train_loader(_records(N), global_batch_size=B, seed=0, collate=collate, prefetch=3)
    assert _gids(loader, 2) == order[:2]
    with pytest.raises(ValueError, match=f"group {bad}: doc_ids\\[2\\] is not a known document") as info:
        loader.next_batch()
    assert any("batch 2 of epoch 0" in note for note in getattr(info.value, "__notes__", []))
    assert loader.state_dict()["step_in_epoch"] == 2  # the failed batch was not consumed
    with pytest.raises(ValueError, match="not a known document"):  # a retry fails the same way
        loader.next_batch()
    loader.close()


def test_group_lengths_of_the_collate_function_make_batches_length_aware():
    N, B = 40, 4
    want = np.random.default_rng(3).integers(1, 500, size=N)
    seen = {}

    def collate(records):
        return {"gid": np.array([r["gid"] for r in records])}

    def group_lengths(query_ids, doc_ids):
        seen["args"] = (list(query_ids), np.asarray(doc_ids))
        return np.array([want[int(q[1:])] for q in query_ids])

    collate.group_lengths = group_lengths
    loader = make_train_loader(_records(N), global_batch_size=B, seed=0, collate=collate)
    qids, dids = seen["args"]
    assert qids == [f"q{i}" for i in range(N)] and dids.shape == (N, 3) and dids[5, 2] == "d5_2"
    np.testing.assert_array_equal(loader.lengths, want)
    # window 16 x B = 64 >= N: one sorted window, so every batch is a run of the sorted lengths
    batches = _gids(loader, N // B)
    runs = sorted(sorted(want[b].tolist()) for b in batches)
    assert runs == [sorted(want.tolist())[k:k + B] for k in range(0, N, B)]
    plain = make_train_loader(_records(N), global_batch_size=B, seed=0, collate=collate, length_aware=False)
    assert plain.lengths is None and _gids(plain, 3) == _plain(N, B, 0, 0)[:3]


def test_collate_with_a_length_keyword_gets_the_global_batch_length_on_every_process():
    N, B, P = 30, 6, 3
    lengths = np.random.default_rng(5).integers(1, 400, size=N)
    ref = make_train_loader(_records(N), global_batch_size=B, seed=2, lengths=lengths)
    expected = [int(lengths[g].max()) for g in _gids(ref, 8)]

    def collate(records, length=None):
        return {"gid": np.array([r["gid"] for r in records]), "length": length}

    for p in range(P):
        loader = make_train_loader(_records(N), global_batch_size=B, seed=2, lengths=lengths,
                                   process_index=p, process_count=P, collate=collate)
        got = [loader.next_batch()["length"] for _ in range(8)]
        assert got == expected  # the global batch's longest group, not this process's
        loader.close()
    no_lengths = make_train_loader(_records(N), global_batch_size=B, seed=2, collate=collate)
    assert no_lengths.next_batch()["length"] is None  # called without it when lengths are unknown


def test_length_aware_batches_pad_less_on_real_cranfield_groups():
    """Groups = each train query's judged documents (up to n = 8, the rest padding slots); a pair's
    length = whitespace tokens of query + document; a batch pads every slot to its longest group."""
    from pile_jax.data import load_collection

    coll = load_collection("cranfield")
    qids, n, B = coll.split_qids("train"), 8, 8
    pair_len = np.zeros((len(qids), n), np.int64)
    records = []
    for g, q in enumerate(qids):
        docs = sorted(coll.qrels[q])[:n]
        for j, d in enumerate(docs):
            pair_len[g, j] = len(coll.queries[q].split()) + len(coll.docs[d].split())
        records.append({"query_id": q, "doc_ids": docs + [""] * (n - len(docs)), "gid": np.int64(g)})
    group_len = pair_len.max(1)

    def padding(length_aware):
        loader = make_train_loader(records, global_batch_size=B, seed=0, lengths=group_len,
                                   length_aware=length_aware)
        padded = real = 0
        seen = []
        for _ in range(5 * loader.steps_per_epoch):
            b = loader.next_batch()["gid"]
            seen += b.tolist()
            padded += B * n * group_len[b].max() - pair_len[b].sum()
            real += pair_len[b].sum()
        loader.close()
        S = loader.steps_per_epoch
        assert all(len(set(seen[e * S * B:(e + 1) * S * B])) == S * B for e in range(5))  # once per epoch
        return padded / real

    random, aware = padding(False), padding(True)
    assert random > 1.5  # judged groups of Cranfield: ~1.9 padded tokens per real token at random
    assert aware < 0.65 * random  # ~1.13 with length-aware batches


def test_device_prefetch_keeps_the_state_of_the_batch_returned():
    import jax.numpy as jnp

    N, B = 21, 4
    kw = dict(global_batch_size=B, seed=4, lengths=np.arange(N) % 3)
    ref = _gids(make_train_loader(_records(N), **kw), 12)
    placed = []

    def place(batch):
        placed.append(1)
        return {"gid": jnp.asarray(batch["gid"])}

    dev = DevicePrefetch(make_train_loader(_records(N), **kw), place, size=2)
    got = [np.asarray(dev.next_batch()["gid"]).tolist() for _ in range(7)]
    assert len(placed) == 8  # one batch ahead on device
    state = json.loads(json.dumps(dev.state_dict()))
    assert (state["epoch"], state["step_in_epoch"]) == divmod(7, dev.steps_per_epoch)
    dev.close()
    resumed = DevicePrefetch(make_train_loader(_records(N), **kw), place, size=3)
    resumed.load_state_dict(state)
    got += [np.asarray(resumed.next_batch()["gid"]).tolist() for _ in range(5)]
    assert got == ref
    with pytest.raises(ValueError, match="size"):
        DevicePrefetch(resumed, place, size=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prefetch"):
        make_train_loader(_records(8), global_batch_size=4, seed=0, prefetch=-1)
    with pytest.raises(ValueError, match="lengths must be int"):
        make_train_loader(_records(8), global_batch_size=4, seed=0, lengths=np.zeros(7, np.int64))
    with pytest.raises(ValueError, match="no batch"):
        make_train_loader(_records(3), global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="window"):
        make_train_loader(_records(8), global_batch_size=4, seed=0, window=0)


class _DecodingSource:
    """A TFDS-like data source: strings come back as bytes, and every read is counted."""

    def __init__(self, records):
        self.records, self.reads = records, 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        self.reads += 1
        r = self.records[i]
        return dict(r, query_id=r["query_id"].encode(), doc_ids=[d.encode() for d in r["doc_ids"]])


def test_columnar_source_reads_once_and_yields_the_same_batches_as_direct_reads():
    from pile_jax.data.loader import ColumnarSource

    recs = _records(10)
    disk = _DecodingSource(recs)
    col = ColumnarSource(disk, chunk=4)
    assert disk.reads == 10 and len(col) == 10
    r = col[7]
    assert r["query_id"] == recs[7]["query_id"] and list(r["doc_ids"]) == recs[7]["doc_ids"]
    np.testing.assert_array_equal(r["gid"], recs[7]["gid"])
    with pytest.raises(IndexError):
        col[10]

    def collate(records):
        return {"qid": [r["query_id"] if isinstance(r["query_id"], str) else r["query_id"].decode() for r in records],
                "gid": np.stack([r["gid"] for r in records])}

    kw = dict(global_batch_size=4, seed=3, collate=collate, prefetch=0)
    a = make_train_loader(disk, in_memory=True, **kw)
    reads = disk.reads
    b = make_train_loader(disk, in_memory=False, **kw)
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert x["qid"] == y["qid"]
        np.testing.assert_array_equal(x["gid"], y["gid"])
    assert reads == 20 and disk.reads > reads   # the in-memory loader read the source once, at construction
