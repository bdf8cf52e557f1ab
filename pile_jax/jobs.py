"""The CLI's subcommands as functions (``cmd_<name>(args)``); ``cli.py`` only parses."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio


def _load(args, extra_presets=()) -> dict:
    return C.load_config(args.config, presets=list(extra_presets) + list(getattr(args, "presets", [])),
                         overrides=args.overrides)


def _default_out(config_path: str, suffix: str = "") -> str:
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", name + suffix)


# --------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    import logging

    from pile_jax.logs import log_to_file
    from pile_jax.pipeline import run

    cfg = _load(args, ["quick"] if args.quick else [])
    from pile_jax.schema import validate
    from pile_jax.train.loop import check_device_counts

    validate(cfg, job="run", data=args.data)  # the whole config, before any work
    check_device_counts(cfg, job="run")       # batch sizes vs the real device count (issue 19)
    out = args.out or _default_out(args.config, "_quick" if args.quick else "")
    pio.as_path(out).mkdir(parents=True, exist_ok=True)
    with log_to_file(pio.as_path(out) / "log.txt"):
        logging.getLogger(__name__).info(f"pile-jax run {args.config}{' --quick' if args.quick else ''} -> {out}")
        results = run(cfg, out=out, data=args.data)
    print(pio.read_text(pio.as_path(out) / "results.md"))
    return 0 if results else 1


# ------------------------------------------------------------------------------------- score
def _parse_teacher(item: str) -> dict:
    if "=" not in item:
        raise C.ConfigError(f"--teacher {item!r}: expected NAME=SPEC")
    name, spec = item.split("=", 1)
    from pile_jax.prepare import check_teacher_name

    check_teacher_name(name, f"--teacher {item!r}")
    if spec == "bm25":
        return {"name": name, "kind": "bm25"}
    if spec.startswith("biencoder:"):
        return {"name": name, "kind": "biencoder_cosine", "model": spec.split(":", 1)[1]}
    path, _, layers = spec.partition(":")
    return {"name": name, "kind": "checkpoint", "path": path, "num_layers": int(layers) if layers else None}


def _positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise C.ConfigError(f"--{name.replace('_', '-')} {value}: must be >= 1")


def _check_max_length(model: str, max_length: int) -> None:
    """``--max-length`` within the model's position embeddings (as ``Reranker.from_pretrained``)."""
    from pile_jax.models.hub import position_limit

    limit, folder = position_limit(model)
    if max_length > limit:
        raise C.ConfigError(f"--max-length {max_length}: exceeds the {limit} position embeddings of {folder}")


def cmd_score(args) -> int:
    from pile_jax.data import load_collection
    from pile_jax.models.tokenize import DEFAULT_MAX_QUERY_LENGTH
    from pile_jax.prepare import first_stage, obtain_teacher

    _positive(args, "depth", "max_length", "batch_size")
    specs = [_parse_teacher(item) for item in args.teacher]
    for spec in specs:
        if spec["kind"] != "bm25":
            _check_max_length(spec.get("path") or spec.get("model"), args.max_length)
    coll = load_collection(args.collection)
    qids = _split_qids(coll, args.split)
    candidates, ranked = first_stage(coll, run_path=args.candidates, depth=args.depth, qids=qids)
    for spec in specs:
        path = pio.as_path(args.out) / f"{spec['name']}.tsv"
        model = {"max_length": args.max_length, "max_query_length": DEFAULT_MAX_QUERY_LENGTH,
                 "base": "all-MiniLM-L6-v2"}
        if isinstance(spec.get("model"), str):
            model["base"] = spec["model"]
        scores, _ = obtain_teacher(spec, path=path, coll=coll, candidates=candidates, ranked=ranked, model=model,
                                   depth=args.depth, batch_size=args.batch_size, run_path=args.candidates)
        print(f"{spec['name']}: {sum(map(len, scores.values()))} scores -> {path}")
    return 0


def _check_judged(coll, qids, split: str) -> None:
    """An evaluation needs queries, and judgments for some of them: one line naming the file."""
    from pile_jax.data import DataError

    if not qids:
        raise DataError(f"{coll.path or coll.name}/splits.json", None, f"split {split!r} is empty: nothing to evaluate")
    if not any(coll.qrels.get(q) for q in qids):
        raise DataError(f"{coll.path or coll.name}/qrels.tsv", None,
                        f"no judgments for any query of split {split!r}: every metric would be 0")


def _split_qids(coll, split: str) -> list[str]:
    try:
        return coll.split_qids(split)
    except ValueError as e:
        raise C.ConfigError(f"--split: {e}") from None


# ---------------------------------------------------------------------------------- ensemble
def _parse_options(items) -> dict:
    import yaml

    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise C.ConfigError(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise C.ConfigError(f"--option {item!r}: value is not valid YAML ({e})") from None
    return out


def cmd_ensemble(args) -> int:
    from pile_jax import ensemble as E
    from pile_jax.data import build_groups, load_collection, read_teacher_scores, write_teacher_scores
    from pile_jax.pipeline import groups_to_run
    from pile_jax.prepare import standardise, teacher_stats

    if pio.as_path(args.out).is_dir():
        raise C.ConfigError(f"--out {args.out}: is a folder; the ensemble is written to one score file")
    opts = _parse_options(args.option)
    from pile_jax.train.objective import check_ensemble

    check_ensemble(args.method, opts, "--option", source="", name_key="--method")
    names = [os.path.splitext(pio.as_path(p).name)[0] for p in args.teachers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise C.ConfigError(f"--teachers: two files share the teacher name {dup[0]!r} (the file name without its "
                            "extension); rename one")
    coll = load_collection(args.collection)
    qids = _split_qids(coll, args.split)
    outliers = "accept" if getattr(args, "accept_outliers", False) else "error"
    teachers = {n: read_teacher_scores(p, collection=coll, outliers=outliers) for n, p in zip(names, args.teachers)}
    first = next(iter(teachers.values()))
    cands = {q: sorted(first.get(q, {}), key=lambda d: -first[q][d]) for q in qids if q in first}
    if not cands:
        from pile_jax.data import DataError

        raise DataError(args.teachers[0], None, f"no scores for any query of split {args.split!r}")
    n = max(len(c) for c in cands.values())
    groups, stats = build_groups(coll, cands, teachers, group_size=n, qids=list(cands), unjudged=args.unjudged,
                                 require_label_pair=False,
                                 teacher_sources={k: p for k, p in zip(teachers, args.teachers)})
    if args.standardize == "global":
        groups = standardise(groups, *teacher_stats(groups))
    ts = np.transpose(groups["teacher_scores"], (1, 0, 2))
    # every candidate is ensembled (unjudged ones too); label-supervised ensembles pair only the
    # items in label_mask (unjudged under --unjudged ignore take part in no label pair), as the
    # train step does (train/objective.py)
    where = groups["mask"] & groups["label_mask"]
    extra = {"label_where": groups["label_mask"]} if args.method in E.LABEL_ENSEMBLES else {}
    try:
        z = np.asarray(E.ensemble(args.method, ts, groups["labels"], where=groups["mask"], **extra, **opts))
    except (ValueError, TypeError) as e:
        raise C.ConfigError(f"--method {args.method} --option {opts}: {e}") from None
    write_teacher_scores(args.out, groups_to_run(groups, z))
    report = E.teacher_report(ts, groups["labels"], where=where, teacher_names=list(teachers),
                              ensembles=[(args.method, args.method, opts)])
    print(E.format_teacher_report(report))
    print(f"{args.method}: {len(groups['query_id'])} lists -> {args.out}")
    return 0


# ------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from pile_jax.schema import validate
    from pile_jax.train.loop import check_device_counts
    from pile_jax.train_job import init_distributed, train_job

    cfg = _load(args)
    validate(cfg, job="train")  # the whole config, before any work
    init_distributed(cfg)       # before any other JAX call: the device counts below are the pod's
    check_device_counts(cfg, job="train")
    out = args.out or _default_out(args.config)
    train_job(cfg, out=out, resume=args.resume, force_resume=getattr(args, "force_resume", False))
    print("training finished")
    return 0


# -------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from pile_jax.data import load_collection, read_run, write_run
    from pile_jax.train.evaluate import mean_metrics, run_metrics

    _positive(args, "depth", "max_length")
    if args.model:
        _check_max_length(args.model, args.max_length)
    coll = load_collection(args.collection)
    qids = _split_qids(coll, args.split)
    _check_judged(coll, qids, args.split)
    run = {q: dict(v) for q, v in read_run(args.run, collection=coll).items()}
    if not run:
        import logging

        logging.getLogger("pile_jax").warning("%s: the run file holds no documents: every metric is 0", args.run)
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
    from pile_jax.schema import validate
    from pile_jax.study import merge_studies, run_study

    if getattr(args, "merge", None):
        if not args.out:
            raise C.ConfigError("--merge needs --out")
        merge_studies(args.merge, args.out)
        return 0
    cfg = _load(args, ["quick"] if args.quick else [])
    validate(cfg, job="study")  # the whole config, before any work
    from pile_jax.train.loop import check_device_counts

    check_device_counts(cfg, job="study")
    out = args.out or _default_out(args.config, "_quick" if args.quick else "")
    run_study(cfg, out=out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the pile-jax command")
