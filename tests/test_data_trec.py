"""TREC readers/writers: malformed lines name file and line; round trips are exact."""

import types

import numpy as np
import pytest

from pile_jax.data.errors import DataError
from pile_jax.data.trec import (
    candidates_from_run,
    read_qrels,
    read_run,
    read_teacher_scores,
    read_triples,
    write_qrels,
    write_run,
    write_teacher_scores,
    write_triples,
)

COLL = types.SimpleNamespace(queries={"q1": "a", "q2": "b"}, docs={"d1": "", "d2": "", "d3": ""})


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _raises_at(reader, path, line, fragment, **kw):
    with pytest.raises(DataError) as info:
        reader(path, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert fragment in msg, msg
    assert info.value.line == line and isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- qrels


def test_read_qrels_ok_and_blank_lines(tmp_path):
    p = _write(tmp_path, "q.tsv", "q1 0 d1 2\n\nq1 0 d2 0\nq2\t0\td3\t1\n")
    assert read_qrels(p) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        ("q1 0 d1 2\nq1 0 d2\n", 2, "expected 4 columns"),
        ("q1 0 d1 2\nq1 0 d2 1 extra\n", 2, "expected 4 columns"),
        ("q1 0 d1 2.5\n", 1, "not an integer"),
        ("q1 0 d1 x\n", 1, "not an integer"),
        ("q1 0 d1 1\nq1 0 d2 1\nq1 0 d1 2\n", 3, "duplicate judgment"),
    ],
)
def test_read_qrels_malformed(tmp_path, body, line, fragment):
    _raises_at(read_qrels, _write(tmp_path, "q.tsv", body), line, fragment)


def test_read_qrels_negative_grades_are_zero_as_in_trec_eval(tmp_path):
    """TREC's -1/-2 (junk, spam) are read as grade 0 (one rule, issue 14 item 8); ``negative=``
    "error" / "keep" for the strict reading. pytrec_eval scores the raw negative qrels exactly as
    our metrics score the clamped ones."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from pile_jax.train.evaluate import run_metrics

    p = _write(tmp_path, "q.tsv", "q1 0 d1 -2\nq1 0 d2 0\nq1 0 d3 2\nq2 0 d1 -1\nq2 0 d2 1\n")
    assert read_qrels(p) == {"q1": {"d1": 0, "d2": 0, "d3": 2}, "q2": {"d1": 0, "d2": 1}}
    assert read_qrels(p, negative="keep")["q1"]["d1"] == -2
    _raises_at(read_qrels, p, 1, "grade -2 is negative", negative="error")
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d1": 2.0, "d2": 1.0}}
    raw = {"q1": {"d1": -2, "d2": 0, "d3": 2}, "q2": {"d1": -1, "d2": 1}}
    ref = pytrec_eval.RelevanceEvaluator(raw, {"ndcg_cut_10", "recip_rank", "map"}).evaluate(run)
    ours = run_metrics(run, read_qrels(p), qids=["q1", "q2"])
    for q in ref:
        for m in ("ndcg_cut_10", "recip_rank", "map"):
            assert ours[q][m] == pytest.approx(ref[q][m], abs=1e-6), (q, m)


def test_read_qrels_unknown_ids_error_and_skip(tmp_path):
    p = _write(tmp_path, "q.tsv", "q1 0 d1 1\nq9 0 d1 1\nq1 0 d9 1\n")
    _raises_at(read_qrels, p, 2, "unknown query id 'q9'", collection=COLL)
    qrels, skipped = read_qrels(p, collection=COLL, on_unknown="skip", return_skipped=True)
    assert qrels == {"q1": {"d1": 1}} and skipped == 2
    with pytest.raises(ValueError):
        read_qrels(p, collection=COLL, on_unknown="warn")


def test_qrels_round_trip(tmp_path):
    qrels = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    write_qrels(tmp_path / "q.tsv", qrels)
    assert read_qrels(tmp_path / "q.tsv") == qrels


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_run(tmp_path / "nope.run")


# ------------------------------------------------------------------------------- run


def test_read_run_sorts_by_score_then_docid(tmp_path):
    p = _write(tmp_path, "r.run", "q1 Q0 d1 1 1.0 t\nq1 Q0 d3 2 2.0 t\nq1 Q0 d2 3 1.0 t\nq2 Q0 d1 1 -3 t\n")
    # ties by doc id descending (trec_eval's order)
    assert read_run(p) == {"q1": [("d3", 2.0), ("d2", 1.0), ("d1", 1.0)], "q2": [("d1", -3.0)]}


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("q1 Q0 d2 2 0.5\n", "expected 6 columns"),
        ("q1 Q0 d2 2 abc t\n", "is not a number"),
        ("q1 Q0 d2 2 nan t\n", "not finite"),
        ("q1 Q0 d2 2 -inf t\n", "not finite"),
        ("q1 Q0 d2 x 0.5 t\n", "rank 'x' is not an integer"),
        ("q1 Q0 d2 2 1_000 t\n", "not a plain decimal number"),
        ("q1 Q0 d2 1_0 0.5 t\n", "rank '1_0' is not an integer"),
        ("q1 Q0 d1 2 0.5 t\n", "listed twice"),
    ],
)
def test_read_run_malformed(tmp_path, bad, fragment):
    p = _write(tmp_path, "r.run", "q1 Q0 d1 1 1.0 t\n\n" + bad)
    _raises_at(read_run, p, 3, fragment)


def test_read_run_unknown(tmp_path):
    p = _write(tmp_path, "r.run", "q1 Q0 d1 1 1.0 t\nq1 Q0 dX 2 0.5 t\n")
    _raises_at(read_run, p, 2, "unknown doc id 'dX'", collection=COLL)
    run, skipped = read_run(p, collection=COLL, on_unknown="skip", return_skipped=True)
    assert run == {"q1": [("d1", 1.0)]} and skipped == 1


def test_write_run_read_run_round_trip(tmp_path):
    run = {"q2": {"d1": 0.1, "d2": 0.30000000000000004, "d3": 0.1}, "q1": {"d9": -1e-7}}
    path = tmp_path / "out.run"
    write_run(path, run, tag="mytag")
    lines = path.read_text().splitlines()
    assert lines[0] == "q2 Q0 d2 1 0.30000000000000004 mytag"
    assert [ln.split()[2:4] for ln in lines[:3]] == [["d2", "1"], ["d3", "2"], ["d1", "3"]]  # tie: id desc
    back = read_run(path)
    assert {q: dict(v) for q, v in back.items()} == run
    assert list(back) == ["q2", "q1"]
    with pytest.raises(ValueError):
        write_run(path, {"q1": {"d1": float("nan")}})
    with pytest.raises(ValueError):
        write_run(path, {"q1": {"d 1": 1.0}})


def test_candidates_from_run():
    run = {"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": {"x": 1.0, "y": 5.0}}
    assert candidates_from_run(run, 2) == {"q1": ["a", "b"], "q2": ["y", "x"]}
    assert candidates_from_run(run)["q1"] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        candidates_from_run(run, 0)


# ---------------------------------------------------------------------- teacher scores


def test_teacher_scores_round_trip_and_mixed_separators(tmp_path):
    p = _write(tmp_path, "t.tsv", "q1\td1\t1.5\nq1 d2   -2e-3\n\nq2\td1\t7\n")
    assert read_teacher_scores(p) == {"q1": {"d1": 1.5, "d2": -0.002}, "q2": {"d1": 7.0}}
    scores = {"q1": {"d1": 0.1 + 0.2, "d2": -1.0 / 3}, "q2": {"d3": 12345.678}}
    write_teacher_scores(tmp_path / "o.tsv", scores)
    assert read_teacher_scores(tmp_path / "o.tsv") == scores


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("q1 d2\n", "expected 3 columns"),
        ("q1 d2 0.1 0.2\n", "expected 3 columns"),
        ("q1 d2 1,5\n", "is not a number"),
        ("q1 d2 1_000\n", "not a plain decimal number"),  # Python's float() reads it; trec_eval does not
        ("q1 d2 ١\n", "not a plain decimal number"),  # an Arabic-Indic digit, float() reads it too
        ("q1 d2 NaN\n", "not finite"),
        ("q1 d2 inf\n", "not finite"),
        ("q1\td1\t3\n", "duplicate score"),
    ],
)
def test_teacher_scores_malformed(tmp_path, bad, fragment):
    p = _write(tmp_path, "t.tsv", "q1\td1\t1.0\n" + bad)
    _raises_at(read_teacher_scores, p, 2, fragment)


def test_teacher_scores_unknown(tmp_path):
    p = _write(tmp_path, "t.tsv", "q1 d1 1\nq3 d1 1\nq2 d2 2\n")
    _raises_at(read_teacher_scores, p, 2, "unknown query id 'q3'", collection=COLL)
    got, skipped = read_teacher_scores(p, collection=COLL, on_unknown="skip", return_skipped=True)
    assert got == {"q1": {"d1": 1.0}, "q2": {"d2": 2.0}} and skipped == 1


# ----------------------------------------------------------------------------- triples


def test_triples_read_and_round_trip(tmp_path):
    p = _write(tmp_path, "tr.tsv", "3.5\t-1.25\tq1\td1\td2\n\n0.5\t0\tq2\td3\td1\n")
    tr = read_triples(p)
    np.testing.assert_array_equal(tr["pos_score"], np.array([3.5, 0.5], np.float32))
    np.testing.assert_array_equal(tr["neg_score"], np.array([-1.25, 0.0], np.float32))
    assert tr["pos_score"].dtype == np.float32
    assert tr["query_id"].tolist() == ["q1", "q2"]
    assert tr["pos_id"].tolist() == ["d1", "d3"] and tr["neg_id"].tolist() == ["d2", "d1"]
    write_triples(tmp_path / "o.tsv", tr)
    back = read_triples(tmp_path / "o.tsv")
    for key in tr:
        np.testing.assert_array_equal(back[key], tr[key])
    empty = read_triples(_write(tmp_path, "e.tsv", "\n"))
    assert empty["pos_score"].shape == (0,) and empty["query_id"].shape == (0,)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("1.0 0.5 q1 d1 d2\n", "expected 5 columns"),
        ("1.0\t0.5\tq1\td1\n", "expected 5 columns"),
        ("1.0\tx\tq1\td1\td2\n", "neg_score 'x' is not a number"),
        ("nan\t0.5\tq1\td1\td2\n", "not finite"),
        ("1.0\t0.5\t\td1\td2\n", "empty qid"),
    ],
)
def test_triples_malformed(tmp_path, bad, fragment):
    p = _write(tmp_path, "tr.tsv", "1\t0\tq1\td1\td2\n" + bad)
    _raises_at(read_triples, p, 2, fragment)


def test_triples_unknown(tmp_path):
    p = _write(tmp_path, "tr.tsv", "1\t0\tq1\td1\td2\n1\t0\tq1\td1\tdZ\n")
    _raises_at(read_triples, p, 2, "unknown doc id 'dZ'", collection=COLL)
    tr, skipped = read_triples(p, collection=COLL, on_unknown="skip", return_skipped=True)
    assert skipped == 1 and tr["neg_id"].tolist() == ["d2"]
