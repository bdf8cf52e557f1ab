"""``pile-jax train CONFIG``: one student from labels + teacher scores, config-driven.

Config sections (see ``configs/train_*.yaml``): ``data`` (collection, qrels_file, unjudged),
``candidates`` (``bm25_depth`` or ``run`` + ``depth``), ``teachers`` (list of
``{name, kind: bm25 | biencoder_cosine | checkpoint | file, ...}``), ``standardize``,
``student`` (base, num_layers, max_length, max_query_length, dtype, remat), ``objective``,
``train`` (:class:`~pile_jax.train.loop.TrainConfig`), ``distributed``, ``eval``.

The work folder gets: teacher score files, the TFDS ArrayRecord ranking groups, orbax
checkpoints (``--resume`` continues exactly), TensorBoard scalars, ``best_params.npz``,
``model.json``, the test run file and metrics, and ``export/`` (a Hugging Face folder).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from pile_jax import config as C


def _student_ranker(scfg: Mapping[str, Any], seed: int):
    from pile_jax import rankers

    return rankers.cross_encoder(scfg.get("base", "all-MiniLM-L6-v2"), num_layers=scfg.get("num_layers"),
                                 max_length=int(scfg.get("max_length", 256)),
                                 max_query_length=int(scfg.get("max_query_length", 64)),
                                 dtype=scfg.get("dtype", "float32"), seed=seed, remat=bool(scfg.get("remat", False)),
                                 new_head=True)


def train_job(cfg: Mapping[str, Any], *, out: str, resume: bool = False) -> dict:
    """Runs the job; returns the test metrics."""
    from pile_jax.train.step import maybe_initialize_distributed

    dist = cfg.get("distributed") or {}
    if dist.get("enabled"):
        maybe_initialize_distributed(dist.get("coordinator_address"), dist.get("num_processes"),
                                     dist.get("process_id"), auto=dist.get("coordinator_address") is None)
    import jax

    from pile_jax.data import build_groups, build_ranking_groups_dataset, load_collection, load_ranking_groups, write_run
    from pile_jax.jobs import _candidates, score_teacher
    from pile_jax.pipeline import Log, standardise, teacher_stats
    from pile_jax.train.evaluate import mean_metrics, run_metrics
    from pile_jax.train.loop import score_candidates, train

    os.makedirs(out, exist_ok=True)
    log = Log(os.path.join(out, "log.txt") if jax.process_index() == 0 else None, quiet=jax.process_index() != 0)
    coll = load_collection(C.require(cfg, "data.collection"), qrels_file=C.get(cfg, "data.qrels_file", "qrels.tsv"))
    splits = C.limited_splits(cfg, coll)
    qids = [q for s in splits.values() for q in s]
    cand_cfg = cfg.get("candidates") or {"bm25_depth": 20}
    depth = int(cand_cfg.get("bm25_depth") or cand_cfg.get("depth", 100))
    candidates, first_stage = _candidates(coll, run_path=cand_cfg.get("run"), depth=depth, qids=qids)
    scfg = C.require(cfg, "student")

    teachers = {}
    tdir = os.path.join(out, "teachers")
    os.makedirs(tdir, exist_ok=True)
    for spec in cfg.get("teachers") or []:
        teachers[spec["name"]] = score_teacher(spec, coll, candidates, first_stage,
                                               max_length=int(scfg.get("max_length", 256)),
                                               out_path=None if spec.get("kind") == "file" else os.path.join(tdir, spec["name"] + ".tsv"))
    names = list(teachers)
    groups = {}
    for s in ("train", "dev", "test"):
        groups[s], stats = build_groups(coll, candidates, teachers, group_size=depth, qids=splits[s],
                                        unjudged=C.get(cfg, "data.unjudged", "zero"), require_label_pair=(s == "train"))
        if s == "train":
            log(f"train groups: {len(groups[s]['query_id'])} (skipped without a label pair: "
                f"{stats.get('skipped_no_label_pair', 0)}), teachers {names}")
    if names and cfg.get("standardize", "global") == "global":
        mu, sd = teacher_stats(groups["train"])
        groups = {s: standardise(g, mu, sd) for s, g in groups.items()}
    data_dir = os.path.join(out, "tfds")
    name = f"{coll.name}_d{depth}_t{len(names)}"
    if jax.process_index() == 0:
        builder = build_ranking_groups_dataset({"train": groups["train"]}, data_dir, name, overwrite=not resume)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("tfds_ready")
        builder = load_ranking_groups(os.path.join(data_dir, "ranking_groups", name, "1.0.0"))
    source = builder.as_data_source()["train"]

    tcfg = dict(cfg.get("train") or {})
    seed = int(tcfg.get("seed", 0))
    ranker = _student_ranker(scfg, seed)
    obj = dict(C.require(cfg, "objective"))
    if isinstance(obj.get("teacher"), str):
        obj["target"], obj["teacher_index"] = "teacher", names.index(obj.pop("teacher"))
    dev = {q: candidates[q] for q in splits["dev"]}

    def dev_eval(params):
        run = score_candidates(ranker, params, dev, coll.queries, coll.docs)
        return mean_metrics(run_metrics(run, coll.qrels, qids=splits["dev"]))

    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"student": dict(scfg), "seed": seed, "train": tcfg}, f, indent=1)
    result = train(ranker, source=source, objective=obj, queries=coll.queries, docs=coll.docs, config=tcfg,
                   workdir=out, resume=resume, evaluate=dev_eval, log=log)
    split = C.get(cfg, "eval.split", "test")
    run = score_candidates(ranker, result.params, {q: candidates[q] for q in splits[split]}, coll.queries, coll.docs)
    metrics = mean_metrics(run_metrics(run, coll.qrels, qids=splits[split]))
    if jax.process_index() == 0:
        write_run(os.path.join(out, f"{split}.trec"), run, tag="pile_jax")
        with open(os.path.join(out, f"{split}_metrics.json"), "w") as f:
            json.dump({"metrics": metrics, "best_step": result.best_step, "best_dev": result.best_metric}, f, indent=1)
        export_params(ranker, result.params, os.path.join(out, "export"))
    log(f"{split}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


def export_params(ranker, params, path: str) -> str:
    """Writes a Hugging Face folder (config, safetensors, tokenizer) for a cross-encoder ranker."""
    from pile_jax.models import export_pretrained

    export_pretrained(params, ranker.meta["config"].replace(dtype="float32"), path,
                      tokenizer=ranker.meta["path"])
    return path


def export_workdir(workdir: str, out: str, *, which: str = "best") -> str:
    """Exports a ``pile-jax train`` work folder's best (or latest) params to ``out``."""
    from pile_jax.train.checkpoint import Checkpointer
    from pile_jax.train.loop import _load_params

    meta_path = os.path.join(workdir, "model.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: not a pile-jax train work folder (model.json missing)")
    with open(meta_path) as f:
        meta = json.load(f)
    ranker = _student_ranker(meta["student"], int(meta.get("seed", 0)))
    best = os.path.join(workdir, "best_params.npz")
    if which == "best" and os.path.exists(best):
        params = _load_params(best, ranker.params)
    else:
        from pile_jax.train.loop import TrainConfig
        from pile_jax.train.optim import make_optimizer
        from pile_jax.train.step import create_train_state

        tc = TrainConfig.from_config(meta.get("train"))
        tx = make_optimizer(learning_rate=tc.learning_rate, warmup_steps=0, total_steps=1, schedule=tc.schedule,
                            weight_decay=tc.weight_decay, clip_norm=tc.clip_norm)
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
        template = create_train_state(ranker.params, tx, np.zeros(2, np.uint32))
        restored = ckpt.restore_latest(template)
        if restored is None:
            raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
        params = restored[0].params
    return export_params(ranker, params, out)
