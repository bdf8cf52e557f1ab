"""pile_jax.prepare (the one preparation path of `run`, `study` and `train`), URL paths for the jobs,
float64 standardisation, teacher spec sidecars and atomic artefacts.

References are independent: NumPy float64 re-derivations, `bm25_search` called directly, and
files read back from the fake object store's folder on disk."""

import json

import numpy as np
import pytest

from pile_jax import config as C
from pile_jax import io as pio
from pile_jax import prepare as P

WORDS = ["wing", "flow", "heat", "shock", "boundary", "layer", "pressure", "mach", "plate", "jet", "turbulent", "nozzle"]


def _write_collection(folder, n_docs=24, n_queries=9):
    """A tiny collection in the shared layout: docs of 3 words, queries of 2, graded qrels, splits."""
    rng = np.random.default_rng(0)
    docs, queries, qrels = [], [], []
    for i in range(n_docs):
        docs.append({"doc_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, 3))})
    for q in range(n_queries):
        words = rng.choice(WORDS, 2, replace=False)
        queries.append({"query_id": f"q{q}", "text": " ".join(words)})
        hits = [d for d in docs if words[0] in d["text"]][:3]
        for k, d in enumerate(hits):
            qrels.append(f"q{q} 0 {d['doc_id']} {2 - min(k, 1)}")
    folder = pio.as_path(folder)
    pio.write_text(folder / "docs.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    pio.write_text(folder / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    pio.write_text(folder / "qrels.tsv", "\n".join(qrels) + "\n")
    pio.write_json(folder / "splits.json", {"train": ["q0", "q1", "q2"], "dev": ["q3", "q4", "q5"],
                                            "test": ["q6", "q7", "q8"]})
    return str(folder)


def _cfg(coll, **extra):
    cfg = {"data": {"collection": coll, "unjudged": "zero"}, "first_stage": {"depth": 5},
           "teachers": [{"name": "lex", "kind": "bm25"}], "_source": "test.yaml"}
    cfg.update(extra)
    return cfg


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """``gs://`` served by an fsspec filesystem rooted in ``tmp_path/bucket_root`` (not the local
    path ``gs:/...``): epath routes gs:// through fsspec when TensorFlow is absent, via
    ``fsspec.filesystem("gcs", ...)``, cached in ``_FileSystemSpecBackend._get_filesystem``."""
    import importlib

    from etils.epath import backend, gpath
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    if gpath._is_tf_installed():
        pytest.skip("TensorFlow installed: epath would use tf.io.gfile for gs://")
    root = tmp_path / "bucket_root"
    root.mkdir()

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, finalize_on_close=None, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    return path[len(prefix):]
            return path

    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.setitem(registry, "gcs", FakeGCS)
    monkeypatch.setitem(registry, "gs", FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield root
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert not any(p.name.startswith("gs") for p in cwd.iterdir()), "a URL became a local folder"


# ------------------------------------------------------------------------- standardisation
def test_teacher_stats_float64_one_huge_score_keeps_the_teacher():
    """One score of 1e20 (float32 squares overflow): statistics in float64 equal NumPy's float64
    mean/std, the standardised scores stay finite, the huge item stays first and no teacher is
    zeroed (issue 14 item 1)."""
    ts = np.array([[[1e20, 3.0, 2.0, 1.0]], [[0.5, 0.4, 0.3, 0.0]]], np.float64).transpose(1, 0, 2)  # [G=1, T=2, n=4]
    mask = np.array([[True, True, True, False]])
    groups = {"teacher_scores": ts.astype(np.float32), "mask": mask}
    mu, sd = P.teacher_stats(groups)
    ref = ts.astype(np.float32).astype(np.float64)[0][:, :3]
    np.testing.assert_allclose(mu, ref.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(sd, ref.std(axis=1), rtol=1e-12)
    z = P.standardise(groups, mu, sd)["teacher_scores"]
    assert z.dtype == np.float32 and np.isfinite(z).all()
    expect = ((ref - ref.mean(axis=1, keepdims=True)) / ref.std(axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(z[0][:, :3], expect, rtol=1e-6)
    assert z[0, 0, 0] > 1.0 and z[0, 0, 3] == 0.0  # the huge item leads; padding stays 0
    assert np.abs(z[0, 1, :3]).max() > 0.5  # the other teacher is untouched


def test_ensemble_cli_with_a_huge_score_is_finite(tmp_path, capsys):
    from pile_jax.cli import main
    from pile_jax.data import read_teacher_scores

    coll = _write_collection(tmp_path / "coll")
    a = {f"q{q}": {f"d{d}": float(d % 5) for d in range(6)} for q in range(9)}
    a["q0"]["d0"] = 1e20
    b = {q: {d: -s for d, s in row.items()} for q, row in a.items()}
    b["q0"]["d0"] = 0.0
    pio.write_text(tmp_path / "a.tsv", "".join(f"{q}\t{d}\t{s!r}\n" for q, r in a.items() for d, s in r.items()))
    pio.write_text(tmp_path / "b.tsv", "".join(f"{q}\t{d}\t{s!r}\n" for q, r in b.items() for d, s in r.items()))
    rc = main(["ensemble", "--collection", coll, "--teachers", str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv"),
               "--method", "mean", "--out", str(tmp_path / "mean.tsv"), "--accept-outliers"])
    assert rc == 0   # (without --accept-outliers the 1e20 is an error naming a.tsv:1: test_cli_errors.py)
    z = read_teacher_scores(str(tmp_path / "mean.tsv"))
    vals = np.array([s for r in z.values() for s in r.values()])
    assert np.isfinite(vals).all() and np.ptp(vals) > 0.1


def test_ensemble_cli_refuses_two_teachers_with_one_name(tmp_path, capsys):
    from pile_jax.cli import main

    coll = _write_collection(tmp_path / "coll")
    for d in ("x", "y"):
        pio.write_text(tmp_path / d / "bm25.tsv", "q0\td0\t1.0\n")
    rc = main(["ensemble", "--collection", coll, "--teachers", str(tmp_path / "x" / "bm25.tsv"),
               str(tmp_path / "y" / "bm25.tsv"), "--out", str(tmp_path / "o.tsv")])
    assert rc == 2 and "bm25" in capsys.readouterr().err


# --------------------------------------------------------------------------- sharded scoring
def _bm25_reference(coll_path, qids, depth):
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import load_collection

    coll = load_collection(coll_path)
    return bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=depth)


def test_prepare_groups_standardised_and_teacher_spec_reuse(tmp_path):
    from pile_jax.data import read_teacher_scores

    coll = _write_collection(tmp_path / "coll")
    out = tmp_path / "out"
    logs = []
    prep = P.prepare(_cfg(coll), out=str(out), log=logs.append, standardize="global")
    ref = _bm25_reference(coll, [f"q{i}" for i in range(9)], 5)
    assert prep.candidates == {q: list(r) for q, r in ref.items()}
    tfile = out / "teachers" / "lex.tsv"
    assert read_teacher_scores(str(tfile)) == {q: ref[q] for q in prep.candidates}
    side = json.loads((out / "teachers" / "lex.spec.json").read_text())
    assert side["teacher"] == {"name": "lex", "kind": "bm25"} and side["depth"] == 5
    # float64 statistics over the valid train items; standardised groups
    g = prep.groups["train"]
    vals = np.array([ref[q][d] for q in prep.splits["train"] for d in prep.candidates[q]
                     if q in set(g["query_id"])], np.float64)
    np.testing.assert_allclose(prep.mu, [vals.mean()], rtol=1e-6)
    np.testing.assert_allclose(prep.sd, [vals.std()], rtol=1e-6)
    assert prep.mu.dtype == np.float64 and g["teacher_scores"].dtype == np.float32

    # reuse: a file whose sidecar matches is reused as it is (here tampered with, to prove it)
    tampered = {q: {d: 7.0 for d in r} for q, r in read_teacher_scores(str(tfile)).items()}
    from pile_jax.data import write_teacher_scores

    write_teacher_scores(str(tfile), tampered)
    again = P.prepare(_cfg(coll), out=str(out), log=logs.append, standardize="none")
    assert again.teachers["lex"] == tampered and any("reusing" in m for m in logs)
    # another spec under the same name (depth 4): recomputed, not reused by file name
    logs.clear()
    other = P.prepare(_cfg(coll, first_stage={"depth": 4}), out=str(out), log=logs.append, standardize="none")
    ref4 = _bm25_reference(coll, [f"q{i}" for i in range(9)], 4)
    assert other.teachers["lex"] == {q: ref4[q] for q in other.candidates}
    assert any("another spec" in m for m in logs)
    assert json.loads((out / "teachers" / "lex.spec.json").read_text())["depth"] == 4
    # no sidecar at all: recomputed too
    (out / "teachers" / "lex.spec.json").unlink()
    write_teacher_scores(str(tfile), tampered)
    assert P.prepare(_cfg(coll), out=str(out), standardize="none").teachers["lex"] == {q: ref[q] for q in prep.candidates}
    assert not [p for p in (out / "teachers").iterdir() if ".tmp-" in p.name]


def test_prepare_config_errors_before_work(tmp_path):
    coll = _write_collection(tmp_path / "coll")
    with pytest.raises(C.ConfigError, match="name"):
        P.prepare(_cfg(coll, teachers=[{"name": "../x", "kind": "bm25"}]), out=str(tmp_path / "o"))
    with pytest.raises(C.ConfigError, match="unknown kind"):
        P.prepare(_cfg(coll, teachers=[{"name": "x", "kind": "bm42"}]), out=str(tmp_path / "o"))
    with pytest.raises(C.ConfigError, match="standardize"):
        P.prepare(_cfg(coll), out=str(tmp_path / "o"), standardize="zscore")
    assert not (tmp_path / "o").exists()


def test_failed_write_keeps_the_previous_file(tmp_path):
    from pile_jax.data import write_run, write_teacher_scores

    path = tmp_path / "t.tsv"
    write_teacher_scores(str(path), {"q": {"d": 1.0}})
    with pytest.raises(ValueError):
        write_teacher_scores(str(path), {"q": {"d": 2.0, "e": float("nan")}})
    assert path.read_text() == "q\td\t1.0\n"
    with pytest.raises(ValueError):
        write_run(str(tmp_path / "r.trec"), {"q": {"d": float("inf")}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]


# ------------------------------------------------------------------------------ URL paths
def test_prepare_and_cli_on_a_url_filesystem(fake_gcs, capsys):
    """The collection, teacher files, sidecars and CLI outputs live on gs:// (a fake object store
    rooted elsewhere): they land in its folder, and no local `gs:` folder appears (fixture)."""
    from pile_jax.cli import main
    from pile_jax.data import read_teacher_scores

    coll = _write_collection("gs://bucket/coll")
    assert (fake_gcs / "bucket" / "coll" / "docs.jsonl").is_file()
    prep = P.prepare(_cfg(coll), out="gs://bucket/run", standardize="global")
    ref = _bm25_reference(str(fake_gcs / "bucket" / "coll"), [f"q{i}" for i in range(9)], 5)
    local = fake_gcs / "bucket" / "run" / "teachers"
    assert read_teacher_scores(str(local / "lex.tsv")) == {q: ref[q] for q in prep.candidates}
    assert json.loads((local / "lex.spec.json").read_text())["teacher"]["kind"] == "bm25"

    assert main(["score", "--collection", coll, "--depth", "5", "--teacher", "b=bm25", "--out", "gs://bucket/scores"]) == 0
    scored = read_teacher_scores(str(fake_gcs / "bucket" / "scores" / "b.tsv"))
    assert scored == ref
    pio.write_text("gs://bucket/scores/c.tsv", "".join(f"{q}\t{d}\t{-s!r}\n" for q, r in ref.items() for d, s in r.items()))
    assert main(["ensemble", "--collection", coll, "--teachers", "gs://bucket/scores/b.tsv", "gs://bucket/scores/c.tsv",
                 "--method", "mean", "--standardize", "none", "--out", "gs://bucket/mean.tsv"]) == 0
    mean = read_teacher_scores(str(fake_gcs / "bucket" / "mean.tsv"))
    assert set(mean) == set(ref) and all(abs(s) < 1e-6 for r in mean.values() for s in r.values())
    # a malformed line on gs:// still names the file and line
    pio.write_text("gs://bucket/bad.tsv", "q0\td0\t1.0\nq0 d1\n")
    assert main(["ensemble", "--collection", coll, "--teachers", "gs://bucket/bad.tsv", "--out", "gs://bucket/x.tsv"]) == 2
    assert "gs://bucket/bad.tsv:2" in capsys.readouterr().err


# -------------------------------------------------------------------------------- params
def test_params_round_trip_and_shape_error(tmp_path):
    from pile_jax.params import load_params, save_params

    params = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3, np.float32)},
              "head": [np.float32(2.5) * np.ones((1,), np.float32)]}
    save_params(tmp_path / "p.npz", params)
    got = load_params(tmp_path / "p.npz", params)
    np.testing.assert_array_equal(got["dense"]["kernel"], params["dense"]["kernel"])
    np.testing.assert_array_equal(got["head"][0], params["head"][0])
    with np.load(tmp_path / "p.npz") as data:  # the keys are the pytree paths (loop's format)
        assert sorted(data.files) == ["['dense']['bias']", "['dense']['kernel']", "['head'][0]"]
    bad = {"dense": {"kernel": np.zeros((3, 3), np.float32), "bias": np.ones(3, np.float32)}, "head": params["head"]}
    with pytest.raises(ValueError, match="shape"):
        load_params(tmp_path / "p.npz", bad)


def test_prepare_on_a_non_primary_process_writes_nothing(tmp_path, monkeypatch):
    """Process 1 of 2 (simulated): same candidates and teacher scores, no file written by it, and it
    waits at the barrier after each shared file."""
    coll = _write_collection(tmp_path / "coll")
    barriers = []
    monkeypatch.setattr(P, "_process", lambda: (1, 2))
    monkeypatch.setattr(P, "_agree", lambda flag: flag)
    monkeypatch.setattr(pio, "is_primary", lambda: False)
    monkeypatch.setattr(pio, "barrier", barriers.append)
    prep = P.prepare(_cfg(coll), out=str(tmp_path / "out"), standardize="none")
    ref = _bm25_reference(coll, [f"q{i}" for i in range(9)], 5)
    assert prep.teachers["lex"] == {q: ref[q] for q in prep.candidates}
    assert not (tmp_path / "out").exists() and barriers == ["teacher_lex"]


def test_cli_unwritable_outputs_are_one_line_errors(tmp_path, capsys):
    from pile_jax.cli import main

    coll = _write_collection(tmp_path / "coll")
    (tmp_path / "a_file").write_text("x")
    assert main(["score", "--collection", coll, "--depth", "3", "--teacher", "b=bm25",
                 "--out", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_file" in err
    pio.write_text(tmp_path / "t.tsv", "q0\td0\t1.0\n")
    assert main(["ensemble", "--collection", coll, "--teachers", str(tmp_path / "t.tsv"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_config_with_extends_on_a_url(fake_gcs):
    pio.write_text("gs://bucket/cfg/base.yaml", "data: {collection: cranfield}\nfirst_stage: {depth: 7}\n")
    pio.write_text("gs://bucket/cfg/sub/child.yaml", "extends: ../base.yaml\nfirst_stage: {depth: 9}\n")
    cfg = C.load_config("gs://bucket/cfg/sub/child.yaml")
    assert cfg["data"] == {"collection": "cranfield"} and cfg["first_stage"] == {"depth": 9}


def test_log_on_a_url(fake_gcs):
    import logging

    from pile_jax.logs import log_to_file

    logger = logging.getLogger("pile_jax.test_url_log")
    with log_to_file("gs://bucket/run/log.txt", enabled=True) as handler:
        handler.interval_s = 3600
        logger.info("first")
        logger.info("second")  # within the interval: kept in memory
        assert (fake_gcs / "bucket" / "run" / "log.txt").read_text().count("\n") == 1
    lines = (fake_gcs / "bucket" / "run" / "log.txt").read_text().splitlines()  # closing the block flushes
    assert [l.split(" ", 2)[2] for l in lines] == ["first", "second"]