"""Bad input to the CLI (issue 14): one line on stderr naming the file, line or key, exit code 2,
no traceback, and nothing done before the config is known to be valid. In-process
(`pile_jax.cli.main`), so each case costs milliseconds, not a new interpreter."""

import json
import logging
import os

import pytest

from pile_jax import io as pio
from pile_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collection(folder, splits=None):
    """Two queries over four documents; q0 judges d0 (2) and d1 (0), d2/d3 are unjudged."""
    folder.mkdir(parents=True)
    docs = ["wing flow", "heat shock", "boundary layer", "mach jet"]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"doc_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(docs)))
    (folder / "queries.jsonl").write_text('{"query_id": "q0", "text": "wing"}\n{"query_id": "q1", "text": "heat"}\n'
                                          '{"query_id": "q2", "text": "mach"}\n')
    (folder / "qrels.tsv").write_text("q0 0 d0 2\nq0 0 d1 0\nq1 0 d1 1\nq1 0 d2 0\nq2 0 d3 1\nq2 0 d0 0\n")
    splits = {"train": ["q0"], "dev": ["q1"], "test": ["q2"]} if splits is None else splits
    (folder / "splits.json").write_text(json.dumps(splits))
    return str(folder)


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err
    return err


@pytest.mark.parametrize("command, config, override, fragments", [
    ("train", "train_pile.yaml", "eval.split=valid", ["eval.split", "train, dev, test"]),
    ("train", "train_pile.yaml", "studnet.num_layers=1", ["studnet", "did you mean 'student'"]),
    ("train", "train_pile.yaml", "train.keep_checkpoints=0", ["train.keep_checkpoints", ">= 1"]),
    ("train", "train_pile.yaml", "student.max_length=1000", ["student.max_length", "512 position"]),
    ("run", "cranfield_pile.yaml", "teachers=[{name: x, kind: bm25}, {name: ../y, kind: bm25}]",
     ["teachers[1].name", "simple name"]),
    ("run", "cranfield_pile.yaml", "model.max_length=600", ["model.max_length", "512 position"]),
    ("study", "study_uniform.yaml", "study.train.schedule=cosin", ["study.train.schedule", "'cosine'"]),
    # device counts (4 CPU devices here): checked before BM25 or any teacher (issue 19)
    ("train", "train_margin_mse.yaml", "train.batch_size=6", ["train.batch_size: 6 is not divisible", "use 8"]),
    ("run", "cranfield_pile.yaml", "students.train.batch_size=2", ["students.train.batch_size", "use 4"]),
    ("study", "study_uniform.yaml", "study.train.batch_size=6", ["study.train.batch_size", "= 4; use 8"]),
])
def test_config_errors_before_any_work(tmp_path, capsys, command, config, override, fragments):
    out = tmp_path / "out"
    rc = main([command, os.path.join(ROOT, "configs", config), "--out", str(out), "--set", override])
    assert rc == 2
    _one_line_error(capsys, f"pile-jax {command}: error: ", *fragments)
    assert not out.exists()  # no teacher scored, no folder made


@pytest.mark.parametrize("item", ["=3", "train.steps"])
def test_malformed_set_is_rejected(tmp_path, capsys, item):
    assert main(["train", os.path.join(ROOT, "configs", "train_pile.yaml"), "--out", str(tmp_path / "o"),
                 "--set", item]) == 2
    _one_line_error(capsys, "override")


def test_missing_or_empty_split_names_splits_json(tmp_path, capsys):
    for name, splits, fragment in [("nodev", {"train": ["q0"], "test": ["q2"]}, "no 'dev' split"),
                                   ("emptytest", {"train": ["q0"], "dev": ["q1"], "test": []}, "split 'test' is empty")]:
        coll = _collection(tmp_path / name, splits)
        rc = main(["train", os.path.join(ROOT, "configs", "train_hard_labels.yaml"), "--out", str(tmp_path / f"o_{name}"),
                   "--set", f"data.collection={coll}", "--set", "candidates.bm25_depth=3"])
        assert rc == 2
        _one_line_error(capsys, os.path.join(coll, "splits.json"), fragment)


def _teachers(tmp_path):
    a = {"q0": {"d0": 3.0, "d1": 1.0, "d2": 2.0, "d3": 0.0}, "q1": {"d1": 1.0, "d2": 0.0}}
    b = {"q0": {"d0": 1.0, "d1": 0.0, "d2": 4.0, "d3": 2.0}, "q1": {"d1": 3.0, "d2": 5.0}}
    paths = []
    for name, t in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.tsv"))
        pio.write_text(paths[-1], "".join(f"{q}\t{d}\t{s!r}\n" for q, r in t.items() for d, s in r.items()))
    return a, b, paths


@pytest.mark.parametrize("method, options", [("mean", []), ("pile", ["--option", "num_iters=0"])])
def test_ensemble_unjudged_ignore_scores_every_candidate(tmp_path, capsys, method, options):
    """--unjudged ignore: unjudged candidates are ensembled (not written as 0.0) and only take part
    in no label pair (issue 14 item 7). Reference: the teachers' mean by hand (PILE with 0
    iterations is its starting point, the mean)."""
    from pile_jax.data import read_teacher_scores

    coll = _collection(tmp_path / "coll")
    a, b, paths = _teachers(tmp_path)
    out = str(tmp_path / "z.tsv")
    assert main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", method, *options,
                 "--standardize", "none", "--unjudged", "ignore", "--out", out]) == 0
    z = read_teacher_scores(out)
    expect = {q: {d: (a[q][d] + b[q][d]) / 2 for d in a[q]} for q in a}
    assert z.keys() == expect.keys()
    for q in expect:
        assert z[q].keys() == expect[q].keys()
        for d in expect[q]:
            assert z[q][d] == pytest.approx(expect[q][d], abs=1e-6), (q, d)
    assert z["q0"]["d2"] == pytest.approx(3.0)  # unjudged, and the best-scored item


def test_ensemble_pile_unjudged_ignore_pairs_only_judged_items(tmp_path):
    """PILE under --unjudged ignore: an unjudged item is ensembled but never forms a label pair.
    q0's only labelled pair is d0 > d1, which both teachers already order: no correction, so
    every item keeps the teachers' mean, unjudged ones included (with unjudged=zero, d0 > d2
    is a pair teacher b violates, and the output differs)."""
    from pile_jax.data import read_teacher_scores

    coll = _collection(tmp_path / "coll")
    a, b, paths = _teachers(tmp_path)
    main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", "pile", "--standardize", "none",
          "--unjudged", "ignore", "--out", str(tmp_path / "ig.tsv")])
    main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", "pile", "--standardize", "none",
          "--unjudged", "zero", "--out", str(tmp_path / "zero.tsv")])
    ig, zero = read_teacher_scores(str(tmp_path / "ig.tsv")), read_teacher_scores(str(tmp_path / "zero.tsv"))
    for d in a["q0"]:
        assert ig["q0"][d] == pytest.approx((a["q0"][d] + b["q0"][d]) / 2, abs=1e-6), d
    assert any(abs(zero["q0"][d] - ig["q0"][d]) > 1e-3 for d in a["q0"])


@pytest.mark.parametrize("args, fragments", [
    (["--method", "piel"], ["--method: unknown ensemble 'piel'", "did you mean 'pile'"]),
    (["--method", "pile", "--option", "num_iter=3"], ["--option.num_iter", "did you mean 'num_iters'"]),
    (["--method", "pile", "--option", "damping=2"], ["damping", "(0, 1]"]),
    (["--method", "pile", "--option", "num_iters"], ["--option 'num_iters': expected KEY=VALUE"]),
    (["--method", "weighted_mean", "--option", "weights=[1, 2, 3]"], ["weights"]),
    (["--split", "validation"], ["--split", "no split 'validation'"]),
    (["--split", "test"], ["a.tsv: no scores for any query of split 'test'"]),  # q2 is in no teacher file
])
def test_ensemble_bad_method_and_options(tmp_path, capsys, args, fragments):
    coll = _collection(tmp_path / "coll")
    _, _, paths = _teachers(tmp_path)
    assert main(["ensemble", "--collection", coll, "--teachers", *paths, *args, "--out", str(tmp_path / "z.tsv")]) == 2
    _one_line_error(capsys, *fragments)
    assert not (tmp_path / "z.tsv").exists()


def test_eval_unknown_split_and_empty_run(tmp_path, capsys, caplog):
    coll = _collection(tmp_path / "coll")
    (tmp_path / "empty.run").write_text("")
    assert main(["eval", "--collection", coll, "--run", str(tmp_path / "empty.run"), "--split", "tset"]) == 2
    _one_line_error(capsys, "--split", "'tset'")
    with caplog.at_level(logging.WARNING):
        assert main(["eval", "--collection", coll, "--run", str(tmp_path / "empty.run"), "--split", "test"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("empty.run" in m and "no documents" in m for m in warned), warned
    assert any("every metric is 0" in m for m in warned)
    assert json.loads(capsys.readouterr().out)["ndcg_cut_10"] == 0.0


def test_non_finite_stop_is_one_line(tmp_path, capsys, monkeypatch):
    """The train loop's FloatingPointError (max_nonfinite_steps) reaches the user as one line, exit 2."""
    from pile_jax import jobs

    def diverge(args):
        raise FloatingPointError("non-finite loss or gradients at 5 consecutive logged steps (up to step 40);\n"
                                 "updates were skipped. Check inputs and learning rate.")

    monkeypatch.setattr(jobs, "cmd_train", diverge)
    assert main(["train", os.path.join(ROOT, "configs", "train_pile.yaml")]) == 2
    _one_line_error(capsys, "training stopped", "non-finite loss", "learning rate")


@pytest.mark.parametrize("argv, fragments", [
    (["score", "--teacher", "b=biencoder:all-MiniLM-L6-v2", "--max-length", "600"], ["--max-length 600", "512 position"]),
    (["score", "--teacher", "b=bm25", "--depth", "0"], ["--depth 0", ">= 1"]),
    (["score", "--teacher", "../b=bm25"], ["simple name"]),
    (["eval", "--run", "r.run", "--model", "all-MiniLM-L6-v2", "--max-length", "513"], ["--max-length 513"]),
])
def test_score_and_eval_arguments_checked_up_front(tmp_path, capsys, argv, fragments):
    coll = _collection(tmp_path / "coll")
    extra = ["--out", str(tmp_path / "scores")] if argv[0] == "score" else []
    assert main([argv[0], "--collection", coll, *argv[1:], *extra]) == 2
    _one_line_error(capsys, *fragments)
    assert not (tmp_path / "scores").exists()


# ----------------------------------------------------------------------------- issue 22
def test_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    """A write that fails with ENOSPC: one line naming the output file, exit 1, nothing left behind."""
    import errno

    from etils import epath

    coll = _collection(tmp_path / "coll")
    _, _, paths = _teachers(tmp_path)
    out = tmp_path / "res"
    out.mkdir()
    real = epath.gpath.PosixGPath.write_bytes

    def full(self, data):
        if str(self).startswith(str(out)):
            real(self, data[: len(data) // 2])   # a part reached the disk, then it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(epath.gpath.PosixGPath, "write_bytes", full)
    rc = main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", "mean", "--out", str(out / "z.tsv")])
    assert rc == 1
    _one_line_error(capsys, f"cannot write {out / 'z.tsv'}: No space left on device")
    assert list(out.iterdir()) == []


def test_sigterm_message_of_run_names_no_resume_flag(tmp_path, capsys, monkeypatch):
    from pile_jax import jobs
    from pile_jax.train.loop import Preempted

    def preempt(args):
        raise Preempted("preempted (SIGTERM): saved a checkpoint at step 7 in out/students/kd__seed0/checkpoints; "
                        "rerun with --resume to continue")

    monkeypatch.setattr(jobs, "cmd_run", preempt)
    assert main(["run", os.path.join(ROOT, "configs", "cranfield_pile.yaml")]) == 75
    err = _one_line_error(capsys, "step 7", "rerun the same command")
    assert "--resume" not in err
    monkeypatch.setattr(jobs, "cmd_train", preempt)
    assert main(["train", os.path.join(ROOT, "configs", "train_pile.yaml")]) == 75
    _one_line_error(capsys, "step 7", "rerun with --resume")


def test_eval_on_an_empty_split_or_without_judgments_is_one_line(tmp_path, capsys):
    coll = _collection(tmp_path / "coll", {"train": ["q0"], "dev": ["q1"], "test": ["q2"], "extra": []})
    (tmp_path / "r.run").write_text("q2 Q0 d3 1 2.0 x\n")
    assert main(["eval", "--collection", coll, "--run", str(tmp_path / "r.run"), "--split", "extra"]) == 2
    _one_line_error(capsys, "splits.json", "split 'extra' is empty")
    (tmp_path / "coll" / "qrels.tsv").write_text("")
    assert main(["eval", "--collection", coll, "--run", str(tmp_path / "r.run")]) == 2
    _one_line_error(capsys, "qrels.tsv", "no judgments")


def test_jobs_refuse_empty_qrels_naming_the_file(tmp_path, capsys):
    coll = _collection(tmp_path / "coll")
    (tmp_path / "coll" / "qrels.tsv").write_text("")
    rc = main(["train", os.path.join(ROOT, "configs", "train_hard_labels.yaml"), "--out", str(tmp_path / "o"),
               "--set", f"data.collection={coll}", "--set", "candidates.bm25_depth=3"])
    assert rc == 2
    _one_line_error(capsys, os.path.join(coll, "qrels.tsv"), "no judgments")


def test_a_teacher_score_far_outside_its_file_is_reported_with_its_line(tmp_path, capsys):
    from pile_jax.data import read_teacher_scores
    from pile_jax.data.trec import score_outlier

    coll = _collection(tmp_path / "coll")
    _, _, paths = _teachers(tmp_path)
    lines = open(paths[1]).read().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\t1e30"
    open(paths[1], "w").write("\n".join(lines) + "\n")
    out = str(tmp_path / "z.tsv")
    assert main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", "mean", "--out", out]) == 2
    _one_line_error(capsys, f"{paths[1]}:3:", "1e+30", "far outside", "--accept-outliers")
    assert main(["ensemble", "--collection", coll, "--teachers", *paths, "--method", "mean", "--out", out,
                 "--accept-outliers"]) == 0
    assert read_teacher_scores(paths[1], outliers="accept")["q0"]["d2"] == 1e30
    # the rule (median / MAD, hand-computed): [0, 1, 2, 3, x]: median 2, MAD 1 -> scale 1.4826
    assert score_outlier([0, 1, 2, 3, 2 + 148260 * 1.01]) == 4 and score_outlier([0, 1, 2, 3, 2 + 148260 * 0.99]) is None
    assert score_outlier([5, 5, 5, 5, 5]) is None   # no spread at all: nothing is far


@pytest.mark.parametrize("override, fragments", [
    ("students.options.doc_layers=10", ["students.options.doc_layers", "exceeds the 6 layers"]),
    ("students.options.doc_normalize=maybe", ["students.options.doc_normalize", "true or false"]),
    ("transfer.group_size=8", ["transfer.group_size", "differs from the train groups' size 20"]),
    ("transfer.seed=-1", ["transfer.seed", ">= 0"]),
])
def test_run_option_values_are_checked_before_any_work(tmp_path, capsys, override, fragments):
    out = tmp_path / "out"
    assert main(["run", os.path.join(ROOT, "configs", "cranfield_pile.yaml"), "--out", str(out), "--set", override]) == 2
    _one_line_error(capsys, "pile-jax run: error: ", *fragments)
    assert not out.exists()
