"""``pile-jax run``: the end-to-end job on a relevance-judged collection.

1. BM25 candidates for every query (bm25s), written as a TREC run.
2. Teachers score every candidate (written as teacher score files, ``qid docid score``):
   cross-encoders fine-tuned from real MiniLM weights on the train queries' labels (cross-fitted
   over folds, so the scores on train queries come from a model that did not see them), the
   zero-shot MiniLM bi-encoder cosine, and BM25.
3. Ensembles of the teachers' logits (``pile`` and the baselines) on every split, with the
   teacher report (PNR / NDCG of each teacher and ensemble against the labels).
4. Students (the first layers of MiniLM) trained from the same initialisation with each
   configured objective, over several seeds; the ensemble target is built inside the train step.
5. Every system is evaluated on the test queries (trec_eval's ndcg_cut_10, recip_rank, map, and
   PNR), with TREC run files, ``results.json``, ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax.bm25 import bm25_search
from pile_jax.data import build_groups, iter_group_examples, load_collection, write_run, write_teacher_scores
from pile_jax.data.trec import read_teacher_scores
from pile_jax.train.evaluate import mean_metrics, run_metrics

METRIC_NAMES = ("ndcg_cut_10", "recip_rank", "map", "pnr")


class Log:
    """Prints and keeps a transcript (written to ``out/log.txt``)."""

    def __init__(self, path: str | None = None, quiet: bool = False):
        self.lines: list[str] = []
        self.path = path
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        self.lines.append(line)
        if not self.quiet:
            print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _subset(run: Mapping[str, Mapping[str, float]], qids) -> dict:
    return {q: dict(run.get(q, {})) for q in qids}


def groups_to_run(groups: Mapping[str, Any], scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-group scores ``[G, n]`` back to ``{qid: {doc_id: score}}`` (valid items only)."""
    run: dict[str, dict[str, float]] = {}
    for g, qid in enumerate(groups["query_id"]):
        row = {}
        for j, d in enumerate(groups["doc_ids"][g]):
            if groups["mask"][g, j]:
                row[str(d)] = float(scores[g, j])
        run[qid] = row
    return run


def ensemble_specs(methods: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, dict]]:
    """Config ``{display: {name: registry_name, **options}}`` -> teacher_report's item tuples."""
    out = []
    for display, spec in methods.items():
        opts = dict(spec or {})
        out.append((display, opts.pop("name", display), opts))
    return out


def _train_group_args(cfg: Mapping[str, Any]) -> dict:
    """Training groups: ``train_groups.size`` items per query (default: the depth), chosen by
    ``train_groups.policy`` (``top`` | ``positives_top`` | ``positives_sampled``)."""
    depth = int(C.require(cfg, "first_stage.depth"))
    tg = cfg.get("train_groups") or {}
    return {"group_size": int(tg.get("size", depth)), "policy": tg.get("policy", "top"),
            "seed": int(tg.get("seed", 0))}


def teacher_candidates(cfg: Mapping[str, Any], coll, candidates: Mapping[str, list], train_qids) -> dict:
    """The candidates teachers score: train queries only ever enter training as their training
    group, so there just its members; dev/test queries keep all ``depth`` candidates (evaluation)."""
    members, _ = build_groups(coll, candidates, {}, qids=list(train_qids),
                              unjudged=C.get(cfg, "data.unjudged", "zero"), require_label_pair=False,
                              **_train_group_args(cfg))
    scored = dict(candidates)
    for qid, row, mask in zip(members["query_id"], members["doc_ids"], members["mask"]):
        scored[qid] = [str(d) for d, m in zip(row, mask) if m]
    return scored


def teacher_stats(groups: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-teacher mean and std of the scores over the valid items of ``groups``."""
    ts, mask = groups["teacher_scores"], groups["mask"]
    T = ts.shape[1]
    mu = np.array([ts[:, t][mask].mean() for t in range(T)], np.float32)
    sd = np.array([max(ts[:, t][mask].std(), 1e-6) for t in range(T)], np.float32)
    return mu, sd


def standardise(groups: dict, mu: np.ndarray, sd: np.ndarray) -> dict:
    """Teacher scores ``(s - mu_t) / sd_t`` (padding stays 0): one global scale per teacher, so
    logits of different magnitudes (BM25 ~10, cosine ~0.5) mix without changing any teacher's
    order or its within-list margins' relative size."""
    ts = (groups["teacher_scores"] - mu[None, :, None]) / sd[None, :, None]
    return dict(groups, teacher_scores=(ts * groups["mask"][:, None, :]).astype(np.float32))


def _train_cross_encoder_teacher(spec, *, cfg, coll, candidates, fit_candidates, train_qids, dev_qids, score_qids,
                                 out_dir, log):
    """Cross-fitted fine-tuning: fold k's model scores fold k's train queries; every fold model
    scores the other queries and their logits are averaged."""
    from pile_jax import rankers
    from pile_jax.train.loop import score_candidates, train

    folds = int(spec.get("folds", 2))
    seed = int(spec.get("seed", 0))
    rng = np.random.default_rng(seed)
    order = list(train_qids)
    rng.shuffle(order)
    fold_of = {q: i % folds for i, q in enumerate(order)}
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.update(spec.get("model", {}))
    scores: dict[str, dict[str, float]] = {}
    others = [q for q in score_qids if q not in fold_of]
    for k in range(folds):
        fit_qids = [q for q in train_qids if fold_of[q] != k] if folds > 1 else list(train_qids)
        groups, stats = build_groups(coll, fit_candidates, {}, qids=fit_qids, unjudged=C.get(cfg, "data.unjudged", "zero"),
                                     **_train_group_args(cfg))
        ranker = rankers.cross_encoder(model_cfg.get("base", "all-MiniLM-L6-v2"),
                                       num_layers=spec.get("num_layers", model_cfg.get("num_layers")),
                                       max_length=int(model_cfg.get("max_length", 128)),
                                       max_query_length=int(model_cfg.get("max_query_length", 32)),
                                       dtype=model_cfg.get("dtype", "float32"), seed=seed + k, new_head=True)
        train_cfg = dict(cfg.get("teacher_train", {}))
        train_cfg.update(spec.get("train", {}))
        train_cfg["seed"] = seed + 100 * k
        log(f"teacher {spec['name']}: fold {k + 1}/{folds}: {len(groups['query_id'])} train groups "
            f"({stats.get('skipped_no_label_pair', 0)} lists without a label pair skipped)")
        result = train(ranker, source=list(iter_group_examples(groups)), objective=spec["objective"],
                       queries=coll.queries, docs=coll.docs, config=train_cfg,
                       workdir=os.path.join(out_dir, f"{spec['name']}_fold{k}"), log=log)
        held = [q for q in train_qids if fold_of[q] == k] if folds > 1 else []
        # dev/test queries: scored by every fold model (averaged), or only by the first one
        # (`eval_scored_by: first`, half the scoring cost on a CPU).
        eval_models = folds if spec.get("eval_scored_by", "all") == "all" else 1
        scored_others = others if k < eval_models else []
        part = score_candidates(ranker, result.params, {q: candidates[q] for q in held + scored_others},
                                coll.queries, coll.docs, batch_size=int(cfg.get("score_batch_size", 64)),
                                progress=f"score {spec['name']} fold {k + 1}")
        for q in held:
            scores[q] = part[q]
        for q in scored_others:
            acc = scores.setdefault(q, {d: 0.0 for d in candidates[q]})
            for d, s in part[q].items():
                acc[d] += s / eval_models
    return scores


def _teacher_scores(spec, *, cfg, coll, candidates, bm25_run, splits, out_dir, log, fit_candidates=None):
    """Scores ``candidates`` with one teacher spec. A fine-tuned cross-encoder trains on groups
    drawn from ``fit_candidates`` (default: ``candidates``)."""
    kind = spec["kind"]
    score_qids = [q for s in ("train", "dev", "test") for q in splits[s]]
    if kind == "bm25":
        return {q: {d: bm25_run[q][d] for d in candidates[q]} for q in score_qids}
    if kind == "biencoder_cosine":
        from pile_jax import rankers

        model_cfg = dict(cfg.get("model", {}))
        model_cfg.update(spec.get("model", {}))
        ranker = rankers.biencoder_cosine(model_cfg.get("base", "all-MiniLM-L6-v2"),
                                          max_length=int(model_cfg.get("max_length", 128)))
        return rankers.biencoder_score_candidates(ranker, {q: candidates[q] for q in score_qids}, coll.queries,
                                                  coll.docs, batch_size=int(cfg.get("score_batch_size", 64)),
                                                  progress=f"score {spec['name']}")
    if kind == "cross_encoder":
        return _train_cross_encoder_teacher(spec, cfg=cfg, coll=coll, candidates=candidates,
                                            fit_candidates=candidates if fit_candidates is None else fit_candidates,
                                            train_qids=splits["train"], dev_qids=splits["dev"],
                                            score_qids=score_qids, out_dir=out_dir, log=log)
    raise C.ConfigError(f"{cfg.get('_source', 'config')}: teachers: unknown kind {kind!r} "
                        "(known: cross_encoder, biencoder_cosine, bm25)")


def run(cfg: Mapping[str, Any], *, out: str, data: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Runs the whole job; returns the ``results.json`` content."""
    from pile_jax import ensemble as E
    from pile_jax import rankers
    from pile_jax.data import build_ranking_groups_dataset
    from pile_jax.train.loop import score_candidates, train
    from pile_jax.report import write_report

    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    log = log or Log(os.path.join(out, "log.txt"))
    timings: dict[str, float] = {}

    def phase(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]}s")

    # ---- data and first stage
    t0 = time.perf_counter()
    coll = load_collection(data or C.require(cfg, "data.collection"),
                           qrels_file=C.get(cfg, "data.qrels_file", "qrels.tsv"))
    splits = C.limited_splits(cfg, coll)
    eval_split = C.get(cfg, "eval.split", "test")
    depth = int(C.require(cfg, "first_stage.depth"))
    log(f"collection {coll.name}: {len(coll.docs)} docs, {len(coll.queries)} queries; "
        + ", ".join(f"{s} {len(q)}" for s, q in splits.items()))
    all_qids = [q for s in ("train", "dev", "test") for q in splits[s]]
    bm25_run = bm25_search(coll.docs, {q: coll.queries[q] for q in all_qids}, depth=depth)
    candidates = {q: list(bm25_run[q]) for q in all_qids}
    scored = teacher_candidates(cfg, coll, candidates, splits["train"])
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    phase("bm25", t0)

    # ---- teachers
    t0 = time.perf_counter()
    teacher_dir = os.path.join(out, "teachers")
    os.makedirs(teacher_dir, exist_ok=True)
    teachers: dict[str, dict[str, dict[str, float]]] = {}
    for spec in C.require(cfg, "teachers"):
        path = os.path.join(teacher_dir, f"{spec['name']}.tsv")
        if os.path.exists(path):
            teachers[spec["name"]] = read_teacher_scores(path)
            log(f"teacher {spec['name']}: reusing {path}")
            continue
        t1 = time.perf_counter()
        scores = _teacher_scores(spec, cfg=cfg, coll=coll, candidates=scored, fit_candidates=candidates,
                                 bm25_run=bm25_run,
                                 splits=splits, out_dir=os.path.join(out, "teacher_models"), log=log)
        write_teacher_scores(path, scores)
        teachers[spec["name"]] = scores
        log(f"teacher {spec['name']} ({spec['kind']}): scored {sum(map(len, scores.values()))} pairs "
            f"in {time.perf_counter() - t1:.1f}s -> {path}")
    teacher_names = list(teachers)
    phase("teachers", t0)

    # ---- ranking groups (all teachers) per split, TFDS materialisation of the train split
    t0 = time.perf_counter()
    unjudged = C.get(cfg, "data.unjudged", "zero")
    groups, stats = {}, {}
    for s in ("train", "dev", "test"):
        size_args = _train_group_args(cfg) if s == "train" else {"group_size": depth}
        groups[s], stats[s] = build_groups(coll, candidates, teachers, qids=splits[s], unjudged=unjudged,
                                           require_label_pair=(s == "train"), **size_args)
    standardize = C.get(cfg, "ensembles.standardize", "global")
    if standardize not in ("global", "none"):
        raise C.ConfigError(f"{cfg.get('_source')}: ensembles.standardize must be global or none")
    mu, sd = teacher_stats(groups["train"])
    if standardize == "global":
        groups = {s: standardise(g, mu, sd) for s, g in groups.items()}
    builder = build_ranking_groups_dataset({"train": groups["train"]}, os.path.join(out, "tfds"),
                                           name=f"{coll.name}_n{groups['train']['labels'].shape[1]}_t{len(teacher_names)}",
                                           overwrite=True)
    train_source = builder.as_data_source()["train"]
    log(f"ranking groups: " + ", ".join(f"{s} {len(g['query_id'])}" for s, g in groups.items())
        + f"; train skipped (no label pair) {stats['train'].get('skipped_no_label_pair', 0)}; "
        f"TFDS ArrayRecord at {builder.data_dir}")
    phase("groups", t0)

    # ---- systems evaluated on the eval split: BM25, teachers, ensembles, students
    qrels = coll.qrels
    eval_qids = splits[eval_split]
    runs: dict[str, dict] = {}
    systems: dict[str, list[str]] = {}

    def add_run(system: str, seed: int | None, run_: Mapping[str, Mapping[str, float]]):
        fname = f"{system}__seed{seed if seed is not None else 0}.trec"
        write_run(os.path.join(runs_dir, fname), _subset(run_, eval_qids), tag=system)
        runs[fname] = mean_metrics(run_metrics(_subset(run_, eval_qids), qrels, qids=eval_qids))
        systems.setdefault(system, []).append(fname)
        log(f"{system:>28s} seed {seed}: " + " ".join(f"{k}={runs[fname][k]:.4f}" for k in METRIC_NAMES))

    add_run("bm25", None, bm25_run)
    for name in teacher_names:
        add_run(f"teacher_{name}", None, teachers[name])

    # ---- ensembles + teacher report
    t0 = time.perf_counter()
    methods = C.get(cfg, "ensembles.methods", {"mean": {"name": "mean"}, "pile": {"name": "pile"}})
    ev = groups[eval_split]
    ts_eval = np.transpose(ev["teacher_scores"], (1, 0, 2))
    for mname, fn_name, opts in ensemble_specs(methods):
        # Label-supervised ensembles (pile, best_teacher_per_list) are training targets: on the
        # eval split they would read the test labels, so they are not evaluated as systems there
        # (their quality against labels is in the teacher report, marked as such).
        if fn_name in E.LABEL_ENSEMBLES:
            continue
        z = np.asarray(E.ensemble(fn_name, ts_eval, None, where=ev["mask"], **opts))
        add_run(f"ensemble_{mname}", None, groups_to_run(ev, z))
    report_sections = {}
    for uj in ("zero", "ignore"):
        for s in ("train", eval_split):
            if uj == unjudged:
                g = groups[s]
            else:
                size_args = _train_group_args(cfg) if s == "train" else {"group_size": depth}
                g = build_groups(coll, candidates, teachers, qids=splits[s], unjudged=uj,
                                 require_label_pair=(s == "train"), **size_args)[0]
                g = standardise(g, mu, sd) if standardize == "global" else g
            ts = np.transpose(g["teacher_scores"], (1, 0, 2))
            report_sections[f"{s} (unjudged={uj})"] = E.teacher_report(
                ts, g["labels"], where=g["mask"] & g["label_mask"], teacher_names=teacher_names,
                ensembles=ensemble_specs(methods))
    for key, rep in report_sections.items():
        note = (" [diagnostic: label-supervised ensembles here read this split's labels]"
                if key.startswith(eval_split) else "")
        log(f"teacher report, {key}{note}:\n" + E.format_teacher_report(rep))
    phase("ensembles", t0)

    # ---- students
    t0 = time.perf_counter()
    scfg = C.require(cfg, "students")
    seeds = [int(s) for s in scfg.get("seeds", [0])]
    dev_cands = {q: candidates[q] for q in splits["dev"]}
    dev_teacher = {name: mean_metrics(run_metrics(_subset(teachers[name], splits["dev"]), qrels, qids=splits["dev"]))
                   for name in teacher_names}
    best_teacher = max(teacher_names, key=lambda n: dev_teacher[n]["ndcg_cut_10"])
    log(f"best single teacher on dev (ndcg_cut_10): {best_teacher} "
        f"({dev_teacher[best_teacher]['ndcg_cut_10']:.4f})")
    curves: dict[str, list] = {}
    model_cfg = dict(cfg.get("model", {}))
    # students.kind: cross_encoder (default) or any student of pile_jax.models.students, with
    # students.options (e.g. bert_dot {pooling: mean}); two-tower kinds read model.max_doc_length.
    kind = scfg.get("kind", "cross_encoder")
    from pile_jax.models.students import STUDENT_KINDS

    if kind not in STUDENT_KINDS:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: students.kind: unknown student {kind!r} "
                            f"(known: {', '.join(STUDENT_KINDS)})")
    student_extra = dict(scfg.get("options") or {})
    if kind == "cross_encoder" and not student_extra:
        make_student = functools.partial(rankers.cross_encoder, new_head=True)
    else:
        make_student = functools.partial(rankers.student, kind)
        if kind != "cross_encoder":
            student_extra["max_doc_length"] = int(model_cfg.get("max_doc_length", model_cfg.get("max_length", 128)))
    for run_name, obj_cfg in scfg["runs"].items():
        obj = dict(obj_cfg)
        if obj.get("teacher") == "best":
            obj.pop("teacher")
            obj["target"] = "teacher"
            obj["teacher_index"] = teacher_names.index(best_teacher)
        for seed in seeds:
            t1 = time.perf_counter()
            ranker = make_student(model_cfg.get("base", "all-MiniLM-L6-v2"),
                                  num_layers=int(scfg.get("num_layers", 2)),
                                  max_length=int(model_cfg.get("max_length", 128)),
                                  max_query_length=int(model_cfg.get("max_query_length", 32)),
                                  dtype=model_cfg.get("dtype", "float32"), seed=seed, **student_extra)
            bs = int(cfg.get("score_batch_size", 64))

            def dev_eval(params, ranker=ranker):
                run_ = score_candidates(ranker, params, dev_cands, coll.queries, coll.docs, batch_size=bs)
                return mean_metrics(run_metrics(run_, qrels, qids=splits["dev"]))

            tcfg = dict(scfg.get("train", {}))
            tcfg["seed"] = seed
            result = train(ranker, source=train_source, objective=obj, queries=coll.queries, docs=coll.docs,
                           config=tcfg, workdir=os.path.join(out, "students", f"{run_name}__seed{seed}"),
                           evaluate=dev_eval if scfg.get("select_on_dev", True) else None, log=log)
            curves.setdefault(run_name, []).append([(h["step"], h["loss"]) for h in result.history if "loss" in h])
            run_ = score_candidates(ranker, result.params, {q: candidates[q] for q in eval_qids},
                                    coll.queries, coll.docs, batch_size=bs)
            add_run(f"student_{run_name}", seed, run_)
            log(f"student {run_name} seed {seed}: {time.perf_counter() - t1:.1f}s (best dev step {result.best_step})")
    phase("students", t0)

    # ---- report
    summary = {}
    for system, files in systems.items():
        summary[system] = {}
        for m in METRIC_NAMES:
            vals = np.array([runs[f][m] for f in files], np.float64)
            summary[system][m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                  "n": int(len(vals))}
    timings["total"] = round(time.perf_counter() - t_start, 1)
    results = {
        "runs": runs,
        "systems": summary,
        "collection": coll.name,
        "eval_split": eval_split,
        "eval_queries": len(eval_qids),
        "teachers": teacher_names,
        "best_teacher": best_teacher,
        "seeds": seeds,
        "timings_s": timings,
        "teacher_report": {k: _jsonable(v) for k, v in report_sections.items()},
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_report(results, curves, out)
    log(f"done in {timings['total']}s: {os.path.join(out, 'results.md')}")
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
