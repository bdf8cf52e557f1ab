"""TFDS builder without TensorFlow: write ArrayRecord, read back with as_data_source, same arrays."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from pile_jax.data.groups import build_groups, take_groups  # noqa: E402
from pile_jax.data.loader import make_train_loader  # noqa: E402
from pile_jax.data.sampler import epoch_batches  # noqa: E402
from pile_jax.data.tfds_builder import (  # noqa: E402
    build_ranking_groups_dataset,
    load_ranking_groups,
    records_to_groups,
    teacher_names_of,
)


def _groups():
    rng = np.random.default_rng(0)
    qrels, cands, t1, t2 = {}, {}, {}, {}
    for q in range(7):
        qid = f"q{q}"
        docs = [f"d{q}_{i}" for i in range(3 + q)]  # 3..9 candidates: some padded, some truncated
        qrels[qid] = {docs[0]: 2, docs[1]: 0, docs[-1]: 1}
        cands[qid] = docs
        t1[qid] = {d: float(rng.normal()) for d in docs}
        t2[qid] = {d: float(rng.normal()) for d in docs}
    groups, _ = build_groups(qrels, cands, {"teacher_x": t1, "teacher_y": t2}, group_size=5,
                             unjudged="ignore")
    return groups


def _assert_same(a, b):
    assert a["query_id"] == b["query_id"]
    assert a["teacher_names"] == b["teacher_names"]
    for key in ("doc_ids", "labels", "label_mask", "mask", "teacher_scores"):
        assert a[key].dtype.kind == b[key].dtype.kind and a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_write_then_read_identical(tmp_path):
    groups = _groups()
    assert len(groups["query_id"]) == 7
    split = {"train": groups, "dev": take_groups(groups, [2, 0])}
    builder = build_ranking_groups_dataset(split, tmp_path, "toy_n5_t2")
    assert teacher_names_of(builder) == ["teacher_x", "teacher_y"]
    sources = builder.as_data_source()
    for name, expected in split.items():
        src = sources[name]
        assert len(src) == len(expected["query_id"])
        back = records_to_groups([src[i] for i in range(len(src))], teacher_names_of(builder))
        _assert_same(back, expected)

    # reopen from the folder alone (no builder class needed), then batch through the loader
    reopened = load_ranking_groups(builder.data_dir)
    src = reopened.as_data_source()["train"]
    loader = make_train_loader(src, global_batch_size=4, seed=1,
                               collate=lambda recs: records_to_groups(recs, teacher_names_of(reopened)))
    batch = loader.next_batch()
    loader.close()
    _assert_same(batch, take_groups(groups, epoch_batches(len(src), 4, seed=1, epoch=0)[0]))

    # a second call with the same groups reuses the data; different groups need overwrite=True
    build_ranking_groups_dataset(split, tmp_path, "toy_n5_t2")
    smaller = {"train": take_groups(groups, [0, 1]), "dev": split["dev"]}
    with pytest.raises(ValueError, match="overwrite=True"):
        build_ranking_groups_dataset(smaller, tmp_path, "toy_n5_t2")
    rebuilt = build_ranking_groups_dataset(smaller, tmp_path, "toy_n5_t2", overwrite=True)
    assert len(rebuilt.as_data_source()["train"]) == 2


def test_rejects_inconsistent_splits(tmp_path):
    groups = _groups()
    other, _ = build_groups({"q": {"a": 1}}, {"q": ["a", "b"]}, {}, group_size=5)
    with pytest.raises(ValueError, match="disagree"):
        build_ranking_groups_dataset({"train": groups, "dev": other}, tmp_path, "bad")
    empty, _ = build_groups({}, {}, {}, group_size=5)
    with pytest.raises(ValueError, match="no groups"):
        build_ranking_groups_dataset({"train": empty}, tmp_path, "bad2")
