"""`pile-jax train` work-folder rules (pile_jax.train_job): a fresh run refuses a folder holding
an earlier run's checkpoints; --resume refuses a changed student/objective/teachers/learning rate/
batch size/seed unless forced. (The full job runs in test_train_resume.py.)"""

import json

import pytest

from pile_jax import config as C
from pile_jax.train_job import check_work_folder, run_spec


def _cfg(**train):
    return {"student": {"num_layers": 2}, "objective": {"label_losses": {"pairwise_logistic": 1.0}},
            "teachers": [{"name": "bm25", "kind": "bm25"}], "train": {"learning_rate": 1e-4, "batch_size": 4, **train}}


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    check_work_folder(tmp_path, run_spec(_cfg()), resume=False)  # empty folder: fine
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    with pytest.raises(C.ConfigError, match="--resume"):
        check_work_folder(tmp_path, run_spec(_cfg()), resume=False)


def test_resume_refuses_a_changed_run_spec_unless_forced(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"run_spec": run_spec(_cfg())}))
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    check_work_folder(tmp_path, run_spec(_cfg(steps=99, log_every=3)), resume=True)  # length/logging may change
    with pytest.raises(C.ConfigError, match="learning_rate"):
        check_work_folder(tmp_path, run_spec(_cfg(learning_rate=3e-4)), resume=True)
    with pytest.raises(C.ConfigError, match="seed"):
        check_work_folder(tmp_path, run_spec(_cfg(seed=1)), resume=True)
    other = _cfg()
    other["teachers"] = [{"name": "bm25", "kind": "biencoder_cosine"}]
    with pytest.raises(C.ConfigError, match="teachers"):
        check_work_folder(tmp_path, run_spec(other), resume=True)
    check_work_folder(tmp_path, run_spec(_cfg(learning_rate=3e-4)), resume=True, force=True)


@pytest.mark.parametrize("change, key", [
    (dict(seed=1), "seed"), (dict(batch_size=8), "batch_size"),
    ({"data": {"collection": "scifact"}}, "data"), ({"train_groups": {"size": 4}}, "train_groups"),
])
def test_force_resume_refuses_what_the_loader_position_depends_on(tmp_path, change, key):
    """issue 22: --force-resume with a changed seed / batch size crashed in the loader; data
    settings ended in an internal traceback. They are refused up front, naming the key."""
    (tmp_path / "model.json").write_text(json.dumps({"run_spec": run_spec(_cfg())}))
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    train = {k: v for k, v in change.items() if k in ("seed", "batch_size")}
    cfg = _cfg(**train)
    cfg.update({k: v for k, v in change.items() if k not in train})
    for force in (False, True):
        with pytest.raises(C.ConfigError, match=key) as info:
            check_work_folder(tmp_path, run_spec(cfg), resume=True, force=force)
        assert ("--force-resume cannot" in str(info.value)) == force


def test_resume_without_a_checkpoint_says_so(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="pile_jax"):
        check_work_folder(tmp_path, run_spec(_cfg()), resume=True)
    assert any("no checkpoint to resume from" in r.getMessage() and "starts from step 0" in r.getMessage()
               for r in caplog.records), caplog.records


@pytest.mark.parametrize("kind,options", [("query_encoder", {"doc_layers": 1}), ("bert_dot", {"pooling": "mean"})])
def test_pile_jax_train_trains_a_two_tower_student_kind(tmp_path, kind, options):
    """`pile-jax train` takes `student.kind` (its schema used to reject it): a few steps on a few
    real Cranfield queries train the configured kind, and the export is that kind with trained
    params (scores differ from the untrained student's; `pile-jax export` of the work folder
    rebuilds the same student from model.json and gives the same scores)."""
    import logging
    import os

    import numpy as np

    from pile_jax import rankers
    from pile_jax.cli import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work, again = tmp_path / "work", tmp_path / "again"
    student = {"kind": kind, "num_layers": 1, "max_length": 64, "max_query_length": 16, "options": options}
    argv = ["train", os.path.join(root, "configs", "train_hard_labels.yaml"), "--out", str(work), "-q",
            "--set", f"student={json.dumps(student)}", "--set", "candidates.bm25_depth=4",
            "--set", "data.max_queries_per_split={train: 8, dev: 3, test: 3}",
            "--set", "train={batch_size: 2, steps: 3, learning_rate: 1.0e-3, eval_every: null, checkpoint_every: 3, "
                     "parallel: none, progress: false}"]
    pj, root_log = logging.getLogger("pile_jax"), logging.getLogger()
    saved = (list(pj.handlers), pj.level, pj.propagate, list(root_log.handlers))
    try:
        assert main(argv) == 0
        assert main(["export", str(work), "--out", str(again), "-q"]) == 0
    finally:  # the CLI configures logging for the process: undo it for the other tests
        pj.handlers[:], root_log.handlers[:] = saved[0], saved[3]
        pj.setLevel(saved[1])
        pj.propagate = saved[2]
    metrics = json.loads((work / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["ndcg_cut_10"] <= 1.0
    info = json.loads((work / "export" / "pile_jax_student.json").read_text())
    assert info["kind"] == kind
    trained, reexported = rankers.load_student(work / "export"), rankers.load_student(again)
    init = rankers.student_from_config(student, seed=0)
    queries = ["flow over a flat plate", "heat transfer at hypersonic speeds"]
    docs = [["boundary layer transition on a flat plate", "shock waves"], ["heat transfer", "wing flutter"]]

    def scores(r):
        batch = r.featurize(queries, docs)
        batch["mask"] = np.ones((2, 2), bool)
        return np.asarray(r.score_fn(r.params, batch))

    assert not np.allclose(scores(trained), scores(init), atol=1e-6)     # it trained
    np.testing.assert_allclose(scores(reexported), scores(trained), atol=1e-6)
