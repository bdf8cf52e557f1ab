"""bench/device_check.sh in its dry mode: every bench command line it would run on a GPU is
accepted by that script's own argument parser, and the summary files are written.

The smoke mode (DEVICE_CHECK_SMOKE=1: each bench really runs with --smoke) takes minutes on
2 CPU cores, so it is not part of the suite; bench/README.md documents it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run(tmp_path, **env):
    full_env = {**os.environ, "PYTHON": sys.executable, "DEVICE_CHECK_DRY": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_parses_every_bench_command_and_writes_the_summary(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.md", "logs.tar.gz"]
    report = json.loads((out / "device_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status["install"] == "skipped" and status["env"] == "ok"
    for step in ("train_minilm-l6", "train_bert-base", "cranfield"):
        assert status[step] == "ok", step
    expected_pipeline = "ok" if (ROOT / "bench" / "input_pipeline.py").is_file() else "skipped"
    assert status["input_pipeline"] == expected_pipeline
    assert report["env"]["versions"]["jax"] and report["env"]["backend"] == "cpu"
    md = (out / "device_check.md").read_text()
    assert "| train_bert-base | ok |" in md


def test_a_step_that_fails_is_reported_and_the_others_still_run(tmp_path):
    # an interpreter that fails for every command: each step fails, the script still summarises
    fake = tmp_path / "fail.sh"
    fake.write_text("#!/bin/sh\ncase \"$1\" in */summary.py) exec \"%s\" \"$@\";; esac\nexit 7\n" % sys.executable)
    fake.chmod(0o755)
    proc = run(tmp_path, PYTHON=str(fake))
    assert proc.returncode == 1
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    for step in ("env", "train_minilm-l6", "train_bert-base", "cranfield"):
        assert status[step] == "failed", step
    assert "train_bert-base: failed" in (tmp_path / "out" / "device_check.md").read_text()
