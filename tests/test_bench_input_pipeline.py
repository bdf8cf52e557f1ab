"""bench/input_pipeline.py --smoke runs end to end and reports every number (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.cli import user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_input_pipeline_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "input_pipeline.py"), "--smoke",
                           "--json", str(out), "--md", str(tmp_path / "smoke.md")],
                          env=user_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["pairs"] == 4 * 10 and res["queries"] == 4
    for key in ("tokenize_texts_per_s", "train_collate_pairs_per_s", "train_loader_pairs_per_s",
                "train_loader_device_put_pairs_per_s", "score_assemble_pairs_per_s", "score_text_in_host_pairs_per_s",
                "score_pairs_e2e_trivial_model_pairs_per_s"):
        assert res[key] > 0, key
    assert (tmp_path / "smoke.md").read_text().startswith("input pipeline (SMOKE")
