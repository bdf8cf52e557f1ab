"""train() end to end on a tiny ranker: skipped non-finite steps, SIGKILL / SIGTERM mid-run and
resume (bit-identical final params), a gs:// workdir that is never turned into a local folder,
and the exact abort after consecutive non-finite steps."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import json
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker
from pile_jax.io import load_npz
from pile_jax.train.loop import PREEMPTED_EXIT_CODE, Preempted, train

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
ROOT = os.path.dirname(os.path.dirname(HELPERS))
CFG = {"batch_size": 4, "steps": 12, "checkpoint_every": 3, "keep_checkpoints": 5, "log_every": 4,
       "progress": False, "learning_rate": 0.01, "parallel": "pmap"}
POISON = [3, 7]  # examples with a NaN teacher score: every batch holding one is skipped
PER_STEP = CFG["batch_size"]  # one process reads the whole global batch


def _flat(params):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run, in this process, and the steps whose batch held a poisoned example
    (from the order the examples were read, independent of the sampler's internals)."""
    queries, docs, examples = tiny_collection()
    reads, lines = [], []
    res = train(tiny_ranker(), source=PoisonedSource(examples, POISON, on_read=reads.append),
                objective=TINY_OBJECTIVE, queries=queries, docs=docs, config=CFG, log=lines.append)
    # the loader reads every group once first (its length pass, in index order), then the batches
    assert reads[:len(examples)] == list(range(len(examples)))
    reads = reads[len(examples):]
    assert len(reads) >= CFG["steps"] * PER_STEP   # (the prefetch may have read a batch or two ahead)
    bad = [s + 1 for s in range(CFG["steps"]) if set(reads[s * PER_STEP:(s + 1) * PER_STEP]) & set(POISON)]
    return {"params": _flat(res.final_params), "bad_steps": bad, "lines": lines, "history": res.history}


def test_every_skipped_step_is_reported_and_counted(reference):
    bad = reference["bad_steps"]
    assert 2 <= len(bad) < CFG["steps"]  # the run did skip steps, and trained on the others
    reported = [int(line.split(":")[0].split()[1]) for line in reference["lines"] if "update skipped" in line]
    assert reported == bad  # every skip, including those between log steps
    last = reference["history"][-1]
    assert last["step"] == CFG["steps"] and last["skipped"] == len(bad)
    assert all(np.isfinite(v).all() for v in reference["params"].values())


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def _start(tmp_path, workdir, *, resume=False, delay=0.0, fake_gs_root=None):
    args = {"workdir": workdir, "resume": resume, "config": CFG, "poison": POISON, "delay": delay,
            "fake_gs_root": fake_gs_root}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, os.path.join(HELPERS, "train_tiny_run.py"), json.dumps(args)],
                            cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps(folder):
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def _interrupt(p, ckpt_dir, sig, at_least):
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not any(s >= at_least for s in _steps(ckpt_dir)):
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted:\n" + p.stdout.read()[-3000:]
    p.send_signal(sig)
    out = p.communicate(timeout=300)[0]
    return p.returncode, out


def _finish(p):
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
def test_sigterm_sigkill_and_resume_on_a_gs_workdir(tmp_path, reference):
    """workdir gs://bkt/run (a fake GCS over a local folder, through etils.epath + fsspec):
    SIGTERM mid-run -> preemption checkpoint, exit code, one-line message; --resume; kill -9
    mid-run; --resume again: final params bit-identical to the uninterrupted run."""
    root = tmp_path / "bucket_root"
    run = root / "bkt" / "run"
    ckpts = run / "checkpoints"
    start = lambda **kw: _start(tmp_path, "gs://bkt/run", fake_gs_root=str(root), **kw)

    code, out = _interrupt(start(delay=0.1), ckpts, signal.SIGTERM, at_least=3)
    assert code == PREEMPTED_EXIT_CODE == Preempted.exit_code, out[-3000:]
    stopped = max(_steps(ckpts))
    assert 3 <= stopped < CFG["steps"] - 3
    assert out.strip().splitlines()[-1] == (
        f"preempted (SIGTERM): saved a checkpoint at step {stopped} in gs://bkt/run/checkpoints; "
        "rerun with --resume to continue")
    assert "fake_gs: orbax directory gs://bkt/run/checkpoints" in out  # orbax got the URL unchanged

    code, out = _interrupt(start(resume=True, delay=0.1), ckpts, signal.SIGKILL, at_least=stopped + 3)
    assert code == -signal.SIGKILL and f"resumed from step {stopped}" in out
    killed_at = max(_steps(ckpts))
    assert stopped < killed_at < CFG["steps"] and not (run / "final_params.npz").exists()

    out = _finish(start(resume=True))
    assert f"resumed from step {killed_at}" in out
    got = load_npz(run / "final_params.npz")
    assert got.keys() == reference["params"].keys()
    for k, v in reference["params"].items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert json.loads((run / "history.json").read_text())[-1]["skipped"] == len(reference["bad_steps"])
    assert any((run / "tensorboard").iterdir())
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing landed in a local "gs:" folder


def test_abort_after_consecutive_nonfinite_steps_is_exact():
    """Every batch non-finite, max 3 in a row, metrics read only every 100 steps: the run stops
    at step 3 exactly. No workdir: SIGTERM keeps its default behaviour meanwhile."""
    queries, docs, examples = tiny_collection()
    cfg = dict(CFG, log_every=100, max_nonfinite_steps=3, parallel="none")
    handlers = []
    source = PoisonedSource(examples, range(len(examples)),
                            on_read=lambda i: handlers.append(signal.getsignal(signal.SIGTERM)))
    with pytest.raises(FloatingPointError, match=r"^step 3: 3 consecutive steps with non-finite .*"
                                                 r"train\.max_nonfinite_steps=3"):
        train(tiny_ranker(), source=source, objective=TINY_OBJECTIVE, queries=queries, docs=docs, config=cfg)
    assert handlers and all(h is signal.SIG_DFL for h in handlers)


def test_train_with_workdir_off_the_main_thread(tmp_path):
    """No SIGTERM handler can be installed off the main thread: train() runs, leaves it alone."""
    queries, docs, examples = tiny_collection()
    cfg = dict(CFG, steps=2, parallel="none")
    errors = []

    def run():
        try:
            train(tiny_ranker(), source=PoisonedSource(examples), objective=TINY_OBJECTIVE, queries=queries,
                  docs=docs, config=cfg, workdir=str(tmp_path / "w"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(300)
    assert not errors, errors
    assert (tmp_path / "w" / "final_params.npz").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
