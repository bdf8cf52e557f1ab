"""pile_jax.caches.BoundedCache: the process caches' owner, bound and LRU order (issue 18)."""

import pytest

from pile_jax.caches import BoundedCache, all_caches


def test_bounded_cache_keeps_at_most_maxsize_and_drops_the_least_recently_used():
    c = BoundedCache("tests", "lru", maxsize=2)
    made = []
    make = lambda k: (lambda: made.append(k) or f"v{k}")  # noqa: E731
    assert c.get_or_make(1, make(1)) == "v1"
    assert c.get_or_make(2, make(2)) == "v2"
    assert c.get_or_make(1, make(1)) == "v1"      # kept: not made again, now most recent
    assert c.get_or_make(3, make(3)) == "v3"      # evicts 2, the least recently used
    assert made == [1, 2, 3]
    assert len(c) == 2 and 1 in c and 3 in c and 2 not in c
    assert c.get(2, "absent") == "absent"
    with pytest.raises(KeyError):
        c[2]
    assert sorted(c) == [1, 3]
    c.clear()
    assert len(c) == 0


def test_the_library_caches_have_owners_and_bounds():
    import pile_jax.models.frozen_docs  # noqa: F401
    import pile_jax.rankers  # noqa: F401
    import pile_jax.study  # noqa: F401
    import pile_jax.train.loop  # noqa: F401

    named = {(c.owner, c.name): c.maxsize for c in all_caches()}
    for owner, name in [("pile_jax.parallel", "scorers"), ("pile_jax.train.loop", "train_steps"),
                        ("pile_jax.rankers", "student_parts"), ("pile_jax.study", "intermediate_score_fns"),
                        ("pile_jax.models.frozen_docs", "text_vectors")]:
        assert 1 <= named[(owner, name)] <= 64


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        BoundedCache("tests", "bad", maxsize=0)
