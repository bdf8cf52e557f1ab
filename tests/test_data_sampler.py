"""The batch order contract (pile_jax.data.sampler): documented permutation, exactly-once per
epoch, length-aware windows, disjoint process slices, padding rows."""

import numpy as np
import pytest

from pile_jax.data.sampler import (
    PAD_INDEX,
    check_batching,
    epoch_batches,
    padding_record,
    process_slice,
    stack_records,
    steps_per_epoch,
)


def test_plain_order_is_the_documented_permutation():
    for epoch in range(3):
        got = epoch_batches(50, 8, seed=7, epoch=epoch)
        ref = np.random.default_rng([7, epoch]).permutation(50)[:48].reshape(6, 8)
        np.testing.assert_array_equal(got, ref)
    assert steps_per_epoch(50, 8) == 6 and steps_per_epoch(50, 8, drop_remainder=False) == 7


def test_deterministic_seed_dependent_and_reshuffled_per_epoch():
    a = epoch_batches(50, 8, seed=3, epoch=0)
    assert np.array_equal(a, epoch_batches(50, 8, seed=3, epoch=0))
    assert not np.array_equal(a, epoch_batches(50, 8, seed=4, epoch=0))
    assert not np.array_equal(a, epoch_batches(50, 8, seed=3, epoch=1))


def test_no_shuffle_no_drop_remainder_pads_the_last_batch():
    got = epoch_batches(10, 4, seed=0, epoch=0, shuffle=False, drop_remainder=False)
    assert got.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, PAD_INDEX, PAD_INDEX]]


def _reference_length_aware(N, B, seed, epoch, lengths, window, drop_remainder=True):
    """The contract re-derived with plain Python sorting."""
    perm = np.random.default_rng([seed, epoch]).permutation(N).tolist()
    S = N // B if drop_remainder else -(-N // B)
    perm = (perm + [PAD_INDEX] * (S * B - N))[:S * B]
    big = max(lengths) + 1
    out = []
    for w in range(0, S * B, window * B):
        chunk = perm[w:w + window * B]
        chunk = [i for _, _, i in sorted((lengths[i] if i >= 0 else big, pos, i) for pos, i in enumerate(chunk))]
        out += [chunk[k:k + B] for k in range(0, len(chunk), B)]
    order = np.random.default_rng([seed, epoch, 1]).permutation(S)
    return [out[s] for s in order]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_length_aware_matches_the_contract_and_keeps_exactly_once(drop_remainder):
    N, B, window = 103, 8, 3
    lengths = np.random.default_rng(1).integers(5, 300, size=N)
    for epoch in range(3):
        got = epoch_batches(N, B, seed=5, epoch=epoch, lengths=lengths, window=window,
                            drop_remainder=drop_remainder)
        ref = _reference_length_aware(N, B, 5, epoch, lengths.tolist(), window, drop_remainder)
        assert got.tolist() == ref
        # the same groups as the plain order of this epoch (the same ones dropped), each once
        plain = epoch_batches(N, B, seed=5, epoch=epoch, drop_remainder=drop_remainder)
        assert sorted(got.ravel().tolist()) == sorted(plain.ravel().tolist())
        real = got[got >= 0]
        assert len(set(real.tolist())) == len(real) == (N // B * B if drop_remainder else N)
    if not drop_remainder:  # padding sorts last in its window: all in one batch
        assert sum((row == PAD_INDEX).any() for row in got) == 1


def test_length_aware_batches_hold_similar_lengths():
    N, B = 256, 8
    lengths = np.random.default_rng(0).integers(1, 1000, size=N)
    aware = epoch_batches(N, B, seed=0, epoch=0, lengths=lengths, window=N // B)
    plain = epoch_batches(N, B, seed=0, epoch=0)
    spread = lambda bs: np.mean([lengths[b].max() - lengths[b].min() for b in bs])
    # one window over the whole epoch = fully sorted: the spread per batch is tiny
    assert spread(aware) < 0.1 * spread(plain)
    # equal lengths: the same batches as the plain order, only their order changes
    same = epoch_batches(N, B, seed=0, epoch=0, lengths=np.zeros(N, np.int64), window=4)
    assert sorted(map(tuple, same.tolist())) == sorted(map(tuple, plain.tolist()))


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_process_slices_are_disjoint_and_concatenate_to_the_global_batch(P):
    batches = epoch_batches(40, 12, seed=5, epoch=2, lengths=np.arange(40) % 7, window=2)
    parts = [process_slice(batches, p, P) for p in range(P)]
    assert all(part.shape == (3, 12 // P) for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), batches)
    for s in range(3):
        flat = np.concatenate([part[s] for part in parts])
        assert len(set(flat.tolist())) == 12


def test_invalid_arguments():
    with pytest.raises(ValueError, match="divisible"):
        check_batching(10, 5, seed=0, process_count=2)
    with pytest.raises(ValueError, match="no batch"):
        check_batching(3, 4, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        check_batching(10, 2, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        check_batching(10, 2, seed=-1)
    with pytest.raises(ValueError, match="lengths has shape"):
        epoch_batches(10, 2, seed=0, epoch=0, lengths=np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="window"):
        epoch_batches(10, 2, seed=0, epoch=0, lengths=np.zeros(10, np.int64), window=0)


def test_stack_records_and_padding_record():
    records = [{"query_id": f"q{i}".encode(), "doc_ids": [b"a", b"b"], "x": np.full(2, i, np.float32),
                "mask": np.array([True, True])} for i in range(2)]
    pad = padding_record(records[0])
    assert pad["query_id"] == "" and pad["doc_ids"] == ["", ""]
    np.testing.assert_array_equal(pad["mask"], [False, False])
    batch = stack_records(records + [pad])
    assert batch["query_id"] == ["q0", "q1", ""]
    assert batch["doc_ids"].tolist() == [["a", "b"], ["a", "b"], ["", ""]]
    np.testing.assert_array_equal(batch["x"], [[0, 0], [1, 1], [0, 0]])
    assert batch["x"].dtype == np.float32
