"""`pile-jax train` with the issue-20 contract config (configs/train_msmarco.yaml): a tiny folder in
the MS MARCO passage layout, a margin TSV teacher and a rank-transformed TREC-run teacher that
scores only some of the pairs; training groups drawn from the joined teacher table, the dev split
re-ranks the first-stage run. One 4-step run (1-layer student, max_length 32) is shared; the
resume test deletes its last checkpoint and resumes it: the final params must be bit-identical."""

import json
import os
import shutil

import numpy as np
import pytest

from pile_jax.data.trec import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("river mountain forest castle engine garden violin harbor planet museum winter desert island "
         "bridge market doctor letter silver rabbit window summer camera jungle pepper ocean").split()


def _write_msmarco(folder):
    """12 passages; 8 train queries, 3 dev queries, each query = 2 words planted in its positive."""
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    passages, queries = {}, {}
    for p in range(12):
        passages[p] = " ".join(rng.choice(WORDS, 10))
    for i in range(11):
        qid, pos = 100 + i, i
        words = [WORDS[(2 * i) % len(WORDS)], WORDS[(2 * i + 1) % len(WORDS)]]
        queries[qid] = (" ".join(words), pos)
        passages[pos] = " ".join(words) + " " + passages[pos]
    with open(os.path.join(folder, "collection.tsv"), "w") as f:
        f.writelines(f"{p}\t{t}\n" for p, t in passages.items())
    for split, qids in (("train", range(100, 108)), ("dev.small", range(108, 111))):
        with open(os.path.join(folder, f"queries.{split}.tsv"), "w") as f:
            f.writelines(f"{q}\t{queries[q][0]}\n" for q in qids)
        with open(os.path.join(folder, f"qrels.{split}.tsv"), "w") as f:
            f.writelines(f"{q}\t0\t{queries[q][1]}\t1\n" for q in qids)
    with open(os.path.join(folder, "teacher_margin.tsv"), "w") as fm, \
            open(os.path.join(folder, "teacher_run.trec"), "w") as fr:
        for q in range(100, 108):
            pos = queries[q][1]
            negs = [(pos + k) % 12 for k in (1, 2, 3, 5)]
            for k, n in enumerate(negs):
                fm.write(f"9.5\t{k - 1.5}\t{q}\t{pos}\t{n}\n")
            for r, d in enumerate([pos] + negs[:2], 1):          # the second teacher lacks two negatives
                fr.write(f"{q} Q0 {d} {r} {10 - r} llm\n")
    with open(os.path.join(folder, "dev_run.trec"), "w") as f:
        for q in range(108, 111):
            pos = queries[q][1]
            for r, d in enumerate([(pos + 3) % 12, pos, (pos + 1) % 12, (pos + 7) % 12], 1):
                f.write(f"{q} Q0 {d} {r} {20 - r} bm25\n")


def _argv(data, out, *extra):
    sets = [f"data.collection={data}", f"candidates.eval_run={data}/dev_run.trec",
            f"teachers.0.path={data}/teacher_margin.tsv", f"teachers.1.path={data}/teacher_run.trec",
            "student.max_length=32", "student.max_query_length=8", "train.batch_size=4", "train.steps=4",
            "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.progress=false", "train.log_every=1",
            "train_groups.size=4", *extra]
    return ["train", os.path.join(ROOT, "configs", "train_msmarco.yaml"), "--out", str(out)] + \
        [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pile_jax.cli import main

    root = tmp_path_factory.mktemp("msmarco")
    data, out = root / "tiny", root / "out"
    _write_msmarco(data)
    assert main(_argv(data, out)) == 0
    return data, out


def test_contract_config_trains_and_reranks_the_dev_run(trained):
    data, out = trained
    run = read_run(out / "dev.small.trec")
    first_stage = read_run(data / "dev_run.trec")
    assert list(run) == ["108", "109", "110"]
    assert {q: sorted(d for d, _ in r) for q, r in run.items()} == {q: sorted(d for d, _ in r) for q, r in first_stage.items()}
    m = json.loads((out / "dev.small_metrics.json").read_text())
    assert m["queries"] == 3 and m["pairs"] == 12 and set(m["seconds"]) >= {"teachers", "train", "eval"}
    # the metrics are those of the written run (recomputed here from the file: 1/rank of the positive)
    qrels = {"108": "8", "109": "9", "110": "10"}
    rr = [1.0 / ([d for d, _ in run[q]].index(p) + 1) for q, p in qrels.items()]
    assert m["metrics"]["recip_rank"] == pytest.approx(np.mean(rr))
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4] and all(np.isfinite(h["loss"]) for h in history)
    # the teacher table was joined once, beside the collection's store: absent scores stayed absent
    from pile_jax.data.teacher_table import TeacherTable

    tables = [os.path.join(r, "table") for r, d, _ in os.walk(data) if "table" in d]
    assert len(tables) == 1
    t = TeacherTable.load(tables[0])
    assert t.names == ["ensemble", "second"] and len(t.query_rows) == 8 and len(t.doc_rows) == 40
    assert t.present[0].all() and t.present[1].sum() == 24
    # one token store of the corpus, shared by the train collate and the re-ranking
    assert len(os.listdir(data / ".pile_jax" / "docs" / "tokens")) == 1


def test_resume_is_bit_identical_with_the_on_disk_stores(trained, tmp_path):
    from pile_jax.cli import main

    data, out = trained
    again = tmp_path / "again"
    shutil.copytree(out, again)
    shutil.rmtree(again / "checkpoints" / "4")
    for f in ("final_params.npz", "dev.small.trec", "dev.small_metrics.json"):
        (again / f).unlink()
    assert main(_argv(data, again, ) + ["--resume"]) == 0
    assert "resumed from step 2" in (again / "log.txt").read_text()
    with np.load(out / "final_params.npz") as a, np.load(again / "final_params.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (again / "dev.small.trec").read_text() == (out / "dev.small.trec").read_text()
