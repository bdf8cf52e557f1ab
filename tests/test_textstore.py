"""Issue 20 (h20data): on-disk text stores, the three collection layouts, the corpus token store.

References: plain Python dicts of the same hand-written records (lookups, collections), the
in-memory ``tokenize_texts`` (token ids), counts of tokenizer calls (nothing tokenised twice),
file:line messages written by hand. Small files in tmp_path only.
"""

import os
import signal
import tracemalloc

import numpy as np
import pytest

from pile_jax.cli import main
from pile_jax.data import DataError, Preempted, load_collection
from pile_jax.data.textstore import TextStore

# passages with quotes, a tab-free "csv-like" comma, unicode: MS MARCO's collection.tsv quoting is off
PASSAGES = {"0": 'The "Manhattan Project" was a research effort', "1": "heat, shock and the boundary layer",
            "7": "Curaçao's mach jets — a \"quoted\" word", "12": "wing flow over a delta wing"}


def _msmarco(folder, collection=None):
    folder.mkdir(parents=True, exist_ok=True)
    lines = collection if collection is not None else [f"{k}\t{v}\n" for k, v in PASSAGES.items()]
    (folder / "collection.tsv").write_text("".join(lines), encoding="utf-8")
    (folder / "queries.train.tsv").write_text("100\twhat was the manhattan project\n101\tdelta wing flow\n")
    (folder / "queries.dev.small.tsv").write_text("102\tmach jet\n")
    (folder / "queries.dev.tsv").write_text("103\theat shock\n102\tmach jet\n")   # dev.small is part of dev
    (folder / "qrels.train.tsv").write_text("100\t0\t0\t1\n101\t0\t12\t1\n")
    (folder / "qrels.dev.small.tsv").write_text("102\t0\t7\t1\n")
    return folder


def _beir(folder):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        '{"_id": "doc-a", "title": "Wing", "text": "flow over a \\"delta\\" wing", "metadata": {}}\n'
        '{"_id": "doc-b", "title": "", "text": "heat shock"}\n{"_id": "c", "text": "mach jet"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "delta wing"}\n{"_id": "q2", "text": "jets"}\n'
                                          '{"_id": "q3", "text": "heat"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tdoc-a\t2\nq2\tc\t1\nq1\tdoc-b\t0\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\tdoc-b\t1\n")
    return folder


# ------------------------------------------------------------------------------ the store
@pytest.mark.parametrize("ids", [["10", "2", "33", "-4", "0"], ["d1", "a", "zz", "b", "é"]])
def test_text_store_answers_like_a_dict(tmp_path, ids):
    texts = [f"text of {i} ✓" for i in ids]
    ref = dict(zip(ids, texts))
    store = TextStore.build(tmp_path / "s", [(ids[:2], texts[:2]), (ids[2:], texts[2:])], source="x")
    assert len(store) == 5 and list(store) == ids and dict(store.items()) == ref
    assert store.id_array().dtype == (np.int64 if ids[0] == "10" else np.dtype("S2"))
    probe = [ids[3], ids[0], "nope", ids[4]]
    assert store.rows(probe, missing="skip").tolist() == [3, 0, -1, 4]
    assert store.rows(np.asarray([[ids[1]], [ids[2]]])).tolist() == [[1], [2]]           # any shape
    assert store.rows([i.encode() for i in ids]).tolist() == [0, 1, 2, 3, 4]          # bytes ids
    assert store.texts(store.rows(ids[::-1])) == texts[::-1] and store.ids_of([4, 0]) == [ids[4], ids[0]]
    with pytest.raises(KeyError, match="nope"):
        store.rows(probe)
    assert "nope" not in store and ids[2] in store
    reopened = TextStore.open(tmp_path / "s")
    assert reopened.fingerprint == store.fingerprint and reopened[ids[1]] == texts[1]


def test_non_canonical_integers_are_other_ids(tmp_path):
    store = TextStore.build(tmp_path / "s", [(["7", "007", "+7"], ["a", "b", "c"])], source="x")
    assert store.id_array().dtype.kind == "S"              # "007" != "7": kept as bytes
    assert store.rows(["007", "7", "+7", "07"], missing="skip").tolist() == [1, 0, 2, -1]
    ints = TextStore.build(tmp_path / "i", [(["7", "12"], ["a", "b"])], source="x")
    assert ints.rows(["007", "7", "12 "], missing="skip").tolist() == [-1, 0, -1]


def test_duplicate_ids_name_the_line(tmp_path):
    with pytest.raises(DataError, match=r"^f\.tsv:9: duplicate id 'a' \(first at line 4\)"):
        TextStore.build(tmp_path / "s", [(["a", "b"], ["x", "y"], [4, 5]), (["a"], ["z"], [9])], source="f.tsv")
    assert not (tmp_path / "s").exists()     # nothing half-built under the final name


def test_rows_builds_no_per_text_dict(tmp_path):
    n = 200_000
    ids = np.arange(n, dtype=np.int64) * 3 + 11
    store = TextStore.build(tmp_path / "s", [(ids, [f"d{i}" for i in range(n)])], source="x")
    tracemalloc.start()
    store = TextStore.open(tmp_path / "s")
    rows = store.rows([str(i) for i in ids[-1000:]] + ["5"], missing="skip")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows[:-1].tolist() == list(range(n - 1000, n)) and rows[-1] == -1
    assert peak < 1_000_000, peak     # a {id: row} dict of 200k entries would take > 10 MB
    assert isinstance(store.id_array(), np.memmap) and store.id_array().dtype == np.int64
    assert not [v for v in vars(store).values() if isinstance(v, dict) and len(v) > 100]


# ------------------------------------------------------------------------------ layouts
def test_msmarco_layout(tmp_path):
    coll = load_collection(_msmarco(tmp_path / "mm"))
    assert coll.layout == "msmarco" and isinstance(coll.docs, TextStore)
    assert dict(coll.docs.items()) == PASSAGES      # quotes kept verbatim
    assert coll.splits == {"dev": ["103", "102"], "dev.small": ["102"], "train": ["100", "101"]}
    assert dict(coll.queries.items()) == {"103": "heat shock", "102": "mach jet", "100": "what was the manhattan project",
                                          "101": "delta wing flow"}
    assert coll.qrels == {"102": {"7": 1}, "100": {"0": 1}, "101": {"12": 1}}
    assert coll.split_qrels("dev.small") == {"102": {"7": 1}}
    assert os.path.isdir(tmp_path / "mm" / ".pile_jax" / "docs")


def test_stores_are_reopened_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    folder = _msmarco(tmp_path / "mm")
    first = load_collection(folder)
    built = []
    real = TextStore.build.__func__
    monkeypatch.setattr(TextStore, "build", classmethod(lambda cls, *a, **k: built.append(a[0]) or real(cls, *a, **k)))
    again = load_collection(folder)
    assert built == [] and again.docs.fingerprint == first.docs.fingerprint
    (folder / ".pile_jax" / "docs" / "tokens" / "x").mkdir(parents=True)   # a derived folder (token stores)
    os.utime(folder / "collection.tsv", ns=(1, 1))                         # touched, same texts
    touched = load_collection(folder)
    assert len(built) == 1 and touched.docs.fingerprint == first.docs.fingerprint
    assert (folder / ".pile_jax" / "docs" / "tokens" / "x").is_dir()       # kept: same texts
    with open(folder / "collection.tsv", "a") as f:
        f.write("99\tnew passage\n")
    changed = load_collection(folder)
    assert [os.path.basename(p) for p in built] == ["docs", "docs"] and changed.docs["99"] == "new passage"
    assert not (folder / ".pile_jax" / "docs" / "tokens").exists()        # other texts: derived stores dropped


@pytest.mark.parametrize("bad, where, what", [
    ("5\tok\n6 missing tab\n", "collection.tsv:2", "expected 2 TAB-separated columns, found 1"),
    ("5\tok\n6\ta\tb\n", "collection.tsv:2", "found 3"),
    ("5\tok\n\n5\tagain\n", "collection.tsv:3", "duplicate id '5' (first at line 1)"),
])
def test_msmarco_malformed_lines(tmp_path, bad, where, what):
    with pytest.raises(DataError) as e:
        load_collection(_msmarco(tmp_path / "mm", [bad]))
    assert str(e.value).startswith(str(tmp_path / "mm" / where) + ": ") and what in str(e.value)


def test_msmarco_bad_qrels_and_the_cli_exits_2(tmp_path, capsys):
    folder = _msmarco(tmp_path / "mm")
    (folder / "qrels.train.tsv").write_text("100\t0\t0\t1\n101\t0\t12\tone\n")
    with pytest.raises(DataError, match=r"qrels\.train\.tsv:2: grade 'one' is not an integer"):
        load_collection(folder)
    (folder / "qrels.train.tsv").write_text("100 0 0 1\n101 0 12 3\n")            # TREC style: spaces
    assert load_collection(folder).qrels["101"] == {"12": 3}
    (folder / "qrels.train.tsv").write_text("100\t0\t0\t1\n\n101\t0\t55\t1\n")
    (tmp_path / "r.run").write_text("")
    assert main(["eval", "--collection", str(folder), "--run", str(tmp_path / "r.run"), "--split", "train"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]      # (above it: the stores' INFO log lines)
    assert last == f"pile-jax eval: error: {folder / 'qrels.train.tsv'}:3: unknown doc id '55'"


def test_beir_layout(tmp_path):
    coll = load_collection(_beir(tmp_path / "beir"))
    assert coll.layout == "beir"
    assert dict(coll.docs.items()) == {"doc-a": 'Wing flow over a "delta" wing', "doc-b": "heat shock", "c": "mach jet"}
    assert dict(coll.queries.items()) == {"q1": "delta wing", "q2": "jets", "q3": "heat"}
    assert coll.splits == {"test": ["q1", "q2"], "train": ["q3"]}
    assert coll.qrels == {"q1": {"doc-a": 2, "doc-b": 0}, "q2": {"c": 1}, "q3": {"doc-b": 1}}


def test_beir_malformed_json_line(tmp_path):
    folder = _beir(tmp_path / "beir")
    with open(folder / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d", "text": "broken\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:4: malformed JSON"):
        load_collection(folder)


def test_pile_jax_layout_in_stores_equals_the_dicts(tmp_path):
    import shutil

    from pile_jax.data.collection import _resolve

    shutil.copytree(str(_resolve("scifact")[1]), tmp_path / "scifact")
    plain, stored = load_collection("scifact"), load_collection(tmp_path / "scifact", store=True)
    assert isinstance(stored.docs, TextStore) and not isinstance(plain.docs, TextStore)
    assert list(stored.docs) == list(plain.docs)
    assert dict(stored.docs.items()) == plain.docs and dict(stored.queries.items()) == plain.queries
    assert stored.qrels == plain.qrels and stored.splits == plain.splits


# ------------------------------------------------------------------------------ token store
class CountingBackend:
    """A tokenizers.Tokenizer wrapper counting the texts it encodes (optionally sending SIGTERM
    to this process on its ``stop_at``-th call)."""

    def __init__(self, backend, stop_at=None):
        self.backend, self.calls, self.texts, self.stop_at = backend, 0, 0, stop_at

    def to_str(self):
        return self.backend.to_str()

    def encode_batch(self, texts, add_special_tokens=True):
        self.calls += 1
        self.texts += len(texts)
        if self.stop_at is not None and self.calls == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)


@pytest.fixture(scope="module")
def pair_features():
    from tokenizers import Tokenizer

    from pile_jax.models.hub import resolve_model_path
    from pile_jax.models.tokenize import PairTokenizer

    # the checkpoint's tokenizer.json read by `tokenizers` directly (no transformers import)
    backend = Tokenizer.from_file(os.path.join(resolve_model_path("all-MiniLM-L6-v2"), "tokenizer.json"))
    return PairTokenizer(backend, max_length=24, max_query_length=8, pad_token_id=0)


def _corpus(tmp_path, n=23):
    rng = np.random.default_rng(0)
    words = ["wing", "flow", "heat", "shock", "boundary", "layer", "mach", "jet", "über", "\"quoted\"", "pressure"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 30)))) for _ in range(n)]
    ids = [str(i * 5) for i in range(n)]
    return TextStore.build(tmp_path / "docs", [(ids, texts)], source="x"), ids, texts


def test_token_store_chunks_equal_one_pass_and_tokenize_texts(tmp_path, pair_features):
    from pile_jax.models.token_store import token_store_for
    from pile_jax.models.tokenize import tokenize_texts

    store, ids, texts = _corpus(tmp_path)
    ref = tokenize_texts(pair_features._backend, texts, ids)
    whole = token_store_for(pair_features, store, max_tokens=None, chunk=1000)
    assert np.array_equal(whole.tokens, ref.tokens) and np.array_equal(whole.offsets, ref.offsets)
    tiny = token_store_for(pair_features._backend, store, max_tokens=7, chunk=3, batch=2)
    rows = tiny.rows(ids[::-1] + [""])
    assert rows.tolist() == list(range(len(ids)))[::-1] + [len(ids)]
    for r in range(len(ids)):
        assert tiny.ids(r).tolist() == ref.ids(r)[:7].tolist()
    assert tiny.ids(len(ids)).size == 0 and tiny.index[""] == len(ids)


def test_a_second_call_tokenises_nothing_and_a_restart_continues(tmp_path, pair_features):
    from pile_jax.models.token_store import token_store_for

    store, ids, texts = _corpus(tmp_path)
    stopping = CountingBackend(pair_features._backend, stop_at=3)     # SIGTERM during chunk 3 of 6
    with pytest.raises(Preempted, match="finished chunks are kept") as e:
        token_store_for(stopping, store, max_tokens=16, chunk=4, batch=4)
    assert e.value.exit_code == 75
    parts = tmp_path / "docs" / "tokens"
    assert len(list(parts.rglob("0*.npz"))) == 2          # chunks 1-2 kept, chunk 3 dropped
    counting = CountingBackend(pair_features._backend)
    resumed = token_store_for(counting, store, max_tokens=16, chunk=4, batch=4)
    assert counting.texts == len(ids) - 8                  # only the 4 missing chunks
    fresh = token_store_for(pair_features._backend, store, max_tokens=16, chunk=100)   # built once: read back
    assert np.array_equal(resumed.tokens, fresh.tokens)
    again = CountingBackend(pair_features._backend)
    token_store_for(again, store, max_tokens=16)           # another run / seed / chunk size
    assert again.calls == 0
    from pile_jax.models.tokenize import tokenize_texts

    ref = tokenize_texts(pair_features._backend, texts, ids)
    assert all(resumed.ids(r).tolist() == ref.ids(r)[:16].tolist() for r in range(len(ids)))


def test_collate_and_scoring_on_a_text_store_equal_the_dict_path(tmp_path, pair_features):
    from pile_jax.models.token_store import DiskTokenStore
    from pile_jax.scoring import Ranker, make_collate, score_candidates

    store, ids, texts = _corpus(tmp_path)
    docs = dict(zip(ids, texts))
    queries = {"q1": "wing flow", "q2": "mach jet shock"}
    ranker = Ranker(params={"w": np.float32(1.0)}, featurize=None, kind="toy", meta={"features": pair_features},
                    score_fn=lambda p, b, rng=None, train=False: p["w"] * (b["input_ids"] * b["attention_mask"]).sum(-1)
                    * 1e-3 + b["attention_mask"].sum(-1))
    records = [{"query_id": "q1", "doc_ids": [ids[3], ids[0], ""], "labels": np.zeros(3), "label_mask": np.ones(3, bool),
                "mask": np.asarray([1, 1, 0], bool), "teacher_scores": np.zeros((1, 3))},
               {"query_id": "q2", "doc_ids": [ids[20], ids[7], ids[5]], "labels": np.zeros(3),
                "label_mask": np.ones(3, bool), "mask": np.ones(3, bool), "teacher_scores": np.zeros((1, 3))}]
    ref, ours = make_collate(ranker, queries, docs), make_collate(ranker, queries, store)
    assert isinstance(ours.doc_store, DiskTokenStore)
    for key, value in ref(records).items():
        np.testing.assert_array_equal(ours(records)[key], value, err_msg=key)
    cands = {"q1": [ids[1], ids[2], ids[22]], "q2": [ids[9]]}
    expected = score_candidates(ranker, ranker.params, cands, queries, docs)
    got = score_candidates(ranker, ranker.params, cands, queries, store)
    assert got == expected and len(got["q1"]) == 3


def test_sigterm_while_a_text_store_is_built_exits_75_and_leaves_no_store(tmp_path, capsys, monkeypatch):
    from pile_jax.data import layouts

    folder = _msmarco(tmp_path / "mm")
    real = layouts.read_tsv_texts

    def stopping(path, **kw):
        for k, chunk in enumerate(real(path, **kw)):
            yield chunk
            if path.endswith("collection.tsv"):
                os.kill(os.getpid(), signal.SIGTERM)      # after the first chunk

    monkeypatch.setattr(layouts, "read_tsv_texts", stopping)
    (tmp_path / "r.run").write_text("")
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["eval", "--collection", str(folder), "--run", str(tmp_path / "r.run"), "--split", "train"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 75 and last.startswith("pile-jax eval: preempted (SIGTERM): stopped building the text store")
    assert not (folder / ".pile_jax" / "docs").exists() and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(layouts, "read_tsv_texts", real)
    assert dict(load_collection(folder).docs.items()) == PASSAGES
