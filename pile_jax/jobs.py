"""The CLI's subcommands as functions (``cmd_<name>(args)``); ``cli.py`` only parses."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import numpy as np

from pile_jax import config as C


def _load(args, extra_presets=()) -> dict:
    return C.load_config(args.config, presets=list(extra_presets) + list(getattr(args, "presets", [])),
                         overrides=args.overrides)


def _default_out(config_path: str, suffix: str = "") -> str:
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", name + suffix)


# --------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from pile_jax.pipeline import Log, run

    cfg = _load(args, ["quick"] if args.quick else [])
    out = args.out or _default_out(args.config, "_quick" if args.quick else "")
    os.makedirs(out, exist_ok=True)
    log = Log(os.path.join(out, "log.txt"))
    log(f"pile-jax run {args.config}{' --quick' if args.quick else ''} -> {out}")
    results = run(cfg, out=out, data=args.data, log=log)
    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        print(f.read())
    return 0 if results else 1


# ------------------------------------------------------------------------------------- score
def _candidates(coll, *, run_path: str | None, depth: int, qids) -> tuple[dict, dict]:
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import read_run

    if run_path:
        run = read_run(run_path, collection=coll)
        ranked = {q: dict(run.get(q, [])[:depth]) for q in qids}
    else:
        ranked = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=depth)
    return {q: list(ranked[q]) for q in qids}, ranked


def _parse_teacher(item: str) -> dict:
    if "=" not in item:
        raise C.ConfigError(f"--teacher {item!r}: expected NAME=SPEC")
    name, spec = item.split("=", 1)
    if spec == "bm25":
        return {"name": name, "kind": "bm25"}
    if spec.startswith("biencoder:"):
        return {"name": name, "kind": "biencoder_cosine", "model": spec.split(":", 1)[1]}
    path, _, layers = spec.partition(":")
    return {"name": name, "kind": "checkpoint", "path": path, "num_layers": int(layers) if layers else None}


def score_teacher(spec: Mapping[str, Any], coll, candidates: Mapping[str, list], first_stage: Mapping,
                  *, max_length: int = 256, batch_size: int = 64, max_query_length: int = 64,
                  out_path: str | None = None) -> dict:
    """Scores with one teacher spec (bm25 | biencoder_cosine | checkpoint | file); resumable:
    queries already in ``out_path`` are kept and not scored again."""
    from pile_jax import rankers
    from pile_jax.data import read_teacher_scores, write_teacher_scores
    from pile_jax.train.loop import score_candidates

    kind = spec.get("kind")
    if kind == "file":
        return read_teacher_scores(spec["path"], collection=coll)
    done: dict = {}
    if out_path and os.path.exists(out_path):
        done = read_teacher_scores(out_path)
    todo = {q: c for q, c in candidates.items() if not (q in done and set(c) <= set(done[q]))}
    if kind == "bm25":
        new = {q: {d: float(first_stage[q].get(d, 0.0)) for d in c} for q, c in todo.items()}
        if any(d not in first_stage[q] for q, c in todo.items() for d in c):
            from pile_jax.bm25 import bm25_scores_for

            new = bm25_scores_for(coll.docs, coll.queries, todo)
    elif kind in ("biencoder_cosine", "checkpoint"):
        if kind == "biencoder_cosine":
            ranker = rankers.biencoder_cosine(spec.get("model", "all-MiniLM-L6-v2"), max_length=max_length)
        else:
            ranker = rankers.cross_encoder(spec["path"], num_layers=spec.get("num_layers"), max_length=max_length,
                                           max_query_length=max_query_length, new_head=False)
        new = {}
        keys = list(todo)
        chunk = 50  # write every 50 queries, so a killed scoring run resumes
        for i in range(0, len(keys), chunk):
            part = {q: todo[q] for q in keys[i:i + chunk]}
            new.update(score_candidates(ranker, ranker.params, part, coll.queries, coll.docs,
                                        batch_size=batch_size, progress=f"score {spec['name']} {i}/{len(keys)}"))
            if out_path:
                write_teacher_scores(out_path, {**done, **new})
    else:
        raise C.ConfigError(f"teacher {spec.get('name')!r}: unknown kind {kind!r} "
                            "(bm25 | biencoder_cosine | checkpoint | file)")
    scores = {**done, **new}
    if out_path:
        write_teacher_scores(out_path, scores)
    return scores


def cmd_score(args) -> int:
    from pile_jax.data import load_collection

    coll = load_collection(args.collection)
    qids = coll.split_qids(args.split)
    candidates, ranked = _candidates(coll, run_path=args.candidates, depth=args.depth, qids=qids)
    os.makedirs(args.out, exist_ok=True)
    for item in args.teacher:
        spec = _parse_teacher(item)
        path = os.path.join(args.out, f"{spec['name']}.tsv")
        scores = score_teacher(spec, coll, candidates, ranked, max_length=args.max_length,
                               batch_size=args.batch_size, out_path=path)
        print(f"{spec['name']}: {sum(map(len, scores.values()))} scores -> {path}")
    return 0


# ---------------------------------------------------------------------------------- ensemble
def _parse_options(items) -> dict:
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        import yaml

        out[k] = yaml.safe_load(v)
    return out


def cmd_ensemble(args) -> int:
    from pile_jax import ensemble as E
    from pile_jax.data import build_groups, load_collection, read_teacher_scores, write_teacher_scores
    from pile_jax.pipeline import groups_to_run, standardise, teacher_stats

    coll = load_collection(args.collection)
    qids = coll.split_qids(args.split)
    teachers = {os.path.splitext(os.path.basename(p))[0]: read_teacher_scores(p, collection=coll) for p in args.teachers}
    first = next(iter(teachers.values()))
    cands = {q: sorted(first.get(q, {}), key=lambda d: -first[q][d]) for q in qids if q in first}
    n = max(len(c) for c in cands.values())
    groups, stats = build_groups(coll, cands, teachers, group_size=n, qids=list(cands), unjudged=args.unjudged,
                                 require_label_pair=False,
                                 teacher_sources={k: p for k, p in zip(teachers, args.teachers)})
    if args.standardize == "global":
        groups = standardise(groups, *teacher_stats(groups))
    ts = np.transpose(groups["teacher_scores"], (1, 0, 2))
    where = groups["mask"] & groups["label_mask"]
    opts = _parse_options(args.option)
    z = np.asarray(E.ensemble(args.method, ts, groups["labels"], where=where, **opts))
    write_teacher_scores(args.out, groups_to_run(groups, z))
    report = E.teacher_report(ts, groups["labels"], where=where, teacher_names=list(teachers),
                              ensembles=[(args.method, args.method, opts)])
    print(E.format_teacher_report(report))
    print(f"{args.method}: {len(groups['query_id'])} lists -> {args.out}")
    return 0


# ------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from pile_jax.train_job import train_job

    cfg = _load(args)
    out = args.out or _default_out(args.config)
    train_job(cfg, out=out, resume=args.resume)
    print("training finished")
    return 0


# -------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from pile_jax.data import load_collection, read_run, write_run
    from pile_jax.train.evaluate import mean_metrics, run_metrics

    coll = load_collection(args.collection)
    qids = coll.split_qids(args.split)
    run = {q: dict(v) for q, v in read_run(args.run, collection=coll).items()}
    if args.model:
        from pile_jax import rankers
        from pile_jax.train.loop import score_candidates

        ranker = rankers.cross_encoder(args.model, max_length=args.max_length, new_head=False)
        cands = {q: [d for d, _ in sorted(run.get(q, {}).items(), key=lambda kv: -kv[1])][: args.depth] for q in qids}
        run = score_candidates(ranker, ranker.params, cands, coll.queries, coll.docs, progress="re-rank")
        if args.out_run:
            write_run(args.out_run, run, tag="pile_jax")
    per_query = run_metrics(run, coll.qrels, qids=qids)
    print(json.dumps(mean_metrics(per_query), indent=1))
    return 0


# ------------------------------------------------------------------------------------ export
def cmd_export(args) -> int:
    from pile_jax.train_job import export_workdir

    path = export_workdir(args.workdir, args.out, which=args.which)
    print(f"exported to {path}")
    return 0


# ------------------------------------------------------------------------------------- study
def cmd_study(args) -> int:
    from pile_jax.study import run_study

    cfg = _load(args, ["quick"] if args.quick else [])
    out = args.out or _default_out(args.config, "_quick" if args.quick else "")
    run_study(cfg, out=out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the pile-jax command")
