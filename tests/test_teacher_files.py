"""Teacher files in the public shapes (pile_jax.data.teacher_files) and their CSR join
(pile_jax.data.teacher_table), on small hand-written files whose expected rows and scores are
written out by hand below (issue 20)."""

import json
import math
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pile_jax.data.errors import DataError
from pile_jax.data.teacher_files import RowIndex, read_teacher_file
from pile_jax.data.teacher_table import TeacherTable, join_teachers

# rows are positions in dict order: q1=0 q2=1 q3=2; d1=0 ... d5=4
QUERIES = {"q1": "a", "q2": "b", "q3": "c"}
DOCS = {f"d{i}": "text" for i in range(1, 6)}


def _read(path, fmt, **kw):
    return read_teacher_file(path, format=fmt, queries=QUERIES, docs=DOCS, **kw)


def _rows(tr):
    return list(zip(tr.query_rows.tolist(), tr.doc_rows.tolist(), tr.scores.tolist()))


def _write_parquet(path, rows):
    pq.write_table(pa.table({"query_id": [r[0] for r in rows], "doc_ids": [r[1] for r in rows],
                             "scores": [r[2] for r in rows]}), path)


def _files(tmp_path):
    """One small file per format, and the (query row, doc row, score) entries each must give,
    sorted by (query row, doc row), written out by hand."""
    f = {}
    (tmp_path / "t.tsv").write_text("q1\td2\t1.5\nq2 d1 -0.25\n\nq1\td1\t3\n")
    f["tsv"] = ("t.tsv", {}, [(0, 0, 3.0), (0, 1, 1.5), (1, 0, -0.25)])
    # Margin-MSE: each line is (pos, neg); d1 repeats for q1 with the same score -> kept once
    (tmp_path / "m.tsv").write_text("10.5\t2.0\tq1\td1\td3\n10.5\t-1.0\tq1\td1\td4\n7\t7.5\tq2\td2\td5\n")
    f["margin_tsv"] = ("m.tsv", {}, [(0, 0, 10.5), (0, 2, 2.0), (0, 3, -1.0), (1, 1, 7.0), (1, 4, 7.5)])
    (tmp_path / "s.jsonl").write_text(json.dumps({"query_id": "q1", "scores": {"d2": 0.5, "d5": 1}}) + "\n\n"
                                      + json.dumps({"qid": "q3", "scores": {"d1": -2}, "extra": 1}) + "\n")
    f["score_map"] = ("s.jsonl", {}, [(0, 1, 0.5), (0, 4, 1.0), (2, 0, -2.0)])
    with open(tmp_path / "s.pkl", "wb") as h:
        pickle.dump({"q2": {"d3": 4.0, "d1": 1.0}}, h)
    f["score_map_pickle"] = ("s.pkl", {"allow_pickle": True}, [(1, 0, 1.0), (1, 2, 4.0)])
    _write_parquet(tmp_path / "l.parquet", [("q3", ["d4", "d2"], [0.1, 0.9]), ("q1", ["d5"], [2.0])])
    f["listwise_parquet"] = ("l.parquet", {}, [(0, 4, 2.0), (2, 1, 0.9), (2, 3, 0.1)])
    (tmp_path / "r.trec").write_text("q1 Q0 d3 1 12.0 run\nq1 Q0 d1 2 11.0 run\nq2 Q0 d2 1 5.5 run\n")
    f["trec_run"] = ("r.trec", {}, [(0, 0, 11.0), (0, 2, 12.0), (1, 1, 5.5)])
    return f


FORMATS = ["tsv", "margin_tsv", "score_map", "score_map_pickle", "listwise_parquet", "trec_run"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_hand_written_entries(tmp_path, fmt):
    name, kw, want = _files(tmp_path)[fmt]
    got = _read(tmp_path / name, fmt, **kw)
    assert got.query_rows.dtype == np.int32 and got.doc_rows.dtype == np.int32 and got.scores.dtype == np.float32
    assert [(q, d) for q, d, _ in _rows(got)] == [(q, d) for q, d, _ in want]
    np.testing.assert_allclose(got.scores, np.float32([s for _, _, s in want]), rtol=0, atol=0)
    # a chunk of one line (row, query) gives the same triples as one pass
    again = _read(tmp_path / name, fmt, chunk=1, **kw)
    assert _rows(again) == _rows(got)


def test_ids_go_through_a_store_rows_method(tmp_path):
    """A TextStore-like collection (``rows(ids, missing="skip")``, -1 for unknown) is used as is:
    here rows are reversed dict positions, so the ids are looked up through it, not the keys."""
    class Store:
        def __init__(self, ids):
            self.ids = list(ids)

        def rows(self, ids, *, missing="error"):
            return np.array([len(self.ids) - 1 - self.ids.index(i) if i in self.ids else -1 for i in ids], np.int64)

    name, kw, want = _files(tmp_path)["margin_tsv"]
    got = read_teacher_file(tmp_path / name, format="margin_tsv", queries=Store(QUERIES), docs=Store(DOCS))
    expect = sorted((2 - q, 4 - d, s) for q, d, s in want)
    assert _rows(got) == expect


BAD = {
    "tsv": ("q1\td1\t1.0\nq1 d2\n", 2, "expected 3 columns"),
    "margin_tsv": ("1\t2\tq1\td1\td2\n1\t2\tq1\td1\td3\nhigh\t2\tq1\td1\td4\n", 3, "pos_score 'high' is not a number"),
    "score_map": (json.dumps({"qid": "q1", "scores": {"d1": 1}}) + "\n{not json\n", 2, "not a JSON object"),
    "trec_run": ("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 two 1.0 r\n", 2, "rank 'two' is not an integer"),
}


@pytest.mark.parametrize("fmt", list(BAD))
def test_a_malformed_line_names_file_and_line(tmp_path, fmt):
    text, line, what = BAD[fmt]
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        _read(path, fmt)
    assert str(e.value).startswith(f"{path}:{line}: ") and what in str(e.value)


def test_malformed_parquet_row_and_pickle_value_are_named(tmp_path):
    _write_parquet(tmp_path / "l.parquet", [("q1", ["d1"], [1.0]), ("q2", ["d1", "d2"], [1.0])])
    with pytest.raises(DataError, match=r"l\.parquet:2: doc_ids and scores have different lengths"):
        _read(tmp_path / "l.parquet", "listwise_parquet")
    with open(tmp_path / "s.pkl", "wb") as h:
        pickle.dump({"q1": {"d1": 1.0}, "q2": {"d2": "high"}}, h)
    with pytest.raises(DataError, match=r"s\.pkl:2: score of query 'q2' doc 'd2' is 'high'"):
        _read(tmp_path / "s.pkl", "score_map_pickle", allow_pickle=True)


def test_pickle_is_refused_without_the_opt_in(tmp_path):
    """Unpickling runs code: without allow_pickle the file is not even opened for reading."""
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    with open(tmp_path / "evil.pkl", "wb") as h:
        pickle.dump({"q1": Boom()}, h)
    with pytest.raises(DataError) as e:
        _read(tmp_path / "evil.pkl", "score_map_pickle")
    msg = str(e.value)
    assert "\n" not in msg and "allow_pickle: true" in msg and msg.startswith(f"{tmp_path / 'evil.pkl'}: ")


def test_unknown_ids_duplicates_and_outliers(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("q1 d1 1\nq1 d9 2\nq7 d1 3\n")
    with pytest.raises(DataError, match=r"t\.tsv:2: unknown doc id 'd9' \(query 'q1'\)"):
        _read(p, "tsv")
    skipped = _read(p, "tsv", on_unknown="skip")
    assert _rows(skipped) == [(0, 0, 1.0)] and skipped.skipped == 2
    p.write_text("3\t1\tq1\td1\td2\n3.5\t1\tq1\td1\td3\n")    # d1 of q1 first 3, then 3.5
    with pytest.raises(DataError, match=r"t\.tsv:2: query 'q1' doc 'd1' has two different scores \(3.0 and 3.5\)"):
        _read(p, "margin_tsv")
    assert _rows(_read(p, "margin_tsv", duplicates="first"))[0] == (0, 0, 3.0)   # the first score kept
    lines = [f"q1 d{i} {v}" for i, v in zip(range(1, 6), (1.0, 1.2, 0.9, 1.1, 1e30))]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"t\.tsv:5: score 1e\+30 is far outside"):
        _read(p, "tsv")
    assert _rows(_read(p, "tsv", outliers="accept"))[-1] == (0, 4, np.float32(1e30))


def test_transforms_match_hand_computed_values(tmp_path):
    """logit: sigmoid(s) = 1 / (1 + e^-s); rank: per query r = 1 + #(strictly higher scores),
    s' = -ln r (ties share the best rank)."""
    p = tmp_path / "r.trec"
    p.write_text("q1 Q0 d1 1 0.0 r\nq1 Q0 d2 2 2.0 r\nq1 Q0 d3 3 -3.0 r\nq2 Q0 d1 1 5.0 r\n"
                 "q1 Q0 d4 4 2.0 r\nq2 Q0 d5 2 4.0 r\n")
    logit = _read(p, "trec_run", transform="logit")
    want = {(0, 0): 0.5, (0, 1): 1 / (1 + math.exp(-2)), (0, 2): 1 / (1 + math.exp(3)), (1, 0): 1 / (1 + math.exp(-5)),
            (0, 3): 1 / (1 + math.exp(-2)), (1, 4): 1 / (1 + math.exp(-4))}
    for q, d, s in _rows(logit):
        assert s == pytest.approx(want[(q, d)], rel=1e-6)
    rank = _read(p, "trec_run", transform="rank")
    # q1: d2 and d4 tie at 2.0 (rank 1), d1 0.0 rank 3, d3 rank 4; q2: d1 rank 1, d5 rank 2
    want = {(0, 1): 0.0, (0, 3): 0.0, (0, 0): -math.log(3), (0, 2): -math.log(4), (1, 0): 0.0, (1, 4): -math.log(2)}
    for q, d, s in _rows(rank):
        assert s == pytest.approx(want[(q, d)], abs=1e-6)
    assert _rows(_read(p, "trec_run", transform="raw"))[0] == (0, 0, 0.0)


def test_join_marks_a_missing_candidate_absent_not_zero(tmp_path):
    """Teacher b lacks (q1, d3) and teacher a lacks (q2, d5): those slots are absent (present
    False), every other slot holds the file's score; save/load memory-maps the same table."""
    (tmp_path / "a.tsv").write_text("q1 d1 3\nq1 d3 0.5\nq2 d2 1\n")
    (tmp_path / "b.trec").write_text("q1 Q0 d1 1 9 r\nq2 Q0 d2 1 8 r\nq2 Q0 d5 2 7 r\n")
    a, b = _read(tmp_path / "a.tsv", "tsv"), _read(tmp_path / "b.trec", "trec_run")
    table = join_teachers(["a", "b"], [a, b])
    assert table.query_rows.tolist() == [0, 1] and table.offsets.tolist() == [0, 2, 4]
    assert table.doc_rows.tolist() == [0, 2, 1, 4]
    np.testing.assert_array_equal(table.present, [[True, True, True, False], [True, False, True, True]])
    np.testing.assert_array_equal(np.where(table.present, table.scores, np.nan),
                                  [[3, 0.5, 1, np.nan], [9, np.nan, 8, 7]])
    table.save(tmp_path / "joined")
    back = TeacherTable.load(tmp_path / "joined")
    assert isinstance(back.scores, np.memmap) and back.names == ["a", "b"]
    docs, scores, present = back.query(1)
    assert docs.tolist() == [1, 4] and scores[1].tolist() == [8, 7] and present.tolist() == [[True, False], [True, True]]
    assert back.query(2)[0].shape == (0,) and back.query(2)[1].shape == (2, 0)


def test_row_index_of_a_mapping():
    idx = RowIndex({"b": 1, "a": 2, "c": 3})
    assert idx.rows(["c", "a", "x"], missing="skip").tolist() == [2, 1, -1]
    with pytest.raises(KeyError, match="x"):
        idx.rows(["x"])


def _tiny_collection(folder):
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(["wing flow", "heat shock", "mach jet"])))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"query_id": f"q{i}", "text": t}) + "\n"
                                                  for i, t in enumerate(["wing", "heat", "mach"])))
    (folder / "qrels.tsv").write_text("q0 0 d0 1\nq0 0 d1 0\nq1 0 d1 1\nq1 0 d2 0\nq2 0 d2 1\nq2 0 d0 0\n")
    (folder / "splits.json").write_text(json.dumps({"train": ["q0"], "dev": ["q1"], "test": ["q2"]}))
    return str(folder)


@pytest.mark.parametrize("teacher, fragments", [
    ("{name: m, kind: file, format: margin_csv, path: FILE}", ["teachers[0] (m).format", "did you mean 'margin_tsv'"]),
    ("{name: m, kind: file, transform: sigmoid, path: FILE}", ["teachers[0] (m).transform", "raw, logit, rank"]),
    ("{name: m, kind: file, format: score_map_pickle, path: FILE}", ["teachers[0] (m).allow_pickle", "runs code"]),
    ("{name: m, kind: bm25, format: tsv}", ["teachers[0] (m).format", "only a teacher of kind file"]),
    ("{name: m, kind: file, format: margin_tsv, path: FILE}", ["bad.tsv:2: ", "neg_score 'x' is not a number"]),
])
def test_cli_file_teacher_keys_and_a_bad_line_are_one_line_errors(tmp_path, capsys, teacher, fragments):
    """`pile-jax train` with a kind: file teacher: an unknown format/transform, a pickle without the
    opt-in, or a malformed line of the file -> exit 2 and one line naming the key / file:line."""
    import os

    from pile_jax.cli import main

    bad = tmp_path / "bad.tsv"
    bad.write_text("2.5\t1\tq0\td0\td1\n2.5\tx\tq0\td0\td2\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rc = main(["train", os.path.join(root, "configs", "train_margin_mse.yaml"), "--out", str(tmp_path / "out"),
               "--set", f"data.collection={_tiny_collection(tmp_path / 'coll')}",
               "--set", f"teachers=[{teacher.replace('FILE', str(bad))}]", "--set", "objective.teacher=m"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]   # (progress log lines may come before it)
    assert last.startswith("pile-jax train: error: ") and "pile-jax train: error" not in err[:-len(last) - 1], err
    for f in fragments:
        assert f in last, err


def test_prepare_reads_a_file_teacher_in_any_format(tmp_path):
    """prepare's kind: file teacher on a small in-memory collection: a margin TSV with transform
    logit becomes {qid: {doc: sigmoid(score)}} (hand-computed)."""
    from types import SimpleNamespace

    from pile_jax.prepare import read_file_teacher

    (tmp_path / "m.tsv").write_text("2.0\t-1.0\tq1\td1\td2\n2.0\t0.0\tq2\td1\td3\n")
    coll = SimpleNamespace(queries=QUERIES, docs=DOCS)
    got = read_file_teacher({"name": "m", "kind": "file", "path": str(tmp_path / "m.tsv"), "format": "margin_tsv",
                             "transform": "logit"}, coll)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert got.keys() == {"q1", "q2"}
    assert got["q1"] == pytest.approx({"d1": sig(2.0), "d2": sig(-1.0)}, rel=1e-6)
    assert got["q2"] == pytest.approx({"d1": sig(2.0), "d3": 0.5}, rel=1e-6)
