"""Collections: shipped Cranfield against its published counts; malformed folders fail clearly."""

import collections
import json

import pytest

from pile_jax.data.collection import Collection, load_collection
from pile_jax.data.errors import DataError


def test_cranfield_published_counts():
    c = load_collection("cranfield")
    assert isinstance(c, Collection) and c.name == "cranfield"
    assert len(c.docs) == 1400
    assert len(c.queries) == 225
    assert sum(len(j) for j in c.qrels.values()) == 1837
    assert {k: len(v) for k, v in c.splits.items()} == {"train": 135, "dev": 45, "test": 45}
    grades = collections.Counter(g for j in c.qrels.values() for g in j.values())
    assert grades == {4: 128, 3: 387, 2: 734, 1: 363, 0: 225}
    split_qrels = {s: sum(len(c.qrels[q]) for q in c.split_qids(s)) for s in ("train", "dev", "test")}
    assert split_qrels == {"train": 1100, "dev": 393, "test": 344}
    # every query in exactly one split; "all" = every query
    assert sorted(sum(c.splits.values(), []), key=int) == sorted(c.queries, key=int)
    assert c.split_qids("all") == list(c.queries)
    # title + " " + text, stripped; empty docs stay empty
    assert c.docs["1"].startswith("experimental investigation of the aerodynamics of a wing in a slipstream . experimental")
    assert c.docs["471"] == "" and c.docs["995"] == ""
    with pytest.raises(ValueError, match="no split 'validation'"):
        c.split_qids("validation")


def test_scifact_graded_qrels_file():
    c = load_collection("scifact", qrels_file="qrels_graded.tsv")
    grades = collections.Counter(g for j in c.qrels.values() for g in j.values())
    assert grades == {2: 773, 1: 485}
    assert len(c.docs) == 5183 and len(c.queries) == 1109


def test_nfcorpus_published_counts():
    """BEIR's published NFCorpus sizes (train 2,590 / 110,575 qrels, dev 324 / 11,385, test 323 / 12,334)
    and the original 2-1-0 grades of /work/shared/data/README.md."""
    c = load_collection("nfcorpus")
    assert len(c.docs) == 3633 and len(c.queries) == 3237
    split_sizes = {s: (len(q), sum(len(c.qrels[x]) for x in q)) for s, q in c.splits.items()}
    assert split_sizes == {"train": (2590, 110575), "dev": (324, 11385), "test": (323, 12334)}
    grades = collections.Counter(g for j in c.qrels.values() for g in j.values())
    assert grades == {1: 128918, 2: 5376}
    g = load_collection("nfcorpus", qrels_file="qrels_graded.tsv")
    train = collections.Counter(v for q in g.splits["train"] for v in g.qrels.get(q, {}).values())
    assert train == {1: 28697, 2: 106296, 3: 4279}


def _folder(tmp_path, docs=None, queries=None, qrels=None, splits=None):
    docs = docs if docs is not None else (
        '{"doc_id": "d1", "title": "T1", "text": "one"}\n'
        '{"doc_id": "d2", "title": "", "text": "two "}\n'
        '{"doc_id": "d3", "text": "three"}\n'
    )
    queries = queries if queries is not None else '{"query_id": "q1", "text": "first"}\n{"query_id": "q2", "text": "second"}\n'
    qrels = qrels if qrels is not None else "q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n"
    splits = splits if splits is not None else json.dumps({"train": ["q1"], "test": ["q2"]}, indent=0)
    (tmp_path / "docs.jsonl").write_text(docs)
    (tmp_path / "queries.jsonl").write_text(queries)
    (tmp_path / "qrels.tsv").write_text(qrels)
    (tmp_path / "splits.json").write_text(splits)
    return tmp_path


def test_load_folder(tmp_path):
    c = load_collection(_folder(tmp_path))
    assert c.docs == {"d1": "T1 one", "d2": "two", "d3": "three"}
    assert c.queries == {"q1": "first", "q2": "second"}
    assert c.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    assert c.split_qids("train") == ["q1"] and c.split_qrels("test") == {"q2": {"d3": 1}}
    (tmp_path / "splits.json").unlink()
    assert load_collection(tmp_path).splits == {}


@pytest.mark.parametrize(
    "kind, body, file, line, fragment",
    [
        ("docs", '{"doc_id": "d1", "text": "x"}\n{"doc_id": "d2", "text": "y"\n', "docs.jsonl", 2, "malformed JSON"),
        ("docs", '{"doc_id": "d1", "text": "x"}\n{"title": "t", "text": "y"}\n', "docs.jsonl", 2, "missing field 'doc_id'"),
        ("docs", '{"doc_id": "d1"}\n', "docs.jsonl", 1, "missing field 'text'"),
        ("docs", '{"doc_id": "d1", "text": 5}\n', "docs.jsonl", 1, "must be a string"),
        ("docs", '["d1", "x"]\n', "docs.jsonl", 1, "expected a JSON object"),
        ("docs", '{"doc_id": "d1", "text": "x"}\n{"doc_id": "d1", "text": "y"}\n', "docs.jsonl", 2, "duplicate doc_id"),
        ("queries", '{"query_id": "q1", "text": "a"}\n\n{"query_id": "q2"}\n', "queries.jsonl", 3, "missing field 'text'"),
        ("qrels", "q1 0 d1 2\nq1 0 d2\n", "qrels.tsv", 2, "expected 4 columns"),
        ("qrels", "q1 0 d1 2\nq1 0 d2 high\n", "qrels.tsv", 2, "not an integer"),
        ("qrels", "q1 0 d1 2\nq7 0 d2 1\n", "qrels.tsv", 2, "unknown query id 'q7'"),
        ("qrels", "q1 0 d1 2\nq1 0 d8 1\n", "qrels.tsv", 2, "unknown doc id 'd8'"),
        ("splits", '{\n"train": ["q1"],\n"test": ["q2", "q5"]\n}', "splits.json", 3, "unknown query id 'q5'"),
        ("splits", '{\n"train": ["q1",\n}', "splits.json", 3, "malformed JSON"),
    ],
)
def test_malformed_folder(tmp_path, kind, body, file, line, fragment):
    folder = _folder(tmp_path, **{kind: body})
    with pytest.raises(DataError) as info:
        load_collection(folder)
    msg = str(info.value)
    assert msg.startswith(f"{folder / file}:{line}: "), msg
    assert fragment in msg, msg


def test_empty_files_and_all_empty_texts_name_the_file(tmp_path):
    """An empty docs.jsonl is reported as such (not as an unknown doc id in qrels.tsv); documents or
    queries whose texts are all empty leave nothing to rank."""
    for kind, body, file, fragment in [
        ("docs", "", "docs.jsonl", "no records"),
        ("docs", "\n\n", "docs.jsonl", "no records"),
        ("queries", "", "queries.jsonl", "no records"),
        ("docs", '{"doc_id": "d1", "text": ""}\n{"doc_id": "d2", "title": " ", "text": ""}\n'
                 '{"doc_id": "d3", "text": null}\n', "docs.jsonl", "every title/text is empty"),
        ("queries", '{"query_id": "q1", "text": " "}\n{"query_id": "q2", "text": ""}\n', "queries.jsonl",
         "every text is empty"),
    ]:
        (tmp_path / kind / str(len(body))).mkdir(parents=True)
        folder = _folder(tmp_path / kind / str(len(body)), **{kind: body})
        with pytest.raises(DataError) as info:
            load_collection(folder)
        assert str(info.value).startswith(f"{folder / file}: "), str(info.value)
        assert fragment in str(info.value)
    # one empty document among others is fine
    (tmp_path / "ok").mkdir()
    folder = _folder(tmp_path / "ok", docs='{"doc_id": "d1", "text": ""}\n{"doc_id": "d2", "text": "two"}\n'
                                          '{"doc_id": "d3", "text": "three"}\n')
    assert load_collection(folder).docs["d1"] == ""


def test_negative_grades_load_as_zero(tmp_path):
    folder = _folder(tmp_path, qrels="q1 0 d1 -2\nq1 0 d2 1\nq2 0 d3 -1\n")
    assert load_collection(folder).qrels == {"q1": {"d1": 0, "d2": 1}, "q2": {"d3": 0}}


def test_split_overlap_and_missing(tmp_path):
    folder = _folder(tmp_path, splits='{"train": ["q1"], "test": ["q1", "q2"]}')
    with pytest.raises(DataError, match="in split 'train' and again in 'test'"):
        load_collection(folder)
    with pytest.raises(FileNotFoundError, match="shipped collection"):
        load_collection(tmp_path / "nothing_here")
    (tmp_path / "docs.jsonl").unlink()
    with pytest.raises(DataError, match="docs.jsonl: file not found"):
        load_collection(tmp_path)
