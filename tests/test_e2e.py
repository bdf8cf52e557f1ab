"""End to end: `pile-jax run --quick` on real Cranfield with real MiniLM weights.

Runs the CLI in a subprocess (one CPU device, as a user would), then checks the artifacts and
that the reported metrics equal (a) the core metrics recomputed from the written TREC run files
and (b) trec_eval's own code (pytrec_eval) on the same files.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.cli import user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pile_jax.cli", "run", os.path.join(ROOT, "configs", "cranfield_pile.yaml"),
         "--quick", "--out", str(out)],
        cwd=ROOT, env=user_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _STDERR["quick"] = proc.stderr
    return out, proc.stdout


_STDERR: dict = {}


def test_artifacts_exist_and_are_consistent(quick_run):
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    for name in ("results.md", "results.png", "log.txt"):
        assert (out / name).stat().st_size > 0
    assert "| system |" in stdout  # the table is printed
    # every teacher wrote a score file covering the candidates
    for t in results["teachers"]:
        lines = (out / "teachers" / f"{t}.tsv").read_text().splitlines()
        assert len(lines) > 0 and all(len(l.split()) == 3 for l in lines)
    # one run file per (system, seed), six TREC columns
    systems = results["systems"]
    assert {"bm25", "student_hard_labels", "student_pile_margin_mse", "ensemble_mean"} <= set(systems)
    assert "ensemble_pile" not in systems  # label-supervised: a training target, not a test system
    for fname in results["runs"]:
        rows = (out / "runs" / fname).read_text().splitlines()
        assert rows and all(len(r.split()) == 6 and r.split()[1] == "Q0" for r in rows)
    for system, stats in systems.items():
        files = [f for f in results["runs"] if f.startswith(system + "__seed")]
        assert len(files) == stats["ndcg_cut_10"]["n"]
        vals = [results["runs"][f]["ndcg_cut_10"] for f in files]
        assert stats["ndcg_cut_10"]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
    assert systems["student_hard_labels"]["ndcg_cut_10"]["n"] == len(results["seeds"]) >= 2


def test_reported_metrics_match_core_metrics_and_trec_eval(quick_run):
    out, _ = quick_run
    from pile_jax.data import load_collection, read_run
    from pile_jax.train.evaluate import mean_metrics, run_metrics

    results = json.loads((out / "results.json").read_text())
    coll = load_collection("cranfield")
    qids = coll.split_qids("test")[: results["config"]["data"]["max_queries_per_split"]]
    assert results["eval_queries"] == len(qids)
    qrels = {q: coll.qrels[q] for q in qids}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recip_rank", "map"})
    for fname, reported in results["runs"].items():
        run = {q: dict(v) for q, v in read_run(str(out / "runs" / fname)).items()}
        ours = mean_metrics(run_metrics(run, coll.qrels, qids=qids))
        for m in ("ndcg_cut_10", "recip_rank", "map", "pnr"):
            assert ours[m] == pytest.approx(reported[m], abs=1e-6), (fname, m)
        ref = evaluator.evaluate({q: run.get(q, {}) for q in qids})
        for m in ("ndcg_cut_10", "recip_rank", "map"):
            trec = np.mean([ref[q][m] if q in ref else 0.0 for q in qids])
            assert reported[m] == pytest.approx(trec, abs=1e-5), (fname, m)


def test_students_learn(quick_run):
    out, _ = quick_run
    hist = json.loads((out / "students" / "hard_labels__seed0" / "history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) >= 2 and np.isfinite(losses).all()


def test_pipeline_two_tower_student_kind(tmp_path):
    """`students.kind`/`options` reach the pipeline's students: a 6-layer BERT-dot with mean pooling
    and L2 normalisation, trained at learning rate 0, is the pretrained bi-encoder, so its run file
    must equal the bi-encoder teacher's scores (that teacher is checked against sentence-transformers
    in test_reranker.py). An unknown kind is a config error naming the key."""
    from pile_jax import config as C
    from pile_jax import pipeline
    from pile_jax.data.trec import read_teacher_scores

    cfg = C.load_config(os.path.join(ROOT, "configs", "cranfield_pile.yaml"), presets=["quick"], overrides=[
        "data.max_queries_per_split=4",
        "model={base: all-MiniLM-L6-v2, max_length: 64, max_query_length: 62, max_doc_length: 62}",
        "teachers=[{name: biencoder, kind: biencoder_cosine}]",
        "ensembles.methods={mean: {name: mean}}",
        "students={kind: bert_dot, options: {pooling: mean, normalize: true}, num_layers: 6, seeds: [0],"
        " select_on_dev: false, runs: {hard_labels: {label_losses: {pairwise_logistic: 1.0}}},"
        " train: {batch_size: 4, steps: 1, learning_rate: 0.0, log_every: 1, progress: false}}",  # 4 test devices
    ])
    out = tmp_path / "run"
    pipeline.run(cfg, out=str(out), log=lambda s: None)
    teacher = read_teacher_scores(str(out / "teachers" / "biencoder.tsv"))
    rows = (out / "runs" / "student_hard_labels__seed0.trec").read_text().splitlines()
    assert rows
    for row in rows:
        qid, _, doc, _, score, _ = row.split()
        assert abs(float(score) - teacher[qid][doc]) < 2e-5, (qid, doc)
    # the exported best seed is a SentenceTransformer whose dot product is that score
    from sentence_transformers import SentenceTransformer

    from pile_jax.data import load_collection

    coll = load_collection("cranfield")
    st = SentenceTransformer(str(out / "models" / "student_hard_labels"), device="cpu")
    assert st.max_seq_length == 64
    qid, _, doc, _, score, _ = rows[0].split()
    q, d = st.encode([coll.queries[qid], coll.docs[doc]], convert_to_numpy=True)
    assert abs(float(q @ d) - float(score)) < 2e-5
    cfg["students"]["kind"] = "bm42"
    with pytest.raises(C.ConfigError, match="students.kind"):
        pipeline.run(cfg, out=str(tmp_path / "bad"), log=lambda s: None)


def test_output_starts_with_pile_jax_lines_and_students_are_exported(quick_run):
    import re

    from pile_jax import rankers
    from pile_jax.data import load_collection, read_run

    out, _ = quick_run
    err = _STDERR["quick"].splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d pile-jax run .* --quick -> .*", err[0]), err[:3]
    assert not [l for l in err if "PyTorch was not found" in l or ("WARNING" in l and "head" in l)]
    results = json.loads((out / "results.json").read_text())
    students = sorted(s for s in results["systems"] if s.startswith("student_"))
    assert sorted(results["exported_models"]) == students
    coll = load_collection("cranfield")
    for system in students:
        info = results["exported_models"][system]
        folder = out / "models" / system
        assert (folder / "README.md").is_file() and (folder / "pile_jax_student.json").is_file()
        ranker = rankers.load_student(folder)
        run = read_run(out / "runs" / f"{system}__seed{info['seed']}.trec")
        qid = sorted(run)[0]
        docs = [d for d, _ in run[qid]][:5]
        got = np.asarray(ranker.score_fn(ranker.params, ranker.featurize([coll.queries[qid]], [[coll.docs[d] for d in docs]])))
        np.testing.assert_allclose(got[0], [dict(run[qid])[d] for d in docs], atol=1e-4)
