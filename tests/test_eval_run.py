"""candidates: {eval_run: FILE}: the streaming run reader keeps only the eval queries, ranks as
trec_eval does, and names file:line for a malformed line; the config schema of from: teachers."""

import numpy as np
import pytest

from pile_jax.data import DataError
from pile_jax.data.trec import read_run_queries

RUN = """q1 Q0 d1 1 0.5 bm25
q2 Q0 d9 1 3.0 bm25
q1 Q0 d3 2 2.0 bm25
q3 Q0 d4 1 1.0 bm25
q1 Q0 d2 3 0.5 bm25
q1 Q0 d10 4 0.5 bm25
"""


def test_keeps_only_the_asked_queries_in_trec_eval_order(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text(RUN)
    got = read_run_queries(path, ["q3", "q1", "q7"], chunk=2)
    assert list(got) == ["q3", "q1"]                     # the asked order; q2 dropped, q7 absent
    # score descending, ties by doc id descending (d2 > d10 > d1 in code-point order)
    assert got["q1"].tolist() == ["d3", "d2", "d10", "d1"] and got["q3"].tolist() == ["d4"]


@pytest.mark.parametrize("line,what", [
    ("q2 Q0 d5 1 0.5", "expected 6 columns"),
    ("q2 Q0 d5 x 0.5 t", "rank 'x' is not an integer"),
    ("q2 Q0 d5 1 nan t", "not finite"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, what):
    path = tmp_path / "run.trec"
    path.write_text(RUN + line + "\n")
    with pytest.raises(DataError) as e:
        read_run_queries(path, ["q1"])            # checked even for a query that is not kept
    assert f"{path}:7:" in str(e.value) and what in str(e.value)


def test_duplicate_doc_of_a_kept_query(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text(RUN + "q1 Q0 d3 9 0.1 bm25\n")
    with pytest.raises(DataError, match=r"run.trec:7: doc 'd3' listed twice for query 'q1' \(first at line 3\)"):
        read_run_queries(path, ["q1"])


def _cfg(tmp_path, **cand):
    from pile_jax import config as C

    (tmp_path / "run.trec").write_text(RUN)
    (tmp_path / "t.tsv").write_text("1\t0\tq1\td1\td2\n")
    cfg = {"data": {"collection": str(tmp_path)}, "candidates": {"from": "teachers", "eval_run": str(tmp_path / "run.trec")},
           "teachers": [{"name": "m", "kind": "file", "path": str(tmp_path / "t.tsv")}],
           "student": {"num_layers": 1, "max_length": 32}, "objective": {"label_losses": {"pairwise_logistic": 1.0}},
           "train": {"batch_size": 2, "steps": 1}, "eval": {"split": "dev.small", "max_queries": 3}}
    cfg["candidates"].update(cand)
    return C, cfg


def test_schema_accepts_from_teachers_and_the_collections_split_names(tmp_path):
    from pile_jax.schema import validate

    C, cfg = _cfg(tmp_path)
    validate(cfg, job="train")
    for change, key in ((dict(run=str(tmp_path / "run.trec")), "candidates.run"), (dict(eval_run=None), "candidates.eval_run"),
                        (dict(eval_run=str(tmp_path / "nope")), "nope: file not found"), (dict(**{"from": "bm25"}), "candidates.from")):
        C, bad = _cfg(tmp_path, **change)
        with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
            validate(bad, job="train")
    C, bad = _cfg(tmp_path)
    bad["teachers"] = [{"name": "b", "kind": "bm25"}]
    with pytest.raises(C.ConfigError, match=r"teachers\[0\]\.kind"):
        validate(bad, job="train")


def test_set_indexes_a_list():
    from pile_jax import config as C

    cfg = {"teachers": [{"name": "a", "path": "x"}, {"name": "b", "path": "y"}]}
    out = C.apply_override(cfg, "teachers.1.path=z.tsv")
    assert out["teachers"] == [{"name": "a", "path": "x"}, {"name": "b", "path": "z.tsv"}] and cfg["teachers"][1]["path"] == "y"
    with pytest.raises(C.ConfigError, match=r"'2' is not an index of a list of 2 \(0\.\.1\)"):
        C.apply_override(cfg, "teachers.2.path=z")
