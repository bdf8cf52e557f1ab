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
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio
from pile_jax.data import build_groups, write_run
from pile_jax.logs import log_to_file
from pile_jax.models.tokenize import PIPELINE_MAX_LENGTH, PIPELINE_MAX_QUERY_LENGTH
from pile_jax.prepare import (concat_groups, prepare, ranking_groups_source, standardise, standardize_setting,
                              teacher_stats, train_group_args)
from pile_jax.train.evaluate import mean_metrics, run_metrics
from pile_jax.workfolders import groups_digest, prepare_student_folder, student_run_spec

METRIC_NAMES = ("ndcg_cut_10", "recip_rank", "map", "pnr", "pnr_pooled")
DEV_METRIC = "ndcg_cut_10"  # picks the exported seed of each student system
SIGNIFICANCE_METRIC = "ndcg_cut_10"  # the per-query metric of the paired tests (results.json "significance")


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


# ------------------------------------------------------------------------------ schema
#: the top-level sections of a ``pile-jax run`` config
CONFIG_KEYS = ("data", "first_stage", "candidates", "train_groups", "model", "score_batch_size", "teachers",
               "teacher_train", "ensembles", "students", "eval", "transfer")
STUDENTS_KEYS = ("kind", "options", "num_layers", "seeds", "select_on_dev", "train", "runs", "report_init",
                 "reference", "test")


def check_students(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: the ``students:`` section (kind and options, seeds, train section, runs and
    their objectives, ``teacher: best``) and the ``transfer:`` section."""
    from pile_jax.models.students import STUDENT_KINDS
    from pile_jax.prepare import transfer_settings
    from pile_jax.rankers import check_layers, check_student_options
    from pile_jax.train.loop import check_train_section
    from pile_jax.train.objective import check_objective

    s = c.section(cfg.get("students"), "students", STUDENTS_KEYS, required=True)
    c.choice(s, "kind", "students", STUDENT_KINDS)
    base = (context.get("model") or {}).get("base", "all-MiniLM-L6-v2")
    check_layers(c, s, "num_layers", "students", base)
    for key in ("select_on_dev", "report_init"):
        if key in s and not isinstance(s[key], bool):
            c.fail(f"students.{key}", f"must be true or false, got {s[key]!r}")
    C.check_seeds(c, s, "students")
    if "train" in s:
        check_train_section(s["train"], "students.train", c.source)
    check_student_options(c, s.get("kind", "cross_encoder"), s.get("options"), "students.options", base=base,
                          num_layers=s.get("num_layers", 2))
    runs = s.get("runs")
    if not isinstance(runs, Mapping) or not runs:
        c.fail("students.runs", "required: a mapping of run name -> objective")
    for rname, obj in runs.items():
        c.name(rname, f"students.runs.{rname}")
        if isinstance(obj, Mapping) and "transfer" in obj:   # read the transfer set too (bool)
            if not isinstance(obj["transfer"], bool):
                c.fail(f"students.runs.{rname}.transfer", f"must be true or false, got {obj['transfer']!r}")
            obj = {k: v for k, v in obj.items() if k != "transfer"}
        check_objective(obj, f"students.runs.{rname}", c.source, teacher=["best"])
    if s.get("reference") is not None and s["reference"] not in runs:
        c.fail("students.reference", f"unknown run {s['reference']!r} (known: {', '.join(runs)})")
    if "test" in s:
        from pile_jax.significance import TESTS

        c.choice(s, "test", "students", TESTS)
    transfer_settings(dict(cfg, _source=c.source))   # the transfer section's keys and values


def schema() -> C.JobSchema:
    """The config schema of ``pile-jax run``."""
    from pile_jax import prepare as P

    return C.JobSchema("run", CONFIG_KEYS, (P.check_inputs, P.check_model, P.check_teachers, P.check_ensembles,
                                            check_students))


def _student_kind(cfg: Mapping[str, Any]) -> str:
    """``students.kind`` (default cross_encoder), checked against the known student kinds."""
    from pile_jax.models.students import STUDENT_KINDS

    kind = C.require(cfg, "students").get("kind", "cross_encoder")
    if kind not in STUDENT_KINDS:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: students.kind: unknown student {kind!r} "
                            f"(known: {', '.join(STUDENT_KINDS)})")
    return kind


def run(cfg: Mapping[str, Any], *, out: str, data: str | None = None, log: Callable[[str], None] | None = None,
        export: bool = True) -> dict:
    """Runs the whole job; returns the ``results.json`` content.

    Progress goes to the ``pile_jax`` logger (or to ``log``, a ``str -> None`` callable) and to
    ``<out>/log.txt``; ``export``: each student system's best seed (by the dev metric) is exported
    to ``<out>/models/<system>/`` (:func:`pile_jax.models.export.export_student`)."""
    with log_to_file(pio.as_path(out) / "log.txt"):
        return _run(cfg, out=out, data=data, log=log or _log.info, export=export)


def _run(cfg, *, out, data, log, export):
    """The job, top to bottom: prepare -> baselines and teachers -> ensembles and the teacher
    report -> students (seeds x objectives) -> export of each student's best seed -> report."""
    clock = _Clock(log)
    out_path = pio.as_path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    job = clock.timed("prepare", _prepare, cfg, out, data, log)
    book = _RunBook(out_path / "runs", job.splits[job.eval_split], job.coll.qrels, log)
    book.add("bm25", None, job.prep.ranked)
    for name in job.teacher_names:
        book.add(f"teacher_{name}", None, job.prep.teachers[name])
    report = clock.timed("ensembles", _ensembles, cfg, job, book, log)
    students = clock.timed("students", _students, cfg, job, book, out_path, log, export)
    exported = _export_best(students, out_path, log) if export else {}
    pio.barrier("pipeline_export")
    return _write_results(cfg, job, book, report, students, exported, clock, out_path, log)


class _Clock:
    """Wall time of each stage (``timings_s`` of results.json), logged as it ends."""

    def __init__(self, log):
        self.log, self.start, self.timings = log, time.perf_counter(), {}

    def timed(self, name: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.log(f"{name}: {self.timings[name]}s")
        return result

    def total(self) -> dict:
        self.timings["total"] = round(time.perf_counter() - self.start, 1)
        return self.timings


class _RunBook:
    """The evaluated systems: each run's TREC file (process 0) and its metrics on the eval queries."""

    def __init__(self, runs_dir, eval_qids, qrels, log):
        self.runs_dir, self.eval_qids, self.qrels, self.log = runs_dir, eval_qids, qrels, log
        self.runs: dict[str, dict] = {}          # file name -> metrics
        self.per_query: dict[str, dict] = {}     # file name -> {qid: SIGNIFICANCE_METRIC}
        self.systems: dict[str, list[str]] = {}  # system -> its files (one per seed)

    def add(self, system: str, seed: int | None, run_: Mapping[str, Mapping[str, float]]) -> dict:
        fname = f"{system}__seed{seed if seed is not None else 0}.trec"
        if pio.is_primary():
            write_run(self.runs_dir / fname, _subset(run_, self.eval_qids), tag=system)
        pq = run_metrics(_subset(run_, self.eval_qids), self.qrels, qids=self.eval_qids)
        self.runs[fname] = mean_metrics(pq)
        self.per_query[fname] = {q: float(pq[q][SIGNIFICANCE_METRIC]) for q in self.eval_qids}
        self.systems.setdefault(system, []).append(fname)
        self.log(f"{system:>28s} seed {seed}: " + " ".join(f"{k}={self.runs[fname][k]:.4f}" for k in METRIC_NAMES))
        return self.runs[fname]

    def per_query_mean(self, system: str) -> dict[str, float]:
        """``{qid: SIGNIFICANCE_METRIC}`` of ``system``, averaged over its seeds."""
        files = self.systems[system]
        return {q: float(np.mean([self.per_query[f][q] for f in files])) for q in self.eval_qids}

    def summary(self) -> dict:
        """Per system and metric: mean, std (ddof 1) and number of seeds."""
        out = {}
        for system, files in self.systems.items():
            out[system] = {}
            for m in METRIC_NAMES:
                vals = np.array([self.runs[f][m] for f in files], np.float64)
                out[system][m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                  "n": int(len(vals))}
        return out


def _prepare(cfg, out, data, log) -> SimpleNamespace:
    """Collection, first stage, teachers, ranking groups (standardised), in one place
    (:func:`pile_jax.prepare.prepare`), and their TFDS sources (train, train + transfer set)."""
    C.require(cfg, "teachers")
    C.require(cfg, "first_stage.depth")
    _student_kind(cfg)  # config errors before any work
    eval_split = C.get(cfg, "eval.split", "test")
    standardize = standardize_setting(cfg, "ensembles.standardize", "global")
    prep = prepare(cfg, out=out, data=data, log=log, standardize=standardize)
    out_path = pio.as_path(out)
    if eval_split not in prep.splits:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: eval.split: unknown split {eval_split!r} "
                            f"(known: {', '.join(prep.splits)})")
    groups, coll, names = prep.groups, prep.coll, prep.teacher_names
    name = f"{coll.name}_n{groups['train']['labels'].shape[1]}_t{len(names)}"
    train_source, builder = ranking_groups_source(groups["train"], out_path / "tfds", name)
    # distillation runs also read the transfer set (unlabelled pseudo-query groups, label_mask all
    # False: they take part in distillation terms only, and PILE there is the mean of the teachers)
    transfer_source = None
    if prep.transfer is not None:
        transfer_source, _ = ranking_groups_source(concat_groups(groups["train"], prep.transfer), out_path / "tfds",
                                                   f"{name}_transfer")
    log("ranking groups: " + ", ".join(f"{s} {len(g['query_id'])}" for s, g in groups.items())
        + (f", transfer {len(prep.transfer['query_id'])} (unlabelled)" if prep.transfer is not None else "")
        + f"; train skipped (no label pair) {prep.group_stats['train'].get('skipped_no_label_pair', 0)}; "
        f"TFDS ArrayRecord at {builder.data_dir}")
    return SimpleNamespace(prep=prep, cfg=cfg, data=data, coll=coll, splits=prep.splits, candidates=prep.candidates, groups=groups,
                           teacher_names=names, eval_split=eval_split, standardize=standardize,
                           unjudged=C.get(cfg, "data.unjudged", "zero"), train_source=train_source,
                           transfer_source=transfer_source)


def _ensembles(cfg, job, book: _RunBook, log) -> dict:
    """Each label-free ensemble as a system on the eval split, and the teacher report (PNR / NDCG
    of each teacher and ensemble against the labels) on train and the eval split, with unjudged
    documents as 0 and ignored."""
    from pile_jax import ensemble as E

    methods = C.get(cfg, "ensembles.methods", {"mean": {"name": "mean"}, "pile": {"name": "pile"}})
    ev = job.groups[job.eval_split]
    ts_eval = np.transpose(ev["teacher_scores"], (1, 0, 2))
    for mname, fn_name, opts in ensemble_specs(methods):
        # Label-supervised ensembles (pile, best_teacher_per_list) are training targets: on the
        # eval split they would read the test labels, so they are not evaluated as systems there
        # (their quality against labels is in the teacher report, marked as such).
        if fn_name in E.LABEL_ENSEMBLES:
            continue
        absent = {} if ev.get("teacher_mask") is None else {"teacher_where": np.transpose(ev["teacher_mask"], (1, 0, 2))}
        z = np.asarray(E.ensemble(fn_name, ts_eval, None, where=ev["mask"], **absent, **opts))
        book.add(f"ensemble_{mname}", None, groups_to_run(ev, z))
    report = {}
    for uj in ("zero", "ignore"):
        for s in ("train", job.eval_split):
            g = job.groups[s] if uj == job.unjudged else _regroup(cfg, job, s, uj)
            ts = np.transpose(g["teacher_scores"], (1, 0, 2))
            tw = None if g.get("teacher_mask") is None else np.transpose(g["teacher_mask"], (1, 0, 2))
            report[f"{s} (unjudged={uj})"] = E.teacher_report(
                ts, g["labels"], where=g["mask"] & g["label_mask"], teacher_names=job.teacher_names,
                ensembles=ensemble_specs(methods), teacher_where=tw)
    for key, rep in report.items():
        note = (" [diagnostic: label-supervised ensembles here read this split's labels]"
                if key.startswith(job.eval_split) else "")
        log(f"teacher report, {key}{note}:\n" + E.format_teacher_report(rep))
    return report


def _regroup(cfg, job, split: str, unjudged: str) -> dict:
    """The ranking groups of ``split`` built again with another ``unjudged`` setting (standardised
    with the train statistics, as the job's own)."""
    prep = job.prep
    size_args = train_group_args(cfg, prep.depth) if split == "train" else {"group_size": prep.depth}
    g = build_groups(job.coll, job.candidates, prep.teachers, qids=job.splits[split], unjudged=unjudged,
                     require_label_pair=(split == "train"), **size_args)[0]
    return standardise(g, prep.mu, prep.sd) if job.standardize == "global" else g


def _students(cfg, job, book: _RunBook, out_path, log, export) -> SimpleNamespace:
    """Every configured objective (``students.runs``) trained from the same initialisation over
    the seeds, each evaluated on the eval split; the dev selection metric picks each run's seed."""
    scfg = C.require(cfg, "students")
    st = _student_setup(cfg, scfg, job, book, log)
    for run_name, obj_cfg in (scfg.get("runs") or {}).items():
        obj, source = _run_objective(cfg, run_name, obj_cfg, job, st.best_teacher)
        for seed in st.seeds:
            _train_seed(scfg, st, job, book, out_path, log, export, run_name, obj, source, seed)
    return st


def _student_setup(cfg, scfg, job, book: _RunBook, log) -> SimpleNamespace:
    """The student factory of the job (:func:`pile_jax.rankers.student_from_config` with the
    ``model:`` section), the best single teacher on dev, and the untrained students' scores (the
    common starting point: a system on the eval split and step 0 of the dev curves)."""
    from pile_jax import rankers
    from pile_jax.train.loop import score_candidates

    coll, splits = job.coll, job.splits
    dev_teacher = {name: mean_metrics(run_metrics(_subset(job.prep.teachers[name], splits["dev"]), coll.qrels,
                                                  qids=splits["dev"])) for name in job.teacher_names}
    best_teacher = max(job.teacher_names, key=lambda n: dev_teacher[n]["ndcg_cut_10"])
    log(f"best single teacher on dev (ndcg_cut_10): {best_teacher} ({dev_teacher[best_teacher]['ndcg_cut_10']:.4f})")
    # students.kind: cross_encoder (default) or any student of pile_jax.models.students, with
    # students.options (e.g. bert_dot {pooling: mean}); two-tower kinds read model.max_doc_length.
    spec = {"kind": _student_kind(cfg), "num_layers": int(scfg.get("num_layers", 2)),
            "options": dict(scfg.get("options") or {})}
    defaults = rankers.student_defaults(cfg.get("model"), max_length=PIPELINE_MAX_LENGTH,
                                        max_query_length=PIPELINE_MAX_QUERY_LENGTH)
    st = SimpleNamespace(
        make=lambda seed: rankers.student_from_config(spec, seed=seed, defaults=defaults),
        seeds=[int(s) for s in scfg.get("seeds", [0])], best_teacher=best_teacher,
        dev_cands={q: job.candidates[q] for q in splits["dev"]}, bs=int(cfg.get("score_batch_size", 64)),
        sel=str(dict(scfg.get("train") or {}).get("select_metric", DEV_METRIC)),   # dev selection metric
        select_on_dev=bool(scfg.get("select_on_dev", True)), init_dev=None, curves={}, dev_curves={}, best={})
    if scfg.get("report_init", True):
        # the students' common starting point, untrained (seed of the first run: new heads are random)
        init = st.make(st.seeds[0])
        book.add("student_init", None, score_candidates(init, init.params, _eval_candidates(job), coll.queries,
                                                        coll.docs, batch_size=st.bs))
        if st.select_on_dev:   # step 0 of the dev curves in results.png
            st.init_dev = _dev_metrics(st, job, init, init.params)[st.sel]
    return st


def _eval_candidates(job) -> dict:
    return {q: job.candidates[q] for q in job.splits[job.eval_split]}


def _dev_metrics(st, job, ranker, params) -> dict:
    from pile_jax.train.loop import score_candidates

    run_ = score_candidates(ranker, params, st.dev_cands, job.coll.queries, job.coll.docs, batch_size=st.bs)
    return mean_metrics(run_metrics(run_, job.coll.qrels, qids=job.splits["dev"]))


def _run_objective(cfg, run_name: str, obj_cfg: Mapping, job, best_teacher: str) -> tuple[dict, Any]:
    """``(objective, training source)`` of one ``students.runs`` entry: ``transfer`` (default:
    true for runs with a distillation term, when a transfer set exists) picks the source with the
    transfer set; ``teacher: best`` becomes the best single teacher on dev."""
    obj = dict(obj_cfg)
    use_transfer = bool(obj.pop("transfer", bool(obj.get("distill_losses"))))
    where = f"{cfg.get('_source', 'config')}: students.runs.{run_name}.transfer"
    if use_transfer and job.transfer_source is None and "transfer" in obj_cfg:
        raise C.ConfigError(f"{where}: no transfer set (set transfer.queries)")
    if use_transfer and not obj.get("distill_losses"):
        raise C.ConfigError(f"{where}: the transfer set is unlabelled, so it needs a distillation term "
                            "(distill_losses)")
    source = job.transfer_source if (use_transfer and job.transfer_source is not None) else job.train_source
    if obj.get("teacher") == "best":
        obj.pop("teacher")
        obj["target"] = "teacher"
        obj["teacher_index"] = job.teacher_names.index(best_teacher)
    return obj, source


def _train_seed(scfg, st, job, book: _RunBook, out_path, log, export, run_name, obj, source, seed) -> None:
    """One student run and seed: train (dev selection), curves, the eval-split system, and (with
    ``export``) its ``model.json`` and the best-seed bookkeeping."""
    from pile_jax.train.loop import score_candidates, train

    t1 = time.perf_counter()
    coll = job.coll
    ranker = st.make(seed)
    work = out_path / "students" / f"{run_name}__seed{seed}"
    tcfg = dict(scfg.get("train", {}))
    tcfg["seed"] = seed
    dev_eval = functools.partial(_dev_metrics, st, job, ranker)
    resume = _student_folder(job.cfg, job, work, ranker, run_name, seed, source, log)
    result = train(ranker, source=source, objective=obj, queries=coll.queries, docs=coll.docs, config=tcfg,
                   workdir=str(work), resume=resume, evaluate=dev_eval if st.select_on_dev else None, log=log)
    st.curves.setdefault(run_name, []).append([(h["step"], h["loss"]) for h in result.history if "loss" in h])
    dev_points = {h["step"]: h["eval"][st.sel] for h in result.history
                  if isinstance(h.get("eval"), Mapping) and st.sel in h["eval"]}
    if dev_points and st.init_dev is not None:
        dev_points.setdefault(0, st.init_dev)
    st.dev_curves.setdefault(run_name, []).append(sorted(dev_points.items()))
    run_ = score_candidates(ranker, result.params, _eval_candidates(job), coll.queries, coll.docs, batch_size=st.bs,
                            progress=f"{job.eval_split} {run_name}")
    metrics = book.add(f"student_{run_name}", seed, run_)
    log(f"student {run_name} seed {seed}: {time.perf_counter() - t1:.1f}s (best dev step {result.best_step})")
    if not export:
        return
    dev = result.best_metric
    if dev is None:  # trained without dev selection: score dev once to pick the seed
        dev = dev_eval(result.params)[st.sel]
    card = {"name": f"student_{run_name} (seed {seed})", "teachers": job.teacher_names, "objective": obj,
            "data": f"{coll.name} train queries ({len(job.groups['train']['query_id'])} ranking groups)",
            "metrics": metrics, "metrics_split": job.eval_split, "dev_" + st.sel: float(dev)}
    if pio.is_primary():  # `pile-jax export <work folder>` re-exports any seed
        from pile_jax.rankers import student_record

        pio.write_json(work / "model.json", {"student": student_record(ranker), "seed": seed, "card": card,
                                             "run_spec": job.specs[(run_name, seed)]})
    if st.best.get(run_name) is None or float(dev) > st.best[run_name][0]:
        st.best[run_name] = (float(dev), seed, ranker, result.params, card)


def _student_folder(cfg, job, work, ranker, run_name, seed, source, log) -> bool:
    """Makes a student's work folder belong to this run (:mod:`pile_jax.workfolders`): an
    unchanged run spec resumes it (returns True), a changed one starts it clean; the spec goes to
    ``model.json`` before training, so the checkpoints always belong to it."""
    from pile_jax.rankers import student_record

    transfer = job.prep.transfer if source is job.transfer_source else None
    spec = student_run_spec(cfg, run_name, seed, data=job.data, digest=groups_digest(job.groups["train"], transfer))
    job.specs = getattr(job, "specs", {})
    job.specs[(run_name, seed)] = spec
    resume = prepare_student_folder(work, spec, log=log)   # same spec: resume; changed: clean
    if pio.is_primary():
        pio.write_json(work / "model.json", {"student": student_record(ranker), "seed": seed, "run_spec": spec})
    return resume


def _export_best(students, out_path, log) -> dict:
    """Each student system's best seed (dev metric) -> ``<out>/models/<system>/`` (process 0)."""
    exported = {}
    if not pio.is_primary():
        return exported
    from pile_jax.rankers import export_ranker

    for run_name, (dev, seed, ranker, params, card) in students.best.items():
        path = out_path / "models" / f"student_{run_name}"
        export_ranker(ranker, params, str(path), card=card)
        exported[f"student_{run_name}"] = {"path": str(path), "seed": seed, "dev_" + students.sel: dev}
        log(f"student_{run_name}: exported seed {seed} (dev {students.sel} {dev:.4f}) -> {path}")
    return exported


def _significance(scfg: Mapping[str, Any], book: _RunBook, log) -> dict:
    """``students.reference`` (a run name): every other student system (``student_init``
    included) against ``student_<reference>`` by a paired test (``students.test``, default
    ``paired_t``) over the eval queries on the per-query NDCG@10 averaged over seeds, with Holm's
    correction across those systems (:func:`pile_jax.significance.against_reference`). Returns
    ``{"significance": {system: {reference, test, p, p_holm, mean_diff, ...}}, "per_query":
    {system: {qid: NDCG@10}}}`` for results.json, or ``{}`` without a reference."""
    from pile_jax import significance as S

    if scfg.get("reference") is None:
        return {}
    ref = f"student_{scfg['reference']}"
    test = str(scfg.get("test", "paired_t"))
    pairs = {s: ref for s in book.systems if s.startswith("student_")}
    per_query = {s: book.per_query_mean(s) for s in book.systems}
    sig = S.against_reference(per_query, pairs, test)
    for name, r in sig.items():
        if r["p"] is not None:
            log(f"{name} vs {ref}: NDCG@10 diff {r['mean_diff']:+.4f}, {test} p={r['p']:.4g}, "
                f"Holm p={r['p_holm']:.4g}")
    return {"significance": sig, "significance_setup": {
                "reference": ref, "test": test, "metric": SIGNIFICANCE_METRIC, "correction": "holm",
                "unit": "evaluation queries (per-query value: mean over seeds)",
                "family": sorted(n for n, r in sig.items() if r["p"] is not None)},
            "per_query": per_query}


def _write_results(cfg, job, book: _RunBook, report, students, exported, clock: _Clock, out_path, log) -> dict:
    """``results.json``, ``results.md`` and ``results.png`` (process 0); returns the results."""
    from pile_jax.report import jsonable, write_report

    timings = clock.total()
    results = {
        "runs": book.runs,
        "systems": book.summary(),
        "collection": job.coll.name,
        "eval_split": job.eval_split,
        "eval_queries": len(job.splits[job.eval_split]),
        "teachers": job.teacher_names,
        "best_teacher": students.best_teacher,
        "seeds": students.seeds,
        "timings_s": timings,
        "exported_models": exported,
        **_significance(C.require(cfg, "students"), book, log),
        "teacher_report": {k: jsonable(v) for k, v in report.items()},
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
    }
    if pio.is_primary():
        pio.write_json(out_path / "results.json", results)
        write_report(results, students.curves, str(out_path), dev_curves=students.dev_curves, dev_metric=students.sel)
    pio.barrier("pipeline_results")
    log(f"done in {timings['total']}s: {out_path / 'results.md'}")
    return results
