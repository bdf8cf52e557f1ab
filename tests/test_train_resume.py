"""`pile-jax train` on real Cranfield + MiniLM: SIGKILL mid-run, `--resume`, and the final params
equal an uninterrupted run's exactly (same batches, same dropout keys, same optimizer state)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers.cli import user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--set", "data.max_queries_per_split=8",
    "--set", "candidates.bm25_depth=6",
    "--set", "teachers=[{name: bm25, kind: bm25}]",
    "--set", "student.num_layers=1",
    "--set", "student.max_length=48",
    "--set", "student.max_query_length=12",
    "--set", "train.batch_size=2",
    "--set", "train.steps=14",
    "--set", "train.learning_rate=1e-4",
    "--set", "train.eval_every=null",
    "--set", "train.checkpoint_every=4",  # each save writes ~64 MB (params + Adam state): few saves
    "--set", "train.keep_checkpoints=2",  # 12 prunes 4: resume reads the latest after pruning
    "--set", "train.log_every=1",
    "--set", "train.progress=false",
    "--set", "train.parallel=none",
]


def _cmd(out, *extra):
    return [sys.executable, "-m", "pile_jax.cli", "train", os.path.join(ROOT, "configs", "train_pile.yaml"),
            "--out", str(out), *TINY, *extra]


def _params(out):
    with np.load(out / "final_params.npz") as data:
        return {k: data[k] for k in data.files}


def _checkpoints(out):
    d = out / "checkpoints"
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    env = user_env(tmp_path)
    ref = tmp_path / "uninterrupted"
    # the reference saves no checkpoint at all: saving must not change the run either
    proc = subprocess.run(_cmd(ref, "--set", "train.checkpoint_every=1000"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training finished" in proc.stdout

    out = tmp_path / "killed"
    p = subprocess.Popen(_cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:
        if any(s >= 4 for s in _checkpoints(out)):
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = max(_checkpoints(out))
    assert 4 <= killed_at < 14
    assert not (out / "final_params.npz").exists()

    proc = subprocess.run(_cmd(out, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step" in (out / "log.txt").read_text()

    a, b = _params(ref), _params(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the test metrics of both runs agree too
    assert (ref / "test_metrics.json").read_text() == (out / "test_metrics.json").read_text()
