"""One preparation path for the jobs: collection → candidates → teachers → groups → standardisation.

``pile-jax run`` (:mod:`pile_jax.pipeline`), ``pile-jax study`` (:mod:`pile_jax.study`) and
``pile-jax train`` (:mod:`pile_jax.train_job`) all call :func:`prepare`; ``pile-jax score`` and
``pile-jax ensemble`` use its parts (:func:`first_stage`, :func:`obtain_teacher`,
:func:`teacher_stats`, :func:`standardise`).

1. The collection (shipped name, folder or URL) and its train/dev/test queries
   (``data.max_queries_per_split``).
2. Candidates: BM25 top ``depth`` (``first_stage.depth``, or ``candidates.bm25_depth``), or the top
   ``candidates.depth`` of a TREC run (``candidates.run``).
3. Teacher scores, one ``<out>/teachers/<name>.tsv`` per ``teachers`` spec (kinds ``bm25``,
   ``biencoder_cosine``, ``checkpoint``, ``cross_encoder`` = fine-tuned and cross-fitted here,
   ``file``), each with a sidecar ``<name>.spec.json`` holding the spec that made it. A file is
   reused only when its sidecar equals the current spec and it covers every candidate; otherwise
   it is recomputed. Model teachers are scored in slices of queries across processes and gathered.
4. Ranking groups per split (train: ``train_groups`` size/policy; dev/test: every candidate).
5. Per-teacher standardisation statistics over the valid train items, in float64.

Every file is written atomically by process 0 (:mod:`pile_jax.io`), followed by a barrier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio

_log = logging.getLogger(__name__)

__all__ = [
    "Prepared", "prepare", "candidate_settings", "first_stage", "train_group_args", "teacher_candidates",
    "teacher_stats", "standardise", "obtain_teacher", "score_teacher", "teacher_fingerprint",
    "check_teacher_name", "TEACHER_KINDS", "train_cross_encoder_teacher", "ranking_groups_source", "standardize_setting",
    "pseudo_queries", "transfer_settings", "concat_groups",
]

TEACHER_KINDS = ("bm25", "biencoder_cosine", "checkpoint", "cross_encoder", "fine_tuned", "file")
#: kinds fine-tuned inside the job on the train labels, cross-fitted over ``folds``
FINE_TUNED_KINDS = ("cross_encoder", "fine_tuned")


# ------------------------------------------------------------------------------ candidates
def candidate_settings(cfg: Mapping[str, Any]) -> tuple[str | None, int]:
    """``(run file or None, depth)``: the ``candidates`` section (``bm25_depth``, or ``run`` +
    ``depth``) when present, else ``first_stage.depth`` (BM25)."""
    cand = cfg.get("candidates")
    if cand:
        depth = cand.get("bm25_depth") or cand.get("depth", 100)
        run = cand.get("run")
    else:
        depth, run = C.require(cfg, "first_stage.depth"), None
    try:
        depth = int(depth)
    except (TypeError, ValueError):
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: candidate depth must be a number, got {depth!r}") from None
    if depth <= 0:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: candidate depth must be positive, got {depth}")
    return run, depth


def first_stage(coll, *, run_path: str | None, depth: int, qids: Sequence[str]) -> tuple[dict, dict]:
    """``(candidates {qid: [doc, ...]}, ranked {qid: {doc: first-stage score}})``: BM25 top
    ``depth`` or the top ``depth`` of the TREC run ``run_path``."""
    from pile_jax.bm25 import bm25_search
    from pile_jax.data import read_run

    if run_path:
        run = read_run(run_path, collection=coll)
        ranked = {q: dict(run.get(q, [])[:depth]) for q in qids}
    else:
        ranked = bm25_search(coll.docs, {q: coll.queries[q] for q in qids}, depth=depth)
    return {q: list(ranked[q]) for q in qids}, ranked


def train_group_args(cfg: Mapping[str, Any], depth: int) -> dict:
    """Training groups: ``train_groups.size`` items per query (default: the depth), chosen by
    ``train_groups.policy`` (``top`` | ``positives_top`` | ``positives_sampled``)."""
    tg = cfg.get("train_groups") or {}
    return {"group_size": int(tg.get("size", depth)), "policy": tg.get("policy", "top"),
            "seed": int(tg.get("seed", 0))}


def teacher_candidates(cfg: Mapping[str, Any], coll, candidates: Mapping[str, list], train_qids, depth: int) -> dict:
    """The candidates teachers score: train queries only ever enter training as their training
    group, so there just its members; dev/test queries keep all ``depth`` candidates (evaluation)."""
    from pile_jax.data import build_groups

    members, _ = build_groups(coll, candidates, {}, qids=list(train_qids),
                              unjudged=C.get(cfg, "data.unjudged", "zero"), require_label_pair=False,
                              **train_group_args(cfg, depth))
    scored = dict(candidates)
    for qid, row, mask in zip(members["query_id"], members["doc_ids"], members["mask"]):
        scored[qid] = [str(d) for d, m in zip(row, mask) if m]
    return scored


# ------------------------------------------------------------------------------ transfer set
def transfer_settings(cfg: Mapping[str, Any]) -> dict | None:
    """The ``transfer`` section (None when absent or ``queries: 0``): ``queries`` (number of
    documents turned into pseudo-queries), ``max_words`` (pseudo-query length), ``group_size``
    (BM25 candidates per pseudo-query, default ``train_groups.size``), ``seed``."""
    t = cfg.get("transfer") or {}
    source = cfg.get("_source", "config")
    unknown = sorted(set(t) - {"queries", "max_words", "group_size", "seed"})
    if unknown:
        raise C.ConfigError(f"{source}: transfer: unknown key(s) {unknown} (known: group_size, max_words, queries, seed)")
    for key in ("queries", "max_words", "group_size", "seed"):
        v = t.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise C.ConfigError(f"{source}: transfer.{key}: expected an integer, got {v!r}")
    train_size = _train_group_size(cfg)
    n = int(t.get("queries", 0))
    out = {"queries": n, "max_words": int(t.get("max_words", 24)),
           "group_size": int(t.get("group_size", train_size or 8)), "seed": int(t.get("seed", 0))}
    for key, low in (("queries", 0), ("max_words", 1), ("group_size", 2), ("seed", 0)):
        if out[key] < low:
            raise C.ConfigError(f"{source}: transfer.{key}: must be >= {low}, got {out[key]}")
    if n > 0 and train_size is not None and out["group_size"] != train_size:
        raise C.ConfigError(f"{source}: transfer.group_size: {out['group_size']} differs from the train groups' size "
                            f"{train_size} (train_groups.size, default the first-stage depth); transfer groups "
                            "are trained in the same batches, so they must match")
    return out if n > 0 else None


def _train_group_size(cfg: Mapping[str, Any]) -> int | None:
    """Items per train group: ``train_groups.size``, else the first-stage depth (as
    :func:`train_group_args`); None when the config names neither."""
    size = C.get(cfg, "train_groups.size")
    if size is None:
        size = C.get(cfg, "first_stage.depth", C.get(cfg, "candidates.bm25_depth", C.get(cfg, "candidates.depth")))
    try:
        return None if size is None else int(size)
    except (TypeError, ValueError):
        return None


def pseudo_queries(docs: Mapping[str, str], num: int, *, max_words: int = 24, seed: int = 0,
                   min_words: int = 3) -> dict[str, str]:
    """``{"pq:<doc_id>": text}``: the first sentence (text up to the first ``" . "`` or ``". "``)
    of ``num`` documents drawn without replacement (``numpy.random.default_rng(seed)``), cut to
    ``max_words`` words; documents whose first sentence has fewer than ``min_words`` words are
    skipped. They are unlabelled queries of the transfer set (no test query text is used)."""
    ids = list(docs)
    order = np.random.default_rng(seed).permutation(len(ids))
    out: dict[str, str] = {}
    for i in order:
        if len(out) >= num:
            break
        text = docs[ids[i]]
        cut = [p for p in (text.find(" . "), text.find(". ")) if p > 0]
        words = (text[:min(cut)] if cut else text).split()[:max_words]
        if len(words) >= min_words:
            out[f"pq:{ids[i]}"] = " ".join(words)
    return out


def concat_groups(*parts: Mapping[str, Any]) -> dict:
    """Ranking groups concatenated along the group axis (same n and teachers)."""
    parts = [p for p in parts if p is not None and len(p["query_id"])]
    out = {"query_id": [q for p in parts for q in p["query_id"]], "teacher_names": list(parts[0].get("teacher_names", []))}
    for k in ("doc_ids", "labels", "label_mask", "mask", "teacher_scores"):
        out[k] = np.concatenate([np.asarray(p[k]) for p in parts], axis=0)
    if any(p.get("teacher_mask") is not None for p in parts):   # absent scores stay absent
        from pile_jax.data.groups import teacher_mask_of

        out["teacher_mask"] = np.concatenate([teacher_mask_of(p) for p in parts], axis=0)
    return out


# --------------------------------------------------------------------------- standardisation
def teacher_stats(groups: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-teacher mean and std (float64) of the scores over the valid items of ``groups``.

    ``mu_t = mean(s_t)``, ``sd_t = max(std(s_t), 1e-6)``, both accumulated in float64 so one huge
    but finite score (float32 squares overflow above ~1.8e19) cannot turn the std into inf. With a
    ``teacher_mask`` each teacher's statistics use only the items it scored (an absent score is
    not a 0)."""
    from pile_jax.data.groups import teacher_mask_of

    ts = np.asarray(groups["teacher_scores"], np.float64)
    mask = np.asarray(groups["mask"], bool)
    T = ts.shape[1]
    if T and not mask.any():
        raise ValueError("teacher standardisation: no valid train items (no train groups?)")
    present = teacher_mask_of(groups)
    names = list(groups.get("teacher_names") or [f"#{t}" for t in range(T)])
    for t in range(T):
        if not present[:, t].any():
            raise ValueError(f"teacher standardisation: teacher {names[t]!r} scores no train item")
    mu = np.array([ts[:, t][present[:, t]].mean() for t in range(T)], np.float64)
    sd = np.array([max(ts[:, t][present[:, t]].std(), 1e-6) for t in range(T)], np.float64)
    return mu, sd


def standardise(groups: dict, mu: np.ndarray, sd: np.ndarray) -> dict:
    """Teacher scores ``(s - mu_t) / sd_t`` computed in float64, stored float32 (padding stays 0):
    one global scale per teacher, so logits of different magnitudes (BM25 ~10, cosine ~0.5) mix
    without changing any teacher's order or its within-list margins' relative size. Absent scores
    (``teacher_mask`` False) stay 0."""
    from pile_jax.data.groups import teacher_mask_of

    mu, sd = np.asarray(mu, np.float64), np.asarray(sd, np.float64)
    ts = (np.asarray(groups["teacher_scores"], np.float64) - mu[None, :, None]) / sd[None, :, None]
    keep = groups["mask"][:, None, :] if groups.get("teacher_mask") is None else teacher_mask_of(groups)
    return dict(groups, teacher_scores=(ts * keep).astype(np.float32))


# ------------------------------------------------------------------------ processes
def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def _agree(flag: bool) -> bool:
    """Process 0's decision on every process (so all processes take the same collective path)."""
    if _process()[1] == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(int(flag), np.int32)))


# ---------------------------------------------------------------------------------- teachers
def check_teacher_name(name: Any, source: str = "config") -> str:
    """A teacher name is a file name (:func:`pile_jax.config.check_name`): letters, digits,
    ``_ - .``, not starting with '.', so ``<name>.tsv`` never leaves its folder."""
    return C.check_name(name, "teachers: name", source)


def _model_cfg(defaults: Mapping[str, Any], spec: Mapping[str, Any]) -> dict:
    """The teacher's model settings: the job's defaults, then ``spec.model`` (a mapping, or a model
    name / folder string)."""
    model = dict(defaults or {})
    extra = spec.get("model")
    if isinstance(extra, str):
        model["base"] = extra
    elif isinstance(extra, Mapping):
        model.update(extra)
    model.setdefault("base", "all-MiniLM-L6-v2")
    return model


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_fingerprint(spec: Mapping[str, Any], *, model: Mapping[str, Any], depth: int,
                        fit: Mapping[str, Any] | None = None, collection: str | None = None,
                        first_stage: str | None = None) -> dict:
    """What made a teacher file (written next to it as ``<name>.spec.json``): the teacher spec,
    the collection, the first stage (``bm25`` or the run file) and its depth, the model settings
    and, for a fine-tuned teacher, a digest of what it was fitted on. Equal fingerprints = the
    same scoring function of (query, doc)."""
    fp = {"teacher": json.loads(json.dumps(dict(spec), default=str)), "collection": collection,
          "first_stage": first_stage or "bm25", "depth": int(depth)}
    if spec.get("kind") in ("biencoder_cosine", "checkpoint", "cross_encoder"):
        from pile_jax.numerics import policy

        fp["model"] = json.loads(json.dumps(dict(model), default=str))
        fp["precision"] = policy()   # scores made at HIGHEST matmul precision (pile_jax.numerics)
    if fit is not None:
        fp["fit"] = _digest(fit)
    return fp


def _sidecar(path) -> str:
    p = str(path)
    return (p[:-4] if p.endswith(".tsv") else p) + ".spec.json"


def _read_sidecar(path) -> dict | None:
    side = pio.as_path(_sidecar(path))
    if not side.exists():
        return None
    try:
        return pio.read_json(side)
    except (ValueError, OSError):
        return None


def _diff_keys(a: Mapping | None, b: Mapping) -> list[str]:
    if a is None:
        return ["(no spec sidecar)"]
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _covers(scores: Mapping[str, Mapping[str, float]], candidates: Mapping[str, Sequence[str]]) -> int:
    """Number of (query, doc) candidates missing from ``scores``."""
    return sum(1 for q, c in candidates.items() for d in c if d not in scores.get(q, {}))


def _write_teacher(path, scores, fingerprint) -> None:
    from pile_jax.data import write_teacher_scores

    write_teacher_scores(path, scores)
    pio.write_json(_sidecar(path), fingerprint)


def score_teacher(spec: Mapping[str, Any], *, coll, candidates: Mapping[str, list], ranked: Mapping,
                  model: Mapping[str, Any], batch_size: int = 64, done: Mapping | None = None,
                  save: Callable[[dict], None] | None = None, cfg: Mapping[str, Any] | None = None,
                  fit_candidates: Mapping[str, list] | None = None, splits: Mapping[str, list] | None = None,
                  out_dir: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Scores ``candidates`` with one teacher spec.

    Kinds: ``bm25`` (the first-stage scores, BM25 of the missing pairs), ``biencoder_cosine``
    (``model.base``), ``checkpoint`` (``spec.path``, a Hugging Face cross-encoder folder),
    ``cross_encoder`` (fine-tuned here on ``fit_candidates``'s train groups, cross-fitted over
    ``spec.folds``; needs ``cfg``, ``splits``, ``out_dir``), ``fine_tuned`` (the same for any
    student architecture, ``spec.student`` = ``{kind, ...options}`` of :func:`pile_jax.rankers.student`,
    e.g. a full-depth ``query_encoder`` against the frozen document index), ``file`` (``spec.path``). Queries in
    ``done`` whose candidates it covers are kept; model teachers call ``save`` with the scores so
    far every 400 queries (a killed run resumes); on several processes every process runs the same
    calls and the scorers share the batches out across processes (data-parallel scoring).
    """
    log = log or _log.info
    kind = spec.get("kind")
    if kind == "file":
        return read_file_teacher(spec, coll)
    done = dict(done or {})
    todo = {q: c for q, c in candidates.items() if not (q in done and set(c) <= set(done[q]))}
    if kind == "bm25":
        new = {q: {d: float(ranked.get(q, {}).get(d, 0.0)) for d in c} for q, c in todo.items()}
        if any(d not in ranked.get(q, {}) for q, c in todo.items() for d in c):
            from pile_jax.bm25 import bm25_scores_for

            new = bm25_scores_for(coll.docs, coll.queries, todo)
    elif kind in ("biencoder_cosine", "checkpoint"):
        from pile_jax import rankers
        from pile_jax.models.tokenize import DEFAULT_MAX_QUERY_LENGTH, PIPELINE_MAX_LENGTH

        if kind == "biencoder_cosine":
            ranker = rankers.biencoder_cosine(model["base"], max_length=int(model.get("max_length", PIPELINE_MAX_LENGTH)))

            def score(part, progress):
                return rankers.biencoder_score_candidates(ranker, part, coll.queries, coll.docs,
                                                          batch_size=batch_size, progress=progress)
        else:
            from pile_jax.train.loop import score_candidates

            ranker = rankers.cross_encoder(C.require(spec, "path", source=f"teacher {spec.get('name')!r}"),
                                           num_layers=spec.get("num_layers"),
                                           max_length=int(model.get("max_length", PIPELINE_MAX_LENGTH)),
                                           max_query_length=int(model.get("max_query_length", DEFAULT_MAX_QUERY_LENGTH)),
                                           new_head=False)

            def score(part, progress):
                return score_candidates(ranker, ranker.params, part, coll.queries, coll.docs,
                                        batch_size=batch_size, progress=progress)
        # Every process runs the same loop over the same queries: the scorers are data-parallel
        # over the local devices and, on several processes, deal the batches out across processes
        # and all-gather the scores (pile_jax.scoring.map_sorted), so all processes get them all.
        new = {}
        keys = list(todo)
        chunk = 400  # save every 400 queries (process 0; a killed scoring run resumes); the bi-encoder keeps its vectors
        log(f"teacher {spec['name']}: scoring {len(keys)} queries, {sum(map(len, todo.values()))} candidates "
            f"({kind} {model['base'] if kind == 'biencoder_cosine' else spec.get('path')})")
        for i in range(0, len(keys), chunk):
            part = {q: todo[q] for q in keys[i:i + chunk]}
            new.update(score(part, f"score {spec['name']} {i}/{len(keys)}"))
            if save is not None and i + chunk < len(keys):
                save({**done, **new})
            if i + chunk < len(keys):
                log(f"teacher {spec['name']}: {i + chunk}/{len(keys)} queries scored")
    elif kind in FINE_TUNED_KINDS:
        if _process()[1] > 1:
            raise C.ConfigError(f"teacher {spec.get('name')!r}: kind {kind} (fine-tuned in the job) runs on "
                                "one process; score it with `pile-jax run` and pass it as kind: file")
        if cfg is None or splits is None or out_dir is None:
            raise ValueError(f"score_teacher: a {kind} teacher needs cfg, splits and out_dir")
        score_qids = [q for s in ("train", "dev", "test") for q in splits[s]]
        split_set = set(score_qids)
        score_qids += [q for q in candidates if q not in split_set]  # e.g. transfer-set pseudo-queries
        new = train_cross_encoder_teacher(spec, cfg=cfg, coll=coll, candidates=candidates,
                                           fit_candidates=candidates if fit_candidates is None else fit_candidates,
                                           train_qids=splits["train"], score_qids=score_qids, model_cfg=model,
                                           batch_size=batch_size, out_dir=out_dir, log=log)
        new = {q: new[q] for q in candidates if q in new}
    else:
        raise C.ConfigError(f"teacher {spec.get('name')!r}: unknown kind {kind!r} (known: {', '.join(TEACHER_KINDS)})")
    return {**done, **new}


def train_cross_encoder_teacher(spec, *, cfg, coll, candidates, fit_candidates, train_qids, score_qids, model_cfg,
                                 batch_size, out_dir, log):
    """Cross-fitted fine-tuning: fold k's model scores fold k's train queries; every fold model
    scores the other queries and their logits are averaged. Kind ``cross_encoder``: a MiniLM
    cross-encoder with a new head; kind ``fine_tuned``: the student architecture ``spec.student``
    (``{kind, num_layers, ...options}``, :func:`pile_jax.rankers.student`), e.g. a query tower."""
    from pile_jax import rankers
    from pile_jax.data import build_groups, iter_group_examples
    from pile_jax.models.tokenize import PIPELINE_MAX_LENGTH, PIPELINE_MAX_QUERY_LENGTH
    from pile_jax.train.loop import score_candidates, train

    depth = candidate_settings(cfg)[1]
    folds = int(spec.get("folds", 2))
    seed = int(spec.get("seed", 0))
    rng = np.random.default_rng(seed)
    order = list(train_qids)
    rng.shuffle(order)
    fold_of = {q: i % folds for i, q in enumerate(order)}
    scores: dict[str, dict[str, float]] = {}
    others = [q for q in score_qids if q not in fold_of]
    for k in range(folds):
        fit_qids = [q for q in train_qids if fold_of[q] != k] if folds > 1 else list(train_qids)
        groups, stats = build_groups(coll, fit_candidates, {}, qids=fit_qids, unjudged=C.get(cfg, "data.unjudged", "zero"),
                                     **train_group_args(cfg, depth))
        if spec.get("kind") == "fine_tuned":
            arch = dict(C.require(spec, "student", source=f"teacher {spec['name']!r}"))
            arch_kind = arch.pop("kind")
            arch.setdefault("num_layers", spec.get("num_layers", model_cfg.get("num_layers")))
            if arch_kind != "cross_encoder":
                arch.setdefault("max_doc_length", int(model_cfg.get("max_doc_length",
                                                                    model_cfg.get("max_length", PIPELINE_MAX_LENGTH))))
            ranker = rankers.student(arch_kind, model_cfg.get("base", "all-MiniLM-L6-v2"),
                                     max_length=int(model_cfg.get("max_length", PIPELINE_MAX_LENGTH)),
                                     max_query_length=int(model_cfg.get("max_query_length", PIPELINE_MAX_QUERY_LENGTH)),
                                     dtype=model_cfg.get("dtype", "float32"), seed=seed + k, **arch)
        else:
            ranker = rankers.cross_encoder(model_cfg.get("base", "all-MiniLM-L6-v2"),
                                           num_layers=spec.get("num_layers", model_cfg.get("num_layers")),
                                           max_length=int(model_cfg.get("max_length", PIPELINE_MAX_LENGTH)),
                                           max_query_length=int(model_cfg.get("max_query_length", PIPELINE_MAX_QUERY_LENGTH)),
                                           dtype=model_cfg.get("dtype", "float32"), seed=seed + k, new_head=True)
        train_cfg = dict(cfg.get("teacher_train", {}))
        train_cfg.update(spec.get("train", {}))
        train_cfg["seed"] = seed + 100 * k
        log(f"teacher {spec['name']}: fold {k + 1}/{folds}: {len(groups['query_id'])} train groups "
            f"({stats.get('skipped_no_label_pair', 0)} lists without a label pair skipped)")
        result = train(ranker, source=list(iter_group_examples(groups)), objective=spec["objective"],
                       queries=coll.queries, docs=coll.docs, config=train_cfg,
                       workdir=str(pio.as_path(out_dir) / f"{spec['name']}_fold{k}"), log=log)
        held = [q for q in train_qids if fold_of[q] == k] if folds > 1 else []
        # dev/test queries: scored by every fold model (averaged), or only by the first one
        # (`eval_scored_by: first`, half the scoring cost on a CPU).
        eval_models = folds if spec.get("eval_scored_by", "all") == "all" else 1
        scored_others = others if k < eval_models else []
        part = score_candidates(ranker, result.params, {q: candidates[q] for q in held + scored_others},
                                coll.queries, coll.docs, batch_size=batch_size,
                                progress=f"score {spec['name']} fold {k + 1}")
        for q in held:
            scores[q] = part[q]
        for q in scored_others:
            acc = scores.setdefault(q, {d: 0.0 for d in candidates[q]})
            for d, s in part[q].items():
                acc[d] += s / eval_models
    return scores


def _fit_description(spec, cfg, coll, fit_candidates, splits, depth) -> dict | None:
    """What a fine-tuned teacher was fitted on (hashed into its fingerprint)."""
    if spec.get("kind") not in FINE_TUNED_KINDS:
        return None
    train_qids = list(splits["train"])
    return {"collection": coll.name, "qrels": C.get(cfg, "data.qrels_file", "qrels.tsv"),
            "unjudged": C.get(cfg, "data.unjudged", "zero"), "train_qids": train_qids,
            "groups": train_group_args(cfg, depth), "teacher_train": cfg.get("teacher_train") or {},
            "fit_candidates": _digest({q: list(fit_candidates.get(q, [])) for q in train_qids}),
            "all_qids": [q for s in ("train", "dev", "test") for q in splits[s]]}


def obtain_teacher(spec: Mapping[str, Any], *, path, coll, candidates, ranked, model, depth: int, batch_size: int = 64,
                   run_path: str | None = None, cfg=None, fit_candidates=None, splits=None, out_dir=None, reuse_from: Sequence = (),
                   log: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """``(scores, provenance)`` of one teacher, reused or computed, written to ``path`` (with its
    ``.spec.json`` sidecar; process 0 writes, then a barrier).

    Reuse: ``path`` is reused (and completed, for a partial file) only when its sidecar equals
    :func:`teacher_fingerprint`; a stale or missing sidecar means the file is recomputed. A file
    in ``reuse_from`` (folders named by the user, e.g. ``teachers_from``) is reused when it
    covers every candidate; a sidecar that differs is reported in the log and the provenance.
    """
    log = log or _log.info
    name = spec["name"]
    if spec.get("kind") == "file":
        scores = score_teacher(spec, coll=coll, candidates=candidates, ranked=ranked, model=model)
        missing = _covers(scores, candidates)
        if missing:
            from pile_jax.data import DataError

            raise DataError(spec["path"], None, f"teacher {name!r} lacks {missing} of the job's candidate pairs")
        return scores, {"kind": "file", "source": str(spec["path"])}
    fit = _fit_description(spec, cfg, coll, fit_candidates if fit_candidates is not None else candidates, splits, depth) \
        if cfg is not None and splits is not None else None
    fp = teacher_fingerprint(spec, model=model, depth=depth, fit=fit, collection=coll.name,
                             first_stage=None if run_path is None else str(run_path))
    from pile_jax.data import read_teacher_scores

    # explicitly named folders first (study's teachers_from)
    for src in reuse_from:
        src = pio.as_path(src)
        if str(src) == str(pio.as_path(path)):
            continue
        if not _agree(src.exists()):
            continue
        scores = read_teacher_scores(str(src), outliers="accept")   # pile_jax's own teachers' output
        missing = _covers(scores, candidates)
        if missing:
            raise C.ConfigError(f"teacher file {src} lacks {missing} of the job's candidates "
                                "(different depth or queries?)")
        diff = [] if _read_sidecar(src) == fp else _diff_keys(_read_sidecar(src), fp)
        log(f"teacher {name}: reusing {src}" + (f" (its spec differs: {', '.join(diff)})" if diff else ""))
        if pio.is_primary():
            _write_teacher(path, scores, fp)
        pio.barrier(f"teacher_{name}")
        return scores, {"kind": spec.get("kind"), "source": str(src), **({"spec_differs": diff} if diff else {})}

    done: dict = {}
    here = pio.as_path(path)
    side = _read_sidecar(here) if here.exists() else None
    reuse = _agree(here.exists() and side == fp)
    if reuse:
        done = read_teacher_scores(str(here), outliers="accept")   # written here by this teacher
        if not _covers(done, candidates):
            log(f"teacher {name}: reusing {here}")
            return {q: done.get(q, {}) for q in candidates}, {"kind": spec.get("kind"), "source": str(here)}
        log(f"teacher {name}: completing {here} ({len(done)} queries done)")
    elif here.exists():
        log(f"teacher {name}: {here} was made by another spec ({', '.join(_diff_keys(side, fp))} differ): recomputing")
    if pio.is_primary() and not reuse:
        pio.as_path(_sidecar(here)).unlink(missing_ok=True)

    def save(partial):
        if pio.is_primary():
            _write_teacher(here, partial, fp)

    t0 = time.perf_counter()
    scores = score_teacher(spec, coll=coll, candidates=candidates, ranked=ranked, model=model, batch_size=batch_size,
                           done=done, save=save, cfg=cfg, fit_candidates=fit_candidates, splits=splits,
                           out_dir=out_dir, log=log)
    scores = {q: scores[q] for q in candidates if q in scores}
    if pio.is_primary():
        _write_teacher(here, scores, fp)
    pio.barrier(f"teacher_{name}")
    secs = round(time.perf_counter() - t0, 1)
    log(f"teacher {name} ({spec.get('kind')}): scored {sum(map(len, scores.values()))} pairs in {secs}s -> {here}")
    return scores, {"kind": spec.get("kind"), "source": "computed", "seconds": secs}


# ------------------------------------------------------------------------- TFDS train source
def ranking_groups_source(groups: Mapping[str, Any], data_dir, name: str, *, overwrite: bool = True):
    """The TFDS ArrayRecord data source of ``groups`` (one split, ``train``): process 0 writes
    ``data_dir/ranking_groups/<name>/1.0.0``, a barrier, the other processes open it; the split is
    read once into a :class:`~pile_jax.data.loader.ColumnarSource` (TFDS' per-record decoding would
    otherwise cap the loader; see ``bench/input_pipeline.py``)."""
    from pile_jax.data import build_ranking_groups_dataset, load_ranking_groups
    from pile_jax.data.loader import ColumnarSource

    builder = None
    if pio.is_primary():
        builder = build_ranking_groups_dataset({"train": groups}, str(data_dir), name, overwrite=overwrite)
    pio.barrier(f"tfds_{name}")
    if builder is None:
        builder = load_ranking_groups(str(pio.as_path(data_dir) / "ranking_groups" / name / "1.0.0"))
    return ColumnarSource(builder.as_data_source()["train"]), builder


def standardize_setting(cfg: Mapping[str, Any], key: str, default: str) -> str:
    """``cfg[key]`` (``global`` | ``none``), checked, with a config error naming the key."""
    value = C.get(cfg, key, default)
    if value not in ("global", "none"):
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: {key} must be global or none, got {value!r}")
    return value


# ----------------------------------------------------------------------------------- prepare
@dataclasses.dataclass
class Prepared:
    """What the jobs share: the collection, its splits, the candidates, the teachers' scores, the
    ranking groups per split (standardised when asked) and the standardisation statistics."""

    coll: Any
    splits: dict[str, list[str]]
    depth: int
    ranked: dict[str, dict[str, float]]          # first-stage scores {qid: {doc: score}}
    candidates: dict[str, list[str]]             # {qid: [doc, ...]} in first-stage order
    teachers: dict[str, dict[str, dict[str, float]]]
    provenance: dict[str, dict]
    groups: dict[str, dict]
    group_stats: dict[str, dict]
    mu: np.ndarray                               # float64 [T]
    sd: np.ndarray                               # float64 [T]
    standardize: str
    transfer: dict | None = None                 # unlabelled pseudo-query groups (label_mask all False), or None

    @property
    def teacher_names(self) -> list[str]:
        return list(self.teachers)


def prepare(cfg: Mapping[str, Any], *, out: str, data: str | None = None, log: Callable[[str], None] | None = None,
            standardize: str = "global", teacher_model: Mapping[str, Any] | None = None,
            reuse_from: Sequence[str] = ()) -> Prepared:
    """Collection → candidates → teachers → groups → standardisation for ``cfg`` (module docstring).

    Teacher files go to ``<out>/teachers``, fine-tuned teacher models to ``<out>/teacher_models``.
    ``teacher_model``: the model settings teachers start from (default ``cfg.model``).
    ``reuse_from``: folders whose ``teachers/<name>.tsv`` or ``<name>.tsv`` may be reused.
    """
    from pile_jax.data import build_groups, load_collection

    log = log or _log.info
    source = cfg.get("_source", "config")
    if standardize not in ("global", "none"):
        raise C.ConfigError(f"{source}: standardize must be global or none, got {standardize!r}")
    specs = list(cfg.get("teachers") or [])
    for spec in specs:
        if not isinstance(spec, Mapping):
            raise C.ConfigError(f"{source}: teachers: each teacher is a mapping {{name, kind, ...}}, got {spec!r}")
        check_teacher_name(spec.get("name"), source)
        if spec.get("kind") not in TEACHER_KINDS:
            raise C.ConfigError(f"{source}: teachers: {spec.get('name')}: unknown kind {spec.get('kind')!r} "
                                f"(known: {', '.join(TEACHER_KINDS)})")
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise C.ConfigError(f"{source}: teachers: duplicate names {names}")
    run_path, depth = candidate_settings(cfg)
    unjudged = C.get(cfg, "data.unjudged", "zero")

    coll = load_collection(data or C.require(cfg, "data.collection"), qrels_file=C.get(cfg, "data.qrels_file", "qrels.tsv"))
    splits = C.limited_splits(cfg, coll)
    log(f"collection {coll.name}: {len(coll.docs)} docs, {len(coll.queries)} queries; "
        + ", ".join(f"{s} {len(q)}" for s, q in splits.items()))
    all_qids = [q for s in ("train", "dev", "test") for q in splits[s]]
    candidates, ranked = first_stage(coll, run_path=run_path, depth=depth, qids=all_qids)
    scored = teacher_candidates(cfg, coll, candidates, splits["train"], depth)
    tset = transfer_settings(cfg)
    transfer_cands: dict[str, list[str]] = {}
    if tset:
        # transfer set: pseudo-queries from documents, their BM25 top group_size, scored by every teacher
        pq = pseudo_queries(coll.docs, tset["queries"], max_words=tset["max_words"], seed=tset["seed"])
        clash = sorted(set(pq) & set(coll.queries))
        if clash:
            raise C.ConfigError(f"{source}: transfer: pseudo-query ids {clash[:3]} clash with the collection's query ids")
        coll = dataclasses.replace(coll, queries={**coll.queries, **pq})
        transfer_cands, transfer_ranked = first_stage(coll, run_path=None, depth=tset["group_size"], qids=list(pq))
        transfer_cands = {q: c for q, c in transfer_cands.items() if len(c) >= 2}  # a list needs a pair
        ranked = {**ranked, **transfer_ranked}
        scored = {**scored, **transfer_cands}
        log(f"transfer set: {len(transfer_cands)} pseudo-queries (first sentences of documents), BM25 top {tset['group_size']}")

    tdir = pio.as_path(out) / "teachers"
    model_defaults = dict(cfg.get("model") or {}) if teacher_model is None else dict(teacher_model)
    batch_size = int(cfg.get("score_batch_size", 64))
    teachers, prov = {}, {}
    for spec in specs:
        name = spec["name"]
        dirs = [pio.as_path(d) for d in reuse_from if d]
        found = [p for d in dirs for p in (d / "teachers" / f"{name}.tsv", d / f"{name}.tsv")
                 if _agree(p.exists())][:1]
        teachers[name], prov[name] = obtain_teacher(
            spec, path=tdir / f"{name}.tsv", coll=coll, candidates=scored, ranked=ranked,
            model=_model_cfg(model_defaults, spec), depth=depth, batch_size=batch_size, run_path=run_path, cfg=cfg,
            fit_candidates=candidates, splits=splits, out_dir=str(pio.as_path(out) / "teacher_models"),
            reuse_from=found, log=log)

    groups, gstats = {}, {}
    for s in ("train", "dev", "test"):
        size_args = train_group_args(cfg, depth) if s == "train" else {"group_size": depth}
        groups[s], gstats[s] = build_groups(coll, candidates, teachers, qids=splits[s], unjudged=unjudged,
                                            require_label_pair=(s == "train"), **size_args)
    transfer = None
    if transfer_cands:
        transfer, _ = build_groups({}, transfer_cands, teachers, qids=list(transfer_cands), unjudged="zero",
                                   group_size=tset["group_size"], policy="top", require_label_pair=False)
        transfer["label_mask"] = np.zeros_like(transfer["label_mask"], dtype=bool)  # unlabelled: no label pair
    if teachers:
        mu, sd = teacher_stats(groups["train"])
    else:
        mu, sd = np.zeros(0, np.float64), np.ones(0, np.float64)
    if standardize == "global" and teachers:
        groups = {s: standardise(g, mu, sd) for s, g in groups.items()}
        transfer = standardise(transfer, mu, sd) if transfer is not None else None
    return Prepared(coll=coll, splits=splits, depth=depth, ranked=ranked, candidates=candidates, teachers=teachers,
                    provenance=prov, groups=groups, group_stats=gstats, mu=mu, sd=sd, standardize=standardize,
                    transfer=transfer)


# ------------------------------------------------------------------------------ schema fragments
# The sections every job shares (inputs, the teachers' model settings, teachers, ensembles), as
# fragments of :class:`pile_jax.config.JobSchema`: ``fragment(checker, cfg, context)``.

#: the known keys of the shared sections
SECTION_KEYS = {
    "data": ("collection", "qrels_file", "unjudged", "max_queries_per_split"),
    "first_stage": ("depth",),
    "candidates": ("bm25_depth", "run", "depth", "from", "eval_run"),
    "train_groups": ("size", "policy", "seed"),
    "model": ("base", "max_length", "max_query_length", "max_doc_length", "dtype", "num_layers", "remat"),
    "teacher": ("name", "kind", "model", "path", "num_layers", "seed", "folds", "eval_scored_by", "objective", "train",
                "outliers", "student", "format", "transform", "allow_pickle", "duplicates"),
    "ensembles": ("standardize", "methods"),
    "eval": ("split", "max_queries"),
}


def _exists(path: Any) -> bool:
    return pio.as_path(str(path)).is_file()


def model_section(c: C.Checker, node: Any, where: str) -> dict:
    """A ``model:`` section (keys, dtype, num_layers), as a dict."""
    node = c.section(node, where, SECTION_KEYS["model"])
    c.choice(node, "dtype", where, C.DTYPES)
    c.number(node, "num_layers", where, integer=True, low=1)
    if "remat" in node and not isinstance(node["remat"], bool):
        c.fail(f"{where}.remat", f"must be true or false, got {node['remat']!r}")
    return node


def check_inputs(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: ``data`` (required unless ``--data``), ``first_stage``, ``candidates``,
    ``train_groups``, ``score_batch_size``, ``eval``, ``teacher_train``, ``teachers_from``."""
    from pile_jax.data.groups import POLICIES
    from pile_jax.train.loop import check_train_section

    data = context.get("data")
    d = c.section(cfg.get("data"), "data", SECTION_KEYS["data"], required=data is None)
    if data is None and not d.get("collection"):
        c.fail("data.collection", "required (a shipped collection name or a folder)")
    c.choice(d, "unjudged", "data", C.UNJUDGED)
    limit = d.get("max_queries_per_split")
    if isinstance(limit, Mapping):
        for s in limit:
            if s not in C.SPLITS:
                c.fail(f"data.max_queries_per_split.{s}", f"unknown split{C.did_you_mean(str(s), C.SPLITS)} "
                                                          f"(known: {', '.join(C.SPLITS)})")
            c.number(limit, s, "data.max_queries_per_split", integer=True, low=1)
    elif limit is not None:
        c.number(d, "max_queries_per_split", "data", integer=True, low=0)
    fs = c.section(cfg.get("first_stage"), "first_stage", SECTION_KEYS["first_stage"])
    c.number(fs, "depth", "first_stage", integer=True, low=1, nullable=False)
    cand = c.section(cfg.get("candidates"), "candidates", SECTION_KEYS["candidates"])
    for k in ("bm25_depth", "depth"):
        c.number(cand, k, "candidates", integer=True, low=1)
    if cand.get("run") and not _exists(cand["run"]):
        c.fail("candidates.run", f"{cand['run']}: file not found")
    if not cand and "depth" not in fs:
        c.fail("first_stage.depth", "required (or a candidates section)")
    large = _check_teacher_candidates(c, cfg, cand)
    tg = c.section(cfg.get("train_groups"), "train_groups", SECTION_KEYS["train_groups"])
    c.number(tg, "size", "train_groups", integer=True, low=1, nullable=False)
    c.number(tg, "seed", "train_groups", integer=True, low=0, nullable=False)
    c.choice(tg, "policy", "train_groups", POLICIES)
    c.number(cfg, "score_batch_size", "", integer=True, low=1, nullable=False)
    ev = c.section(cfg.get("eval"), "eval", SECTION_KEYS["eval"])
    if large:   # a collection's own split names (MS MARCO: train, dev.small), checked when it is loaded
        if "split" in ev and (not isinstance(ev["split"], str) or not ev["split"]):
            c.fail("eval.split", f"must be a split name, got {ev['split']!r}")
    else:
        c.choice(ev, "split", "eval", C.SPLITS)
    c.number(ev, "max_queries", "eval", integer=True, low=1)
    if "max_queries" in ev and not large:
        c.fail("eval.max_queries", "only with candidates: {from: teachers} (use data.max_queries_per_split)")
    if "teacher_train" in cfg:
        check_train_section(cfg["teacher_train"], "teacher_train", c.source)
    if cfg.get("teachers_from") is not None and not isinstance(cfg["teachers_from"], str):
        c.fail("teachers_from", f"must be a folder, got {cfg['teachers_from']!r}")


def large_collection(cfg: Mapping[str, Any]) -> bool:
    """True for the large-collection path: ``candidates: {from: teachers, eval_run: FILE}``."""
    cand = cfg.get("candidates")
    return isinstance(cand, Mapping) and cand.get("from") is not None


def _check_teacher_candidates(c: C.Checker, cfg: Mapping[str, Any], cand: Mapping[str, Any]) -> bool:
    """``candidates: {from: teachers, eval_run: FILE}`` (train groups from the teacher files, the
    eval split re-ranks the TREC run ``eval_run``): no BM25/run depth beside it, every teacher of
    kind ``file``, no ``first_stage`` / ``transfer``. Returns whether the section asks for it."""
    if "eval_run" in cand and "from" not in cand:
        c.fail("candidates.eval_run", "goes with from: teachers (the BM25 / run path evaluates candidates.run)")
    if "from" not in cand:
        return False
    if cand["from"] != "teachers":
        c.fail("candidates.from", f"must be teachers, got {cand['from']!r}")
    mixed = [k for k in ("bm25_depth", "run", "depth") if k in cand]
    if mixed:
        c.fail(f"candidates.{mixed[0]}", "not with from: teachers (the teachers' files are the training candidates)")
    if not cand.get("eval_run"):
        c.fail("candidates.eval_run", "required with from: teachers (a first-stage TREC run of the eval queries)")
    if not _exists(cand["eval_run"]):
        c.fail("candidates.eval_run", f"{cand['eval_run']}: file not found")
    for key in ("first_stage", "transfer"):
        if cfg.get(key):
            c.fail(key, "not with candidates: {from: teachers}")
    tg = cfg.get("train_groups") or {}
    if isinstance(tg, Mapping) and "policy" in tg:
        c.fail("train_groups.policy", "not with candidates: {from: teachers} (every positive + sampled others)")
    teachers = cfg.get("teachers") or []
    if not teachers:
        c.fail("teachers", "candidates: {from: teachers} needs at least one teacher of kind file")
    for i, spec in enumerate(teachers):
        if isinstance(spec, Mapping) and spec.get("kind") != "file":
            c.fail(f"teachers[{i}].kind", f"candidates: {{from: teachers}} reads teacher files (kind: file), "
                                          f"got {spec.get('kind')!r}")
    return True


def check_model(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment (``run``, ``study``): the ``model:`` section the teachers and students start from;
    sets ``context["model"]``."""
    from pile_jax.models.tokenize import check_lengths

    model = model_section(c, cfg.get("model"), "model")
    check_lengths(c, model, "model")
    context["model"] = model


def _check_file_teacher_keys(c: C.Checker, spec: Mapping[str, Any], where: str, kind: Any) -> None:
    """``outliers``, ``format``, ``transform``, ``allow_pickle``, ``duplicates``: keys of a ``kind:
    file`` teacher (:mod:`pile_jax.data.teacher_files`)."""
    from pile_jax.data.teacher_files import DUPLICATES, FORMATS, TRANSFORMS

    for key in ("outliers", "format", "transform", "allow_pickle", "duplicates"):
        if key in spec and kind != "file":
            c.fail(f"{where}.{key}", "only a teacher of kind file reads a score file")
    c.choice(spec, "format", where, FORMATS)
    c.choice(spec, "transform", where, TRANSFORMS)
    c.choice(spec, "duplicates", where, DUPLICATES)
    if "allow_pickle" in spec and not isinstance(spec["allow_pickle"], bool):
        c.fail(f"{where}.allow_pickle", f"must be true or false, got {spec['allow_pickle']!r}")
    if spec.get("format") == "score_map_pickle" and spec.get("allow_pickle") is not True:
        c.fail(f"{where}.allow_pickle", "format score_map_pickle loads a pickle, which runs code from the file: "
                                        "set allow_pickle: true only if you trust the file")


def read_file_teacher(spec: Mapping[str, Any], coll) -> dict[str, dict[str, float]]:
    """A ``kind: file`` teacher's scores ``{qid: {doc: score}}`` for a small in-memory collection:
    today's TSV through :func:`pile_jax.data.trec.read_teacher_scores`; any other ``format`` /
    ``transform`` through :func:`pile_jax.data.teacher_files.read_teacher_file`."""
    from pile_jax.data import read_teacher_scores

    path = C.require(spec, "path", source=f"teacher {spec.get('name')!r}")
    fmt, transform = spec.get("format", "tsv"), spec.get("transform", "raw")
    if fmt == "tsv" and transform == "raw" and spec.get("duplicates", "error") == "error":
        return read_teacher_scores(path, collection=coll, outliers=spec.get("outliers", "error"))
    from pile_jax.data.teacher_files import read_teacher_file, row_index

    qidx, didx = row_index(coll.queries), row_index(coll.docs)   # a TextStore's own rows(), or a key index
    tr = read_teacher_file(path, format=fmt, transform=transform, queries=qidx, docs=didx,
                           outliers=spec.get("outliers", "error"), allow_pickle=bool(spec.get("allow_pickle", False)),
                           duplicates=spec.get("duplicates", "error"))
    out: dict[str, dict[str, float]] = {}
    for q, d, v in zip(qidx.ids_of(tr.query_rows), didx.ids_of(tr.doc_rows), tr.scores.tolist()):
        out.setdefault(str(q), {})[str(d)] = v
    return out


def check_teachers(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: the ``teachers:`` list (required but for ``train``): unique file-safe names,
    kinds, paths, folds, a cross-encoder teacher's objective and train section, each model's
    lengths (from ``context["model"]``); sets ``context["teacher_names"]``."""
    from pile_jax.models.tokenize import check_lengths
    from pile_jax.rankers import check_layers
    from pile_jax.train.loop import check_train_section
    from pile_jax.train.objective import check_objective

    teachers = cfg.get("teachers")
    if teachers is None and context["job"] != "train":
        c.fail("teachers", "required (a list of {name, kind, ...})")
    if teachers is not None and not isinstance(teachers, list):
        c.fail("teachers", f"must be a list of {{name, kind, ...}}, got {teachers!r}")
    names = context["teacher_names"] = []
    for i, spec in enumerate(teachers or []):
        where = f"teachers[{i}]"
        spec = c.section(spec, where, SECTION_KEYS["teacher"], required=True)
        c.name(spec.get("name"), f"{where}.name")
        if spec["name"] in names:
            c.fail(f"{where}.name", f"duplicate teacher name {spec['name']!r}")
        names.append(spec["name"])
        where = f"teachers[{i}] ({spec['name']})"
        kind = spec.get("kind")
        if kind not in TEACHER_KINDS:
            c.fail(f"{where}.kind", f"unknown kind {kind!r}{C.did_you_mean(str(kind), TEACHER_KINDS)} "
                                    f"(known: {', '.join(TEACHER_KINDS)})")
        if kind in ("checkpoint", "file") and not spec.get("path"):
            c.fail(f"{where}.path", f"required for kind {kind}")
        if kind == "file" and not _exists(spec["path"]):
            c.fail(f"{where}.path", f"{spec['path']}: file not found")
        c.number(spec, "folds", where, integer=True, low=1, nullable=False)
        c.number(spec, "seed", where, integer=True, low=0, nullable=False)
        c.number(spec, "num_layers", where, integer=True, low=1)
        c.choice(spec, "eval_scored_by", where, ("all", "first"))
        c.choice(spec, "outliers", where, ("error", "accept"))
        _check_file_teacher_keys(c, spec, where, kind)
        if kind in FINE_TUNED_KINDS:
            check_objective(spec.get("objective"), f"{where}.objective", c.source)
        elif "objective" in spec:
            c.fail(f"{where}.objective", "only a cross_encoder or fine_tuned teacher (fine-tuned here) takes an objective")
        if kind == "fine_tuned":
            from pile_jax.models.students import STUDENT_KINDS

            arch = spec.get("student")
            if not isinstance(arch, Mapping) or arch.get("kind") not in STUDENT_KINDS:
                c.fail(f"{where}.student", f"a fine_tuned teacher needs student: {{kind, ...}} with kind in "
                                           f"{', '.join(STUDENT_KINDS)}, got {arch!r}")
        elif "student" in spec:
            c.fail(f"{where}.student", "only a fine_tuned teacher takes a student architecture")
        if "train" in spec:
            check_train_section(spec["train"], f"{where}.train", c.source)
        if kind in ("biencoder_cosine", "checkpoint", "cross_encoder", "fine_tuned"):
            tm = dict(context["model"])
            extra = spec.get("model")
            if isinstance(extra, str):
                tm["base"] = extra
            elif extra is not None:
                tm.update(model_section(c, extra, f"{where}.model"))
            if kind == "checkpoint":
                tm["base"] = spec["path"]
            check_lengths(c, tm, f"{where}.model" if kind != "checkpoint" else where, base_key="base")
            check_layers(c, spec, "num_layers", where, tm.get("base", "all-MiniLM-L6-v2"))


def check_ensembles(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment (``run``, ``study``): the ``ensembles:`` section (standardisation, methods with
    their options, each tried once)."""
    from pile_jax.train.objective import check_ensemble

    ens = c.section(cfg.get("ensembles"), "ensembles", SECTION_KEYS["ensembles"])
    c.choice(ens, "standardize", "ensembles", C.STANDARDIZE)
    methods = ens.get("methods")
    if methods is None:
        return
    if not isinstance(methods, Mapping):
        c.fail("ensembles.methods", f"must map a display name to {{name, options}}, got {methods!r}")
    for display, spec in methods.items():
        if spec is not None and not isinstance(spec, Mapping):
            c.fail(f"ensembles.methods.{display}", f"must be a mapping {{name, options}}, got {spec!r}")
        opts = dict(spec or {})
        check_ensemble(opts.pop("name", display), opts, f"ensembles.methods.{display}", c.source)
