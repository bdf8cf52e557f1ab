"""Runs train() on the tiny setup in a subprocess (for the kill / SIGTERM / resume / URL tests).

Usage: python train_tiny_run.py ARGS_JSON
ARGS_JSON keys: workdir, resume (bool), config (train: section), poison (example indices with a
NaN teacher score), delay (seconds of sleep per example read, so a test can signal mid-run),
fake_gs_root (register a fake ``gs://`` filesystem over this local folder, see fake_gs.py).
Exit codes: 0 done, Preempted.exit_code after a preemption checkpoint.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    args = json.loads(sys.argv[1])
    if args.get("fake_gs_root"):
        from helpers import fake_gs

        fake_gs.install(args["fake_gs_root"])
    from helpers.train_tiny import TINY_OBJECTIVE, PoisonedSource, tiny_collection, tiny_ranker
    from pile_jax.train.loop import Preempted, train

    queries, docs, examples = tiny_collection()
    delay = float(args.get("delay", 0))
    source = PoisonedSource(examples, args.get("poison", ()), on_read=(lambda i: time.sleep(delay)) if delay else None)
    lines = []

    def log(s):
        lines.append(s)
        print(s, flush=True)

    try:
        train(tiny_ranker(), source=source, objective=TINY_OBJECTIVE, queries=queries, docs=docs,
              config=args["config"], workdir=args["workdir"], resume=bool(args.get("resume")), log=log)
    except Preempted as e:
        print(e, flush=True)
        sys.exit(e.exit_code)
    print("training finished", flush=True)


if __name__ == "__main__":
    main()
