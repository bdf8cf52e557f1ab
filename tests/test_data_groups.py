"""Ranking groups against a hand-computed example."""

import numpy as np
import pytest

from pile_jax.data.errors import DataError
from pile_jax.data.groups import (
    build_groups,
    check_groups,
    iter_group_examples,
    select_candidates,
    stack_group_examples,
    take_groups,
)

QRELS = {
    "q1": {"a": 2, "b": 0, "c": 1},
    "q2": {"x": 0},  # no relevant document
    "q4": {"p": 3},  # a single candidate
    "q6": {"s": 1},
}
CANDS = {
    "q1": ["a", "u", "b", "c", "v"],  # u, v unjudged; v beyond n=4
    "q2": ["x", "y"],
    "q3": [],
    "q4": [("p", 9.0)],  # run-style (docid, score) entries work too
    "q5": ["m", "n"],  # query without qrels
    "q6": ["r", "s"],
}
ALL_DOCS = {q: [c[0] if isinstance(c, tuple) else c for c in v] for q, v in CANDS.items()}
# teacher "tB" first: the teacher axis follows the mapping order, not the names
TEACHERS = {
    "tB": {q: {d: 10.0 + i for i, d in enumerate(ds)} for q, ds in ALL_DOCS.items()},
    "tA": {q: {d: -float(i) for i, d in enumerate(ds)} for q, ds in ALL_DOCS.items()},
}
QIDS = ["q1", "q2", "q3", "q4", "q5", "q6"]


def test_groups_unjudged_zero():
    g, stats = build_groups(QRELS, CANDS, TEACHERS, group_size=4, qids=QIDS)
    assert check_groups(g) == (2, 4, 2)
    assert g["query_id"] == ["q1", "q6"] and g["teacher_names"] == ["tB", "tA"]
    assert g["doc_ids"].tolist() == [["a", "u", "b", "c"], ["r", "s", "", ""]]
    np.testing.assert_array_equal(g["labels"], [[2, 0, 0, 1], [0, 1, 0, 0]])
    np.testing.assert_array_equal(g["label_mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(g["mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(
        g["teacher_scores"],
        [[[10, 11, 12, 13], [0, -1, -2, -3]], [[10, 11, 0, 0], [0, -1, 0, 0]]],
    )
    assert g["labels"].dtype == np.float32 and g["teacher_scores"].dtype == np.float32
    assert g["mask"].dtype == bool and g["label_mask"].dtype == bool
    assert stats == dict(
        queries=6, groups=2, skipped_no_candidates=1, skipped_no_label_pair=3,
        truncated=1, padded=1, unjudged_items=2, positives_outside_group=0,
    )


def test_negative_grades_are_non_relevant_labels():
    """Qrels built in code with TREC's -1/-2: labels 0 (as evaluation scores them), so a -2 item
    never forms a pair with a grade-0 item, and a list of -2 and 0 has no label pair."""
    qrels = {"q1": {"a": -2, "b": 1, "c": 0}, "q2": {"x": -1, "y": 0}}
    g, stats = build_groups(qrels, {"q1": ["a", "b", "c"], "q2": ["x", "y"]}, {}, group_size=3)
    assert g["query_id"] == ["q1"] and stats["skipped_no_label_pair"] == 1
    np.testing.assert_array_equal(g["labels"], [[0, 1, 0]])


def test_groups_unjudged_ignore():
    g, stats = build_groups(QRELS, CANDS, TEACHERS, group_size=4, qids=QIDS, unjudged="ignore")
    # q6: only "s" is judged -> no label pair -> skipped
    assert g["query_id"] == ["q1"]
    np.testing.assert_array_equal(g["label_mask"], [[1, 0, 1, 1]])
    np.testing.assert_array_equal(g["mask"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(g["labels"], [[2, 0, 0, 1]])
    assert stats["skipped_no_label_pair"] == 4 and stats["skipped_no_candidates"] == 1


def test_groups_keep_unlabelled_lists():
    g, stats = build_groups(QRELS, CANDS, TEACHERS, group_size=3, qids=QIDS, require_label_pair=False)
    assert g["query_id"] == ["q1", "q2", "q4", "q5", "q6"]
    assert stats["skipped_no_candidates"] == 1 and stats["skipped_no_label_pair"] == 0
    assert g["doc_ids"][2].tolist() == ["p", "", ""]
    np.testing.assert_array_equal(g["labels"][3], [0, 0, 0])  # query without qrels: all unjudged
    assert np.isfinite(g["teacher_scores"]).all()
    # q1 truncated to 3: c (grade 1) falls outside the group
    assert stats["positives_outside_group"] == 1


def test_default_qids_and_empty_result():
    g, _ = build_groups(QRELS, CANDS, TEACHERS, group_size=4)
    assert g["query_id"] == ["q1", "q6"]
    g, stats = build_groups(QRELS, {"q2": ["x"]}, {}, group_size=3)
    assert stats["groups"] == 0
    assert g["doc_ids"].shape == (0, 3) and g["teacher_scores"].shape == (0, 0, 3)
    assert check_groups(g) == (0, 3, 0)


def test_missing_teacher_score_names_teacher_file_query_doc():
    teachers = {"tB": TEACHERS["tB"], "tA": {q: dict(v) for q, v in TEACHERS["tA"].items()}}
    del teachers["tA"]["q1"]["b"]
    with pytest.raises(DataError) as info:
        build_groups(QRELS, CANDS, teachers, group_size=4, qids=QIDS,
                     teacher_sources={"tA": "/runs/tA.tsv"})
    msg = str(info.value)
    assert "'tA'" in msg and "/runs/tA.tsv" in msg and "'q1'" in msg and "'b'" in msg
    # a missing score outside the kept items is not needed
    del teachers["tA"]["q1"]["v"]
    teachers["tA"]["q1"]["b"] = 0.0
    build_groups(QRELS, CANDS, teachers, group_size=4, qids=QIDS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unjudged"):
        build_groups(QRELS, CANDS, TEACHERS, group_size=4, unjudged="drop")
    with pytest.raises(ValueError, match="group_size"):
        build_groups(QRELS, CANDS, TEACHERS, group_size=0)
    with pytest.raises(ValueError, match="repeats"):
        build_groups(QRELS, {"q1": ["a", "a"]}, {}, group_size=4)


def test_select_candidates_policies():
    cands = [f"d{i}" for i in range(10)]
    judged = {"d7": 1, "d3": 2, "d9": 1, "d1": 0}
    assert select_candidates(cands, judged, 4) == ["d0", "d1", "d2", "d3"]
    assert select_candidates(cands, judged, 4, policy="positives_top") == ["d0", "d3", "d7", "d9"]
    # more positives than slots: highest grade, then best rank
    assert select_candidates(cands, judged, 2, policy="positives_top") == ["d3", "d7"]
    assert select_candidates(cands[:3], judged, 4, policy="positives_top") == cands[:3]
    picks = [tuple(select_candidates(cands, judged, 6, policy="positives_sampled", seed=s, qid="q"))
             for s in range(5)]
    for p in picks:
        assert {"d3", "d7", "d9"} <= set(p) and len(p) == 6 and list(p) == sorted(p)
    assert len(set(picks)) > 1  # the seed matters
    again = select_candidates(cands, judged, 6, policy="positives_sampled", seed=3, qid="q")
    assert tuple(again) == picks[3]  # deterministic


def test_sampled_groups_independent_of_query_order():
    kw = dict(group_size=3, policy="positives_sampled", seed=7, require_label_pair=False)
    g1, _ = build_groups(QRELS, CANDS, TEACHERS, qids=QIDS, **kw)
    g2, _ = build_groups(QRELS, CANDS, TEACHERS, qids=QIDS[::-1], **kw)
    by_q = {q: g1["doc_ids"][i].tolist() for i, q in enumerate(g1["query_id"])}
    assert by_q == {q: g2["doc_ids"][i].tolist() for i, q in enumerate(g2["query_id"])}
    assert "c" in by_q["q1"] and "a" in by_q["q1"]  # positives always kept


def test_include_unretrieved_positives():
    qrels = {"q1": {"a": 2, "c": 1, "z": 0}}
    cands = {"q1": ["u", "v"]}
    teachers = {"t": {"q1": {"u": 1.0, "v": 2.0, "a": 3.0, "c": 4.0}}}
    g, stats = build_groups(qrels, cands, teachers, group_size=3, policy="positives_top",
                            include_unretrieved_positives=True)
    assert g["doc_ids"].tolist() == [["u", "a", "c"]]
    np.testing.assert_array_equal(g["labels"], [[0, 2, 1]])
    np.testing.assert_array_equal(g["teacher_scores"], [[[1, 3, 4]]])
    assert stats["positives_outside_group"] == 0


def test_take_iter_stack_round_trip():
    g, _ = build_groups(QRELS, CANDS, TEACHERS, group_size=4, qids=QIDS, require_label_pair=False)
    sub = take_groups(g, [3, 0])
    assert sub["query_id"] == ["q5", "q1"]
    back = stack_group_examples(list(iter_group_examples(sub)), sub["teacher_names"])
    for key in sub:
        if isinstance(sub[key], list):
            assert back[key] == sub[key]
        else:
            np.testing.assert_array_equal(back[key], sub[key])
            assert back[key].dtype.kind == sub[key].dtype.kind
