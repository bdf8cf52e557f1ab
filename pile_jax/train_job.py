"""``pile-jax train CONFIG``: one student from labels + teacher scores, config-driven.

Config sections (see ``configs/train_*.yaml``): ``data`` (collection, qrels_file, unjudged),
``candidates`` (``bm25_depth`` or ``run`` + ``depth``), ``teachers`` (list of
``{name, kind: bm25 | biencoder_cosine | checkpoint | file, ...}``), ``standardize``,
``student`` (kind: any student kind, default cross_encoder; base, num_layers, max_length,
max_query_length, max_doc_length, dtype, remat, options), ``objective``,
``train`` (:class:`~pile_jax.train.loop.TrainConfig`), ``distributed``, ``eval``.

The work folder gets: teacher score files, the TFDS ArrayRecord ranking groups, orbax
checkpoints (``--resume`` continues exactly), TensorBoard scalars, ``best_params.npz``,
``model.json``, the test run file and metrics, and ``export/`` (a Hugging Face folder).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio
from pile_jax.logs import log_to_file
from pile_jax.models.tokenize import DEFAULT_MAX_LENGTH, DEFAULT_MAX_QUERY_LENGTH

_log = logging.getLogger(__name__)


#: the job's length defaults for a ``student:`` section that sets none (pairs: 256 tokens, 64 for
#: the query; the two-tower kinds' documents default to ``max_length``)
STUDENT_DEFAULTS = {"max_length": DEFAULT_MAX_LENGTH, "max_query_length": DEFAULT_MAX_QUERY_LENGTH}


def _student_ranker(scfg: Mapping[str, Any], seed: int):
    """The student of a ``student:`` section (or of a work folder's ``model.json``): a
    cross-encoder (default), or ``kind:`` any student of :mod:`pile_jax.models.students` with
    ``options:``, built by the one student factory :func:`pile_jax.rankers.student_from_config`."""
    from pile_jax import rankers

    return rankers.student_from_config(scfg, seed=seed, defaults=STUDENT_DEFAULTS)


# ------------------------------------------------------------------------------ schema
#: the top-level sections of a ``pile-jax train`` config
CONFIG_KEYS = ("data", "first_stage", "candidates", "train_groups", "score_batch_size", "teachers", "teacher_train",
               "standardize", "student", "objective", "train", "distributed", "eval")
STUDENT_KEYS = ("kind", "base", "num_layers", "max_length", "max_query_length", "max_doc_length", "dtype", "remat",
                "options")
DISTRIBUTED_KEYS = ("enabled", "coordinator_address", "num_processes", "process_id")


def check_student(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: the ``student:`` section (any student kind with its ``options``, lengths within
    the checkpoint's positions); sets the teachers' model settings ``context["model"]``."""
    from pile_jax.models.tokenize import check_lengths
    from pile_jax.models.students import STUDENT_KINDS
    from pile_jax.rankers import check_layers, check_student_options

    student = c.section(cfg.get("student"), "student", STUDENT_KEYS, required=True)
    kind = student.get("kind", "cross_encoder")
    if kind not in STUDENT_KINDS:
        c.fail("student.kind", f"unknown student {kind!r}{C.did_you_mean(str(kind), STUDENT_KINDS)} "
                               f"(known: {', '.join(STUDENT_KINDS)})")
    c.choice(student, "dtype", "student", C.DTYPES)
    c.number(student, "num_layers", "student", integer=True, low=1)
    if "remat" in student and not isinstance(student["remat"], bool):
        c.fail("student.remat", f"must be true or false, got {student['remat']!r}")
    check_lengths(c, student, "student", default_length=DEFAULT_MAX_LENGTH)
    base = student.get("base", "all-MiniLM-L6-v2")
    check_layers(c, student, "num_layers", "student", base)
    check_student_options(c, kind, student.get("options"), "student.options", base=base,
                          num_layers=student.get("num_layers"))
    context["model"] = {"max_length": student.get("max_length", DEFAULT_MAX_LENGTH),
                        "max_query_length": DEFAULT_MAX_QUERY_LENGTH}


def check_training(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: ``objective`` (``teacher:`` one of the teachers), ``train``, ``standardize``,
    ``distributed``."""
    from pile_jax.train.loop import check_train_section
    from pile_jax.train.objective import check_objective

    check_objective(cfg.get("objective"), "objective", c.source, teacher=context["teacher_names"])
    check_train_section(cfg.get("train"), "train", c.source)
    c.choice(cfg, "standardize", "", C.STANDARDIZE)
    c.section(cfg.get("distributed"), "distributed", DISTRIBUTED_KEYS)


def schema() -> C.JobSchema:
    """The config schema of ``pile-jax train``."""
    from pile_jax import prepare as P

    return C.JobSchema("train", CONFIG_KEYS, (P.check_inputs, check_student, P.check_teachers, check_training))


#: the data settings: they decide the ranking groups, hence the loader position a checkpoint holds
DATA_KEYS = ("data", "candidates", "first_stage", "train_groups")
RESUME_KEYS = ("student", "objective", "teachers", "standardize", "learning_rate", "batch_size", "seed") + DATA_KEYS
#: what even --force-resume cannot change: the checkpoint's sampler position (data order, epoch,
#: batch boundaries) is only meaningful for the same groups, seed and batch size
FORCE_REFUSED = ("batch_size", "seed") + DATA_KEYS


def run_spec(cfg: Mapping[str, Any]) -> dict:
    """What a resumed run must share with the run it continues (stored in ``model.json``): the
    student, the objective, the teacher specs, the standardisation, learning rate, batch size,
    seed, and the data settings (``data``, ``candidates``, ``first_stage``, ``train_groups``)."""
    tcfg = dict(cfg.get("train") or {})
    return json.loads(json.dumps({
        "student": dict(cfg.get("student") or {}), "objective": dict(cfg.get("objective") or {}),
        "teachers": list(cfg.get("teachers") or []), "standardize": cfg.get("standardize", "global"),
        "learning_rate": tcfg.get("learning_rate"), "batch_size": tcfg.get("batch_size"),
        "seed": int(tcfg.get("seed", 0)), **{k: cfg.get(k) for k in DATA_KEYS}}, default=str))


def check_work_folder(out, spec: Mapping[str, Any], *, resume: bool, force: bool = False) -> None:
    """Refuses to mix runs in one work folder (config errors naming the folder and the keys):

    * without ``resume``, a folder that already holds checkpoints (a fresh run would keep the old
      ones and skip its own saves at the same step numbers);
    * with ``resume``, a ``model.json`` whose run spec (:func:`run_spec`) differs in any of
      ``RESUME_KEYS`` (keys an older ``model.json`` lacks are not compared), unless ``force``;
      with ``force`` still a changed batch size, seed or data setting (``FORCE_REFUSED``: the
      checkpoint's loader position belongs to those).

    ``resume`` on a folder without checkpoints logs a warning and trains from step 0 (a
    supervisor may relaunch with ``--resume`` before the first checkpoint was written)."""
    out = pio.as_path(out)
    ckpt = out / "checkpoints"
    has_ckpt = ckpt.exists() and any(True for _ in ckpt.iterdir())
    if not resume:
        if has_ckpt:
            raise C.ConfigError(f"{out}: holds the checkpoints of an earlier run; pass --resume to continue it, "
                                "or choose another --out")
        return
    if not has_ckpt:
        _log.warning("%s: --resume, but there is no checkpoint to resume from: training starts from step 0", ckpt)
        return
    meta = out / "model.json"
    if not meta.exists():
        return
    old = pio.read_json(meta).get("run_spec")
    if old is None:
        return
    changed = [k for k in RESUME_KEYS if k in old and old.get(k) != spec.get(k)]
    refused = [k for k in changed if k in FORCE_REFUSED]
    if force and refused:
        raise C.ConfigError(f"{out}: --force-resume cannot continue with a changed {', '.join(refused)} (the "
                            f"checkpoint's data order and batch boundaries belong to "
                            f"{ {k: old.get(k) for k in refused} }); use another --out")
    if changed and not force:
        raise C.ConfigError(f"{out}: --resume with a changed {', '.join(changed)} (the checkpoints were made with "
                            f"{ {k: old.get(k) for k in changed} }); use another --out"
                            + (", or --force-resume" if not refused else ""))


def init_distributed(cfg: Mapping[str, Any]) -> None:
    """``jax.distributed.initialize`` when ``distributed.enabled`` (idempotent; must run before any
    other JAX call, so the CLI calls it before :func:`pile_jax.train.loop.check_device_counts`)."""
    from pile_jax.train.step import maybe_initialize_distributed

    dist = cfg.get("distributed") or {}
    if dist.get("enabled"):
        maybe_initialize_distributed(dist.get("coordinator_address"), dist.get("num_processes"),
                                     dist.get("process_id"), auto=dist.get("coordinator_address") is None)


def train_job(cfg: Mapping[str, Any], *, out: str, resume: bool = False, force_resume: bool = False) -> dict:
    """Runs the job (progress on the ``pile_jax`` logger and in ``<out>/log.txt``, written by
    process 0); returns the test metrics.

    On several processes (``distributed.enabled``), every process prepares the same data, model
    teachers score a slice of the queries each (gathered), and process 0 alone writes the shared
    files (teacher files, the TFDS groups, ``model.json``, the test run and metrics, the export),
    each followed by a barrier. ``out`` may be a URL (``gs://...``) shared by all hosts."""
    init_distributed(cfg)
    from pile_jax.train.loop import check_device_counts

    check_device_counts(cfg, job="train")   # the real process and device counts, before any work
    primary = pio.is_primary()
    out_path = pio.as_path(out)
    check_work_folder(out_path, run_spec(cfg), resume=resume, force=force_resume)
    if primary:
        out_path.mkdir(parents=True, exist_ok=True)
    from pile_jax.train.loop import check_shared_folder

    check_shared_folder(out_path)   # several hosts: process 0's files must reach the others
    with log_to_file(out_path / "log.txt", enabled=primary):
        from pile_jax.prepare import large_collection

        if large_collection(cfg):
            return _train_job_table(cfg, out=out, resume=resume)
        return _train_job(cfg, out=out, resume=resume)


def _train_job(cfg: Mapping[str, Any], *, out: str, resume: bool) -> dict:
    from pile_jax.data import write_run
    from pile_jax.prepare import prepare, ranking_groups_source, standardize_setting
    from pile_jax.train.evaluate import mean_metrics, run_metrics
    from pile_jax.models import tokenize as T
    from pile_jax.train.loop import score_candidates, train

    primary = pio.is_primary()
    out_path = pio.as_path(out)
    spec = run_spec(cfg)
    log = _log.info
    scfg = C.require(cfg, "student")
    obj = dict(C.require(cfg, "objective"))
    standardize = standardize_setting(cfg, "standardize", "global")
    split = C.get(cfg, "eval.split", "test")
    prep = prepare(cfg, out=out, log=log, standardize=standardize,
                   teacher_model={"max_length": int(scfg.get("max_length", T.DEFAULT_MAX_LENGTH)),
                                  "max_query_length": T.DEFAULT_MAX_QUERY_LENGTH})
    coll, splits, candidates, groups, names = prep.coll, prep.splits, prep.candidates, prep.groups, prep.teacher_names
    if split not in splits:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: eval.split: unknown split {split!r} "
                            f"(known: {', '.join(splits)})")
    log(f"train groups: {len(groups['train']['query_id'])} (skipped without a label pair: "
        f"{prep.group_stats['train'].get('skipped_no_label_pair', 0)}), teachers {names}")
    source, _ = ranking_groups_source(groups["train"], out_path / "tfds", f"{coll.name}_d{prep.depth}_t{len(names)}",
                                      overwrite=not resume)

    tcfg = dict(cfg.get("train") or {})
    seed = int(tcfg.get("seed", 0))
    ranker = _student_ranker(scfg, seed)
    if isinstance(obj.get("teacher"), str):
        if obj["teacher"] not in names:
            raise C.ConfigError(f"{cfg.get('_source', 'config')}: objective.teacher: unknown teacher "
                                f"{obj['teacher']!r} (teachers: {names})")
        obj["target"], obj["teacher_index"] = "teacher", names.index(obj.pop("teacher"))
    dev = {q: candidates[q] for q in splits["dev"]}

    def dev_eval(params):
        run = score_candidates(ranker, params, dev, coll.queries, coll.docs)
        return mean_metrics(run_metrics(run, coll.qrels, qids=splits["dev"]))

    if primary:
        pio.write_json(out_path / "model.json", {"student": dict(scfg), "seed": seed, "train": tcfg, "run_spec": spec})
    pio.barrier("train_job_model_json")
    result = train(ranker, source=source, objective=obj, queries=coll.queries, docs=coll.docs, config=tcfg,
                   workdir=str(out_path), resume=resume, evaluate=dev_eval, log=log)
    run = score_candidates(ranker, result.params, {q: candidates[q] for q in splits[split]}, coll.queries, coll.docs)
    metrics = mean_metrics(run_metrics(run, coll.qrels, qids=splits[split]))
    if primary:
        write_run(out_path / f"{split}.trec", run, tag="pile_jax")
        pio.write_json(out_path / f"{split}_metrics.json",
                       {"metrics": metrics, "best_step": result.best_step, "best_dev": result.best_metric})
        export_params(ranker, result.params, str(out_path / "export"),
                      card=_card(cfg.get("_source"), scfg, obj, names, coll.name, metrics, split))
    pio.barrier("train_job_results")
    log(f"{split}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def _teacher_objective(cfg: Mapping[str, Any], names: list) -> dict:
    """The ``objective:`` section with a named ``teacher:`` turned into its index."""
    obj = dict(C.require(cfg, "objective"))
    if isinstance(obj.get("teacher"), str):
        if obj["teacher"] not in names:
            raise C.ConfigError(f"{cfg.get('_source', 'config')}: objective.teacher: unknown teacher "
                                f"{obj['teacher']!r} (teachers: {names})")
        obj["target"], obj["teacher_index"] = "teacher", names.index(obj.pop("teacher"))
    return obj


def _train_job_table(cfg: Mapping[str, Any], *, out: str, resume: bool) -> dict:
    """``candidates: {from: teachers, eval_run: FILE}`` (:mod:`pile_jax.prepare_table`): the
    collection's on-disk stores, the teacher table read and joined once, groups drawn on the fly
    from it, training (no dev evaluation during training: the final params are evaluated), then
    the eval split's queries re-rank ``eval_run`` (:func:`rerank_eval_run`) into
    ``<out>/<split>.trec`` and ``<out>/<split>_metrics.json`` (with each phase's seconds)."""
    import time

    from pile_jax.data import load_collection
    from pile_jax.prepare import standardize_setting
    from pile_jax.prepare_table import eval_candidates, table_group_source, teacher_table_for
    from pile_jax.train.loop import train

    primary = pio.is_primary()
    out_path = pio.as_path(out)
    log, source_name = _log.info, cfg.get("_source", "config")
    scfg, tcfg = C.require(cfg, "student"), dict(cfg.get("train") or {})
    split = C.get(cfg, "eval.split", "dev.small")
    seconds, t0 = {}, time.perf_counter()
    coll = load_collection(C.require(cfg, "data.collection"))
    seconds["collection"] = round(time.perf_counter() - t0, 1)
    for key, name in (("eval.split", split), ("data.collection", "train")):
        if name not in coll.splits:
            raise C.ConfigError(f"{source_name}: {key}: the collection {coll.path} has no split {name!r} "
                                f"(its splits: {', '.join(coll.splits)})")
    train_qids = list(coll.split_qids("train"))
    log(f"collection {coll.name} ({getattr(coll, 'layout', 'pile_jax')} layout): {len(coll.docs)} docs, "
        f"{len(coll.queries)} queries; " + ", ".join(f"{s} {len(q)}" for s, q in coll.splits.items()))
    t0 = time.perf_counter()
    table, table_dir = teacher_table_for(cfg, coll, out=out, log=log)
    source, _, _ = table_group_source(cfg, coll, table, train_qids, folder=table_dir, log=log,
                                      standardize=standardize_setting(cfg, "standardize", "global"))
    seconds["teachers"] = round(time.perf_counter() - t0, 1)
    names = list(table.names)
    obj = _teacher_objective(cfg, names)
    seed = int(tcfg.get("seed", 0))
    ranker = _student_ranker(scfg, seed)
    if primary:
        pio.write_json(out_path / "model.json", {"student": dict(scfg), "seed": seed, "train": tcfg,
                                                 "run_spec": run_spec(cfg)})
    pio.barrier("train_job_model_json")
    t0 = time.perf_counter()
    result = train(ranker, source=source, objective=obj, queries=coll.queries, docs=coll.docs, config=tcfg,
                   workdir=str(out_path), resume=resume, evaluate=None, log=log)
    seconds["train"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    cands = eval_candidates(cfg, coll, split)
    metrics, pairs = rerank_eval_run(ranker, result.params, cands, coll, out_path / f"{split}.trec", log=log)
    seconds["eval"] = round(time.perf_counter() - t0, 1)
    if primary:
        pio.write_json(out_path / f"{split}_metrics.json",
                       {"metrics": metrics, "queries": len(cands), "pairs": pairs, "seconds": seconds,
                        "best_step": result.best_step, "best_dev": result.best_metric})
        export_params(ranker, result.params, str(out_path / "export"),
                      card=_card(source_name, scfg, obj, names, coll.name, metrics, split))
    pio.barrier("train_job_results")
    log(f"{split} ({len(cands)} queries, {pairs} pairs re-ranked): " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def rerank_eval_run(ranker, params, candidates: Mapping[str, Any], coll, path, *, chunk: int = 256,
                    log=None) -> tuple[dict, int]:
    """``(mean metrics, pairs)``: re-ranks each query's candidates (``{qid: doc ids}``) with the
    student, ``chunk`` queries at a time (memory: one chunk's pairs; token ids read from the
    collection's token stores, :func:`pile_jax.scoring.score_store_pairs`), writes the run to ``path``
    (TREC, :func:`pile_jax.data.trec.write_run`'s format and order, process 0) and averages the
    per-query trec_eval metrics (:func:`pile_jax.train.evaluate.run_metrics`) over the queries."""
    from pile_jax.data.trec import rank_order
    from pile_jax.train.evaluate import mean_metrics, run_metrics
    from pile_jax.scoring import score_store_pairs
    from pile_jax.train.loop import score_candidates

    qids = list(candidates)
    per_query, lines, pairs = {}, [], 0
    for i in range(0, len(qids), chunk):
        part = {q: [str(d) for d in candidates[q]] for q in qids[i:i + chunk]}
        flat_q = [q for q, c in part.items() for _ in c]
        flat_d = [d for c in part.values() for d in c]
        scores = score_store_pairs(ranker, params, flat_q, flat_d, coll.queries, coll.docs,
                                   progress=f"eval {i}/{len(qids)} queries")
        if scores is None:   # a frozen document index: each query's list as one group
            run = score_candidates(ranker, params, {q: c for q, c in part.items() if c}, coll.queries, coll.docs,
                                   progress=f"eval {i}/{len(qids)} queries")
        else:
            run = {q: {} for q in part}
            for q, d, s in zip(flat_q, flat_d, scores.tolist()):
                run[q][d] = s
        run = {q: run.get(q, {}) for q in part}
        pairs += sum(map(len, part.values()))
        per_query.update(run_metrics(run, coll.qrels, qids=list(part)))
        lines.extend(f"{q} Q0 {d} {r} {s!r} pile_jax\n" for q in part for r, (d, s) in enumerate(rank_order(run[q]), 1))
        if log and i + chunk < len(qids):
            log(f"eval: {i + chunk}/{len(qids)} queries re-ranked")
    if pio.is_primary():
        pio.write_text(path, "".join(lines))
    return mean_metrics(per_query), pairs


def _card(source, scfg, objective, teachers, data, metrics=None, split="test") -> dict:
    """What the exported model card says about a training run."""
    return {"name": f"{scfg.get('kind', 'cross_encoder')} student" + (f" ({source})" if source else ""),
            "teachers": list(teachers or []), "objective": dict(objective or {}), "data": data,
            "metrics": dict(metrics or {}), "metrics_split": split}


def export_params(ranker, params, path: str, *, card: Mapping[str, Any] | None = None) -> str:
    """Exports a trained ranker of any student kind to ``path`` (:func:`pile_jax.rankers.export_ranker`:
    a Hugging Face folder for a cross-encoder, a sentence-transformers folder for BERT-dot,
    pile_jax's format for ColBERT / PreTT / TK; with a model card)."""
    from pile_jax.rankers import export_ranker

    return export_ranker(ranker, params, path, card=card)


def export_workdir(workdir: str, out: str, *, which: str = "best") -> str:
    """Exports a ``pile-jax train`` work folder's best (or latest) params to ``out``."""
    from pile_jax.params import load_params
    from pile_jax.train.checkpoint import Checkpointer

    work = pio.as_path(workdir)
    meta_path = work / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a pile-jax train work folder (model.json missing)")
    meta = pio.read_json(meta_path)
    ranker = _student_ranker(meta["student"], int(meta.get("seed", 0)))
    best = work / "best_params.npz"
    if which == "best" and best.exists():
        params = load_params(best, ranker.params)
    else:
        from pile_jax.train.loop import TrainConfig
        from pile_jax.train.optim import make_optimizer
        from pile_jax.train.step import create_train_state

        tc = TrainConfig.from_config(meta.get("train"))
        tx = make_optimizer(learning_rate=tc.learning_rate, warmup_steps=0, total_steps=1, schedule=tc.schedule,
                            weight_decay=tc.weight_decay, clip_norm=tc.clip_norm)
        ckpt = Checkpointer(str(work / "checkpoints"))
        template = create_train_state(ranker.params, tx, np.zeros(2, np.uint32))
        restored = ckpt.restore_latest(template)
        if restored is None:
            raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
        params = restored[0].params
    card = meta.get("card")
    if card is None:
        teachers = [t.get("name") for t in (meta.get("run_spec") or {}).get("teachers") or [] if isinstance(t, Mapping)]
        card = _card(None, meta["student"], (meta.get("run_spec") or {}).get("objective"), teachers, None)
        for split in ("test", "dev"):
            if (work / f"{split}_metrics.json").exists():
                card.update(metrics=pio.read_json(work / f"{split}_metrics.json").get("metrics"), metrics_split=split)
                break
    return export_params(ranker, params, out, card=card)
