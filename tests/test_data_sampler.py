"""EpochSampler: deterministic, exactly-once per epoch, disjoint process shards, exact resume."""

import numpy as np
import pytest

from pile_jax.data.sampler import PAD_INDEX, BatchLoader, EpochSampler


def _take(sampler, k):
    return [sampler.next_indices().tolist() for _ in range(k)]


def test_deterministic_and_seed_dependent():
    a = _take(EpochSampler(50, 8, seed=3), 20)
    b = _take(EpochSampler(50, 8, seed=3), 20)
    c = _take(EpochSampler(50, 8, seed=4), 20)
    assert a == b and a != c


def test_each_example_once_per_epoch():
    s = EpochSampler(50, 8, seed=0)
    assert s.steps_per_epoch == 6
    epochs = []
    for _ in range(3):
        seen = np.concatenate(_take(s, s.steps_per_epoch))
        assert len(seen) == 48 and len(set(seen.tolist())) == 48 and seen.min() >= 0 and seen.max() < 50
        epochs.append(seen.tolist())
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert s.state_dict() == {"epoch": 2, "step_in_epoch": 6}
    # epoch e's order is the documented permutation
    np.testing.assert_array_equal(epochs[1], np.random.default_rng([0, 1]).permutation(50)[:48])


def test_no_shuffle_and_no_drop_remainder_pads():
    s = EpochSampler(10, 4, seed=0, shuffle=False, drop_remainder=False)
    assert s.steps_per_epoch == 3
    assert _take(s, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, PAD_INDEX, PAD_INDEX], [0, 1, 2, 3]]


def test_process_shards_disjoint_union_is_global_batch():
    P, B = 4, 12
    ref = EpochSampler(40, B, seed=5)
    shards = [EpochSampler(40, B, seed=5, process_index=p, process_count=P) for p in range(P)]
    for _ in range(2 * ref.steps_per_epoch + 1):
        parts = [s.next_indices() for s in shards]
        assert all(len(p) == B // P for p in parts)
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == B
        np.testing.assert_array_equal(flat, ref.next_indices())


def test_resume_mid_epoch_matches_uninterrupted():
    full = EpochSampler(37, 6, seed=11, process_index=1, process_count=2)
    expected = _take(full, 20)
    first = EpochSampler(37, 6, seed=11, process_index=1, process_count=2)
    head = _take(first, 8)  # 6 steps per epoch: stops mid-epoch 1
    state = first.state_dict()
    assert state == {"epoch": 1, "step_in_epoch": 2}
    resumed = EpochSampler(37, 6, seed=11, process_index=1, process_count=2)
    resumed.load_state_dict({k: np.int64(v) for k, v in state.items()})  # e.g. from a checkpoint
    assert head + _take(resumed, 12) == expected
    # resuming exactly at an epoch boundary
    at_end = EpochSampler(37, 6, seed=11, process_index=1, process_count=2)
    at_end.load_state_dict({"epoch": 0, "step_in_epoch": 6})
    assert _take(at_end, 3) == expected[6:9]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="divisible"):
        EpochSampler(10, 5, seed=0, process_count=2)
    with pytest.raises(ValueError, match="no batch"):
        EpochSampler(3, 4, seed=0)
    with pytest.raises(ValueError, match="process_index"):
        EpochSampler(10, 2, seed=0, process_index=2, process_count=2)
    s = EpochSampler(10, 2, seed=0)
    with pytest.raises(ValueError):
        s.load_state_dict({"epoch": 0, "step_in_epoch": 9})
    with pytest.raises(ValueError):
        s.load_state_dict({"epoch": 0})


def test_batch_loader_stacks_and_pads():
    records = [
        {"query_id": f"q{i}".encode(), "doc_ids": [b"a", b"b"], "x": np.full(2, i, np.float32),
         "mask": np.array([True, True])}
        for i in range(5)
    ]
    loader = BatchLoader(records, EpochSampler(5, 4, seed=0, shuffle=False, drop_remainder=False))
    b1 = loader.next_batch()
    assert b1["query_id"] == ["q0", "q1", "q2", "q3"]
    assert b1["doc_ids"].shape == (4, 2) and b1["doc_ids"][0].tolist() == ["a", "b"]
    np.testing.assert_array_equal(b1["x"][:, 0], [0, 1, 2, 3])
    b2 = loader.next_batch()
    assert b2["query_id"] == ["q4", "", "", ""]
    np.testing.assert_array_equal(b2["mask"], [[1, 1], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(b2["x"][1:], 0)
    assert loader.state_dict() == {"epoch": 0, "step_in_epoch": 2}
    with pytest.raises(ValueError, match="source has"):
        BatchLoader(records, EpochSampler(6, 2, seed=0))
