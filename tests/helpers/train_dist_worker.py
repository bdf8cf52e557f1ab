"""One process of the two-process CPU training test (tests/test_train_distributed.py).

Usage: python train_dist_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR
Runs the real ``train()`` (sampler shard of this process, checkpoints written through orbax with
process 0 writing the shared files, dropout on) under ``pmap`` and under ``shard_map``: each run
is stopped after STOP_AFTER steps (every process raises at the same step, as a crash would), then
resumed to the end. Writes this process's final params to OUT_DIR/p{ID}_{mode}.npz. Then, under
``pmap``, process 0 alone gets a SIGTERM during step 3: JAX's preemption service and orbax's sync
point make both processes save the same step and raise ``Preempted``; the resumed run's params go
to OUT_DIR/p{ID}_preempted.npz. Last, checks that ``parallel: none`` is refused on two processes,
and that a work folder the processes do not share (each its own local folder) is refused by both
(issue 19).
"""

import os
import signal
import sys
import time

if __name__ == "__main__":  # as a worker: 2 CPU devices per process (the test sets it too)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker  # noqa: E402

CONFIG = {"batch_size": 8, "steps": 6, "checkpoint_every": 2, "log_every": 2, "progress": False,
          "learning_rate": 0.01}
STOP_AFTER = 4  # steps done before the simulated crash


class Crash(RuntimeError):
    pass


def flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def main():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from pile_jax.config import ConfigError
    from pile_jax.train import maybe_initialize_distributed
    from pile_jax.train.loop import Preempted, train

    assert maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=60)
    assert jax.process_count() == nproc and jax.device_count() == 2 * nproc
    queries, docs, examples = tiny_collection()
    per_process = CONFIG["batch_size"] // nproc
    for mode in ("pmap", "shard_map"):
        ranker = tiny_ranker(dropout=0.1)  # one score_fn: the resumed run reuses the compiled step
        workdir = os.path.join(out, mode)  # shared by both processes (a gs:// bucket on a pod)
        cfg = dict(CONFIG, parallel=mode)
        reads = []

        def crash(i):
            reads.append(i)
            # after the loader's length pass; batch STOP_AFTER + 1 is read while step STOP_AFTER
            # waits for the device queue (2 batches), so the crash stops the run after that step
            if len(reads) > len(examples) + (STOP_AFTER + 1) * per_process:
                raise Crash(f"simulated crash after step {STOP_AFTER}")

        try:
            train(ranker, source=PoisonedSource(examples, on_read=crash), objective=TINY_OBJECTIVE,
                  queries=queries, docs=docs, config=cfg, workdir=workdir)
            raise AssertionError("the first run should have crashed")
        except Crash:
            pass
        lines = []
        res = train(ranker, source=PoisonedSource(examples), objective=TINY_OBJECTIVE, queries=queries,
                    docs=docs, config=cfg, workdir=workdir, resume=True, log=lines.append)
        assert lines[0].startswith(f"resumed from step {STOP_AFTER} "), lines
        np.savez(os.path.join(out, f"p{pid}_{mode}.npz"), **flat(res.final_params))

    workdir = os.path.join(out, "preempted")
    reads = []

    def sigterm_on_process_0(i):
        reads.append(i)
        # the loader reads every group once (its length pass); then, with reads slowed from batch
        # 2 on, the step waits for the device queue (2 batches), so batch index 5 is built
        # while step 3 runs
        if pid == 0 and len(reads) == len(examples) + 5 * per_process + 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice, to one host only
        if len(reads) > len(examples) + 2 * per_process:
            # paced steps; slower after the notice, which travels through the coordination
            # service meanwhile (an idle machine otherwise finishes all steps before it lands)
            time.sleep(0.2 if len(reads) <= len(examples) + 5 * per_process + 1 else 0.6)

    try:
        train(ranker, source=PoisonedSource(examples, on_read=sigterm_on_process_0), objective=TINY_OBJECTIVE,
              queries=queries, docs=docs, config=dict(CONFIG, parallel="pmap", checkpoint_every=100),
              workdir=workdir)
        raise AssertionError("the run should have been preempted")
    except Preempted as e:
        print(f"worker {pid}: {e}", flush=True)
    saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < CONFIG["steps"], saved
    res = train(ranker, source=PoisonedSource(examples), objective=TINY_OBJECTIVE, queries=queries, docs=docs,
                config=dict(CONFIG, parallel="pmap", checkpoint_every=100), workdir=workdir, resume=True)
    np.savez(os.path.join(out, f"p{pid}_preempted.npz"), **flat(res.final_params))
    try:
        train(tiny_ranker(), source=PoisonedSource(examples), objective=TINY_OBJECTIVE, queries=queries,
              docs=docs, config=dict(CONFIG, parallel="none"))
        raise AssertionError("parallel: none on two processes must be refused")
    except ConfigError as e:
        assert "train.parallel" in str(e), e
    try:
        train(tiny_ranker(), source=PoisonedSource(examples), objective=TINY_OBJECTIVE, queries=queries,
              docs=docs, config=dict(CONFIG, parallel="pmap"), workdir=os.path.join(out, f"local_{pid}"))
        raise AssertionError("a work folder the processes do not share must be refused")
    except ConfigError as e:
        assert "not shared by all processes" in str(e) and "[1]" in str(e), e
    jax.distributed.shutdown()
    print(f"worker {pid} ok", flush=True)


if __name__ == "__main__":
    main()
