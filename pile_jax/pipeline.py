"""``pile-jax run``: the end-to-end job on a relevance-judged collection.

1-2. :func:`pile_jax.prepare.prepare`: BM25 candidates for every query (bm25s), and the
   teachers' scores of every candidate (teacher score files ``qid docid score`` with the spec
   that made them in ``<name>.spec.json``, reused when it matches):
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
import logging
import time
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio
from pile_jax.data import build_groups, write_run
from pile_jax.logs import log_to_file
from pile_jax.prepare import (concat_groups, prepare, ranking_groups_source, standardise, standardize_setting,
                              teacher_stats, train_group_args)
from pile_jax.train.evaluate import mean_metrics, run_metrics
from pile_jax.workfolders import groups_digest, prepare_student_folder, student_run_spec

METRIC_NAMES = ("ndcg_cut_10", "recip_rank", "map", "pnr", "pnr_pooled")
DEV_METRIC = "ndcg_cut_10"  # picks the exported seed of each student system


_log = logging.getLogger(__name__)

__all__ = ["run", "groups_to_run", "ensemble_specs", "teacher_stats", "standardise", "METRIC_NAMES"]


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


def _student_kind(cfg: Mapping[str, Any]) -> str:
    """``students.kind`` (default cross_encoder), checked against the known student kinds."""
    from pile_jax.models.students import STUDENT_KINDS

    kind = C.require(cfg, "students").get("kind", "cross_encoder")
    if kind not in STUDENT_KINDS:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: students.kind: unknown student {kind!r} "
                            f"(known: {', '.join(STUDENT_KINDS)})")
    return kind


def _student_meta(kind: str, scfg: Mapping[str, Any], model_cfg: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    """The ``student`` entry of a student work folder's ``model.json`` (what ``pile-jax export``
    rebuilds the student from)."""
    from pile_jax.models.tokenize import PIPELINE_MAX_LENGTH, PIPELINE_MAX_QUERY_LENGTH

    return {"kind": kind, "base": model_cfg.get("base", "all-MiniLM-L6-v2"),
            "num_layers": int(scfg.get("num_layers", 2)),
            "max_length": int(model_cfg.get("max_length", PIPELINE_MAX_LENGTH)),
            "max_query_length": int(model_cfg.get("max_query_length", PIPELINE_MAX_QUERY_LENGTH)),
            "max_doc_length": extra.get("max_doc_length", int(model_cfg.get("max_length", PIPELINE_MAX_LENGTH))),
            "dtype": model_cfg.get("dtype", "float32"),
            "options": {k: v for k, v in extra.items() if k != "max_doc_length"}}


def run(cfg: Mapping[str, Any], *, out: str, data: str | None = None, log: Callable[[str], None] | None = None,
        export: bool = True) -> dict:
    """Runs the whole job; returns the ``results.json`` content.

    Progress goes to the ``pile_jax`` logger (or to ``log``, a ``str -> None`` callable) and to
    ``<out>/log.txt``; ``export``: each student system's best seed (by the dev metric) is exported
    to ``<out>/models/<system>/`` (:func:`pile_jax.models.export.export_student`)."""
    with log_to_file(pio.as_path(out) / "log.txt"):
        return _run(cfg, out=out, data=data, log=log or _log.info, export=export)


def _run(cfg, *, out, data, log, export):
    from pile_jax import ensemble as E
    from pile_jax import rankers
    from pile_jax.models.tokenize import PIPELINE_MAX_LENGTH, PIPELINE_MAX_QUERY_LENGTH
    from pile_jax.train.loop import score_candidates, train
    from pile_jax.report import jsonable, write_report

    t_start = time.perf_counter()
    out_path = pio.as_path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def phase(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]}s")

    # ---- collection, first stage, teachers, ranking groups (standardised), in one place
    t0 = time.perf_counter()
    C.require(cfg, "teachers")
    C.require(cfg, "first_stage.depth")
    _student_kind(cfg)  # config errors before any work
    eval_split = C.get(cfg, "eval.split", "test")
    standardize = standardize_setting(cfg, "ensembles.standardize", "global")
    prep = prepare(cfg, out=out, data=data, log=log, standardize=standardize)
    coll, splits, depth, candidates = prep.coll, prep.splits, prep.depth, prep.candidates
    if eval_split not in splits:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: eval.split: unknown split {eval_split!r} "
                            f"(known: {', '.join(splits)})")
    bm25_run, teachers, groups, stats, mu, sd = prep.ranked, prep.teachers, prep.groups, prep.group_stats, prep.mu, prep.sd
    teacher_names = prep.teacher_names
    unjudged = C.get(cfg, "data.unjudged", "zero")
    runs_dir = out_path / "runs"
    train_source, builder = ranking_groups_source(
        groups["train"], out_path / "tfds", f"{coll.name}_n{groups['train']['labels'].shape[1]}_t{len(teacher_names)}")
    # distillation runs also read the transfer set (unlabelled pseudo-query groups, label_mask all
    # False: they take part in distillation terms only, and PILE there is the mean of the teachers)
    transfer_source = None
    if prep.transfer is not None:
        transfer_source, _ = ranking_groups_source(
            concat_groups(groups["train"], prep.transfer), out_path / "tfds",
            f"{coll.name}_n{groups['train']['labels'].shape[1]}_t{len(teacher_names)}_transfer")
    log("ranking groups: " + ", ".join(f"{s} {len(g['query_id'])}" for s, g in groups.items())
        + (f", transfer {len(prep.transfer['query_id'])} (unlabelled)" if prep.transfer is not None else "")
        + f"; train skipped (no label pair) {stats['train'].get('skipped_no_label_pair', 0)}; "
        f"TFDS ArrayRecord at {builder.data_dir}")
    phase("prepare", t0)

    # ---- systems evaluated on the eval split: BM25, teachers, ensembles, students
    qrels = coll.qrels
    eval_qids = splits[eval_split]
    runs: dict[str, dict] = {}
    systems: dict[str, list[str]] = {}

    def add_run(system: str, seed: int | None, run_: Mapping[str, Mapping[str, float]]):
        fname = f"{system}__seed{seed if seed is not None else 0}.trec"
        if pio.is_primary():
            write_run(runs_dir / fname, _subset(run_, eval_qids), tag=system)
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
                size_args = train_group_args(cfg, depth) if s == "train" else {"group_size": depth}
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
    dev_curves: dict[str, list] = {}   # the dev selection metric during training (select_on_dev)
    best_students: dict[str, tuple] = {}
    model_cfg = dict(cfg.get("model", {}))
    # students.kind: cross_encoder (default) or any student of pile_jax.models.students, with
    # students.options (e.g. bert_dot {pooling: mean}); two-tower kinds read model.max_doc_length.
    kind = _student_kind(cfg)
    student_extra = dict(scfg.get("options") or {})
    if kind == "cross_encoder" and not student_extra:
        make_student = functools.partial(rankers.cross_encoder, new_head=True)
    else:
        make_student = functools.partial(rankers.student, kind)
        if kind != "cross_encoder":
            student_extra["max_doc_length"] = int(model_cfg.get("max_doc_length", model_cfg.get("max_length", PIPELINE_MAX_LENGTH)))
    bs = int(cfg.get("score_batch_size", 64))
    student_args = dict(num_layers=int(scfg.get("num_layers", 2)),
                        max_length=int(model_cfg.get("max_length", PIPELINE_MAX_LENGTH)),
                        max_query_length=int(model_cfg.get("max_query_length", PIPELINE_MAX_QUERY_LENGTH)),
                        dtype=model_cfg.get("dtype", "float32"), **student_extra)
    sel = str(dict(scfg.get("train") or {}).get("select_metric", DEV_METRIC))  # dev selection metric
    init_dev = None
    if scfg.get("report_init", True):
        # the students' common starting point, untrained (seed of the first run: new heads are random)
        init = make_student(model_cfg.get("base", "all-MiniLM-L6-v2"), seed=seeds[0], **student_args)
        add_run("student_init", None, score_candidates(init, init.params, {q: candidates[q] for q in eval_qids},
                                                       coll.queries, coll.docs, batch_size=bs))
        if scfg.get("select_on_dev", True):   # step 0 of the dev curves in results.png
            init_run = score_candidates(init, init.params, dev_cands, coll.queries, coll.docs, batch_size=bs)
            init_dev = mean_metrics(run_metrics(init_run, qrels, qids=splits["dev"]))[sel]
    student_meta = _student_meta(kind, scfg, model_cfg, student_extra)
    for run_name, obj_cfg in (scfg.get("runs") or {}).items():
        obj = dict(obj_cfg)
        # transfer: true|false (default: true for runs with a distillation term, when a transfer set exists)
        use_transfer = bool(obj.pop("transfer", bool(obj.get("distill_losses"))))
        if use_transfer and transfer_source is None and "transfer" in obj_cfg:
            raise C.ConfigError(f"{cfg.get('_source', 'config')}: students.runs.{run_name}.transfer: "
                                "no transfer set (set transfer.queries)")
        if use_transfer and not obj.get("distill_losses"):
            raise C.ConfigError(f"{cfg.get('_source', 'config')}: students.runs.{run_name}.transfer: the transfer "
                                "set is unlabelled, so it needs a distillation term (distill_losses)")
        source = transfer_source if (use_transfer and transfer_source is not None) else train_source
        if obj.get("teacher") == "best":
            obj.pop("teacher")
            obj["target"] = "teacher"
            obj["teacher_index"] = teacher_names.index(best_teacher)
        for seed in seeds:
            t1 = time.perf_counter()
            ranker = make_student(model_cfg.get("base", "all-MiniLM-L6-v2"), seed=seed, **student_args)

            def dev_eval(params, ranker=ranker):
                run_ = score_candidates(ranker, params, dev_cands, coll.queries, coll.docs, batch_size=bs)
                return mean_metrics(run_metrics(run_, qrels, qids=splits["dev"]))

            tcfg = dict(scfg.get("train", {}))
            tcfg["seed"] = seed
            work = out_path / "students" / f"{run_name}__seed{seed}"
            spec = student_run_spec(cfg, run_name, seed, data=data, digest=groups_digest(
                groups["train"], prep.transfer if source is transfer_source else None))
            resume = prepare_student_folder(work, spec, log=log)   # same spec: resume; changed: clean
            if pio.is_primary():   # the spec first, so the checkpoints always belong to model.json
                pio.write_json(work / "model.json", {"student": student_meta, "seed": seed, "run_spec": spec})
            result = train(ranker, source=source, objective=obj, queries=coll.queries, docs=coll.docs,
                           config=tcfg, workdir=str(work), resume=resume,
                           evaluate=dev_eval if scfg.get("select_on_dev", True) else None, log=log)
            curves.setdefault(run_name, []).append([(h["step"], h["loss"]) for h in result.history if "loss" in h])
            dev_points = {h["step"]: h["eval"][sel] for h in result.history
                          if isinstance(h.get("eval"), Mapping) and sel in h["eval"]}
            if dev_points and init_dev is not None:
                dev_points.setdefault(0, init_dev)
            dev_curves.setdefault(run_name, []).append(sorted(dev_points.items()))
            run_ = score_candidates(ranker, result.params, {q: candidates[q] for q in eval_qids},
                                    coll.queries, coll.docs, batch_size=bs, progress=f"{eval_split} {run_name}")
            add_run(f"student_{run_name}", seed, run_)
            log(f"student {run_name} seed {seed}: {time.perf_counter() - t1:.1f}s (best dev step {result.best_step})")
            if export:
                dev = result.best_metric
                if dev is None:  # trained without dev selection: score dev once to pick the seed
                    dev = dev_eval(result.params)[sel]
                card = {"name": f"student_{run_name} (seed {seed})", "teachers": teacher_names, "objective": obj,
                        "data": f"{coll.name} train queries ({len(groups['train']['query_id'])} ranking groups)",
                        "metrics": runs[f"student_{run_name}__seed{seed}.trec"], "metrics_split": eval_split,
                        "dev_" + sel: float(dev)}
                if pio.is_primary():  # `pile-jax export <work folder>` re-exports any seed
                    pio.write_json(work / "model.json", {"student": student_meta, "seed": seed, "card": card,
                                                         "run_spec": spec})
                if best_students.get(run_name) is None or float(dev) > best_students[run_name][0]:
                    best_students[run_name] = (float(dev), seed, ranker, result.params, card, sel)
    phase("students", t0)

    # ---- export: each student system's best seed (dev metric) -> <out>/models/<system>/
    exported = {}
    if export and pio.is_primary():
        from pile_jax.rankers import export_ranker

        for run_name, (dev, seed, ranker, params, card, sel) in best_students.items():
            path = out_path / "models" / f"student_{run_name}"
            export_ranker(ranker, params, str(path), card=card)
            exported[f"student_{run_name}"] = {"path": str(path), "seed": seed, "dev_" + sel: dev}
            log(f"student_{run_name}: exported seed {seed} (dev {sel} {dev:.4f}) -> {path}")
    pio.barrier("pipeline_export")

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
        "exported_models": exported,
        "teacher_report": {k: jsonable(v) for k, v in report_sections.items()},
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
    }
    if pio.is_primary():
        pio.write_json(out_path / "results.json", results)
        write_report(results, curves, out, dev_curves=dev_curves,
                     dev_metric=sel)
    pio.barrier("pipeline_results")
    log(f"done in {timings['total']}s: {out_path / 'results.md'}")
    return results

