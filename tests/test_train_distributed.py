"""Two CPU processes (jax.distributed + gloo, 2 devices each) run the real train(): sampler
shards, orbax checkpoints in a shared workdir, a crash and a resume, dropout on, under pmap and
under shard_map, and a SIGTERM to one process (both save at orbax's preemption sync point and
resume); all end where one process with 4 devices ends without interruption."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax
import numpy as np
import pytest

from helpers import train_dist_worker as worker
from helpers.procs import finish_workers, start_workers
from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker
from pile_jax.train.loop import train


@pytest.mark.slow
def test_two_processes_train_crash_resume_match_one_process(tmp_path):
    assert jax.device_count() == 4
    procs = start_workers(worker.__file__, tmp_path)
    # the reference meanwhile: one process, 4 devices, the same global batches, no interruption
    queries, docs, examples = tiny_collection()
    ref = train(tiny_ranker(dropout=0.1), source=PoisonedSource(examples), objective=TINY_OBJECTIVE,
                queries=queries, docs=docs, config=dict(worker.CONFIG, parallel="pmap"))
    ref = worker.flat(ref.final_params)
    finish_workers(procs, timeout=400)
    init = worker.flat(tiny_ranker(dropout=0.1).params)
    assert max(float(np.max(np.abs(ref[k] - init[k]))) for k in ref) > 1e-3  # it did train
    diffs = {}
    for mode in ("pmap", "shard_map", "preempted"):
        assert sorted(os.listdir(tmp_path / mode)) == ["checkpoints", "final_params.npz", "history.json",
                                                       "tensorboard"]
        for pid in range(2):
            got = np.load(tmp_path / f"p{pid}_{mode}.npz")
            assert sorted(got.files) == sorted(ref)
            diffs[mode, pid] = max(float(np.max(np.abs(got[k] - v))) for k, v in ref.items())
    assert all(d <= 1e-5 for d in diffs.values()), diffs
