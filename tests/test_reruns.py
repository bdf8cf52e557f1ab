"""Reruns of `pile-jax run` into the same --out (issue 22): a student's work folder keeps the spec
of the run that made it; an unchanged rerun resumes it, a changed one starts it clean and names
the changed keys, so `pile-jax export --which latest|best` can never export an older model under a
newer card. Tiny runs: 4 queries per split, BM25 as the only teacher, a 1-layer BERT-dot, 2 steps."""

import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "data.max_queries_per_split=4", "first_stage.depth=8", "train_groups.size=8",
    "model={base: all-MiniLM-L6-v2, max_length: 32, max_query_length: 16, max_doc_length: 24}",
    "teachers=[{name: bm25, kind: bm25}]", "transfer.queries=0", "ensembles.methods={mean: {name: mean}}",
    "students={kind: bert_dot, num_layers: 1, seeds: [0], select_on_dev: true, report_init: false,"
    " runs: {kd: {distill_losses: {margin_mse: 1.0}}},"
    " train: {batch_size: 4, steps: 2, parallel: none, checkpoint_every: 1, learning_rate: 0.001, log_every: 1,"
    " progress: false}}",
]


def _cfg(*extra):
    from pile_jax import config as C

    return C.load_config(os.path.join(ROOT, "configs", "cranfield_pile.yaml"), presets=["quick"],
                         overrides=TINY + list(extra))


def _run(cfg, out):
    from pile_jax import pipeline

    lines = []
    pipeline.run(cfg, out=str(out), log=lines.append)
    return lines



def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _export(work, out, which):
    import logging

    from pile_jax.cli import main

    pj, root = logging.getLogger("pile_jax"), logging.getLogger()
    saved = (list(pj.handlers), pj.level, list(root.handlers))
    try:
        return main(["export", str(work), "--out", str(out), "--which", which, "-q"])
    finally:
        pj.handlers[:], root.handlers[:] = saved[0], saved[2]
        pj.setLevel(saved[1])


def test_rerun_with_a_changed_config_starts_the_student_clean_and_exports_the_new_model(tmp_path):
    from pile_jax import rankers

    out = tmp_path / "run"
    _run(_cfg(), out)
    work = out / "students" / "kd__seed0"
    first = _arrays(work / "final_params.npz")
    assert json.loads((work / "model.json").read_text())["run_spec"]["config"]["students"]["train"][
        "learning_rate"] == 0.001

    # unchanged rerun: resumed from the finished checkpoint, not trained again
    lines = _run(_cfg(), out)
    assert any("resumed from step 2" in l for l in lines), lines
    np.testing.assert_array_equal(_arrays(work / "final_params.npz")["['encoder']['layer_0']['query']['kernel']"],
                                  first["['encoder']['layer_0']['query']['kernel']"])

    # a new learning rate: the log names the key; checkpoints, best and final params are the new run's
    lines = _run(_cfg("students.train.learning_rate=0.01"), out)
    clean = [l for l in lines if "starting this student clean" in l]
    assert clean and "students.train.learning_rate" in clean[0], lines
    assert not any("resumed" in l for l in lines)
    second = _arrays(work / "final_params.npz")
    key = "['encoder']['layer_0']['query']['kernel']"
    assert not np.array_equal(first[key], second[key])
    meta = json.loads((work / "model.json").read_text())
    assert meta["run_spec"]["config"]["students"]["train"]["learning_rate"] == 0.01
    assert meta["card"]["metrics"]

    for which in ("latest", "best"):
        assert _export(work, tmp_path / which, which) == 0
        loaded = rankers.load_student(tmp_path / which)
        ref = _arrays(work / ("final_params.npz" if which == "latest" else "best_params.npz"))
        got = np.asarray(loaded.params["encoder"]["layer_0"]["query"]["kernel"])
        np.testing.assert_array_equal(got, ref[key])   # the new run's weights, never the first run's
