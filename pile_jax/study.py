"""``pile-jax study``: a grid of (student architecture, objective) cells over seeds.

Two studies ship as configs:

* ``configs/study_uniform.yaml``: the uniform-architecture loss study (kd_papers.md B4, a
  reconstruction of Qin et al. 2023): a 2-layer MiniLM cross-encoder student and a fine-tuned
  6-layer MiniLM cross-encoder teacher; {hard-label pairwise on/off} x {soft family} x
  {intermediate-layer terms on/off}.
* ``configs/study_margin_mse.yaml``: Margin-MSE per student architecture (kd_papers.md A,
  Hofstaetter et al. 2020): cross_encoder, bert_dot, colbert, prett, tk, each with a single
  teacher (T1), the mean ensemble of the teachers (T2) and the no-KD baseline.

What happens (steps 1-3 are :func:`pile_jax.prepare.prepare`, as in the pipeline and ``train``):

1. BM25 candidates (``first_stage.depth``) for the train/dev/test queries of the collection.
2. Teacher score files ``<out>/teachers/<name>.tsv``: reused from ``teachers_from`` (a pipeline or
   study output folder, or a folder of score files, when they cover the study's candidates; a
   spec sidecar that differs is reported), or from ``<out>/teachers`` when their
   ``<name>.spec.json`` matches, else computed (cross-fitted fine-tuned MiniLM cross-encoders).
3. Ranking groups per split with every teacher's score (``ensembles.standardize``: ``none`` keeps
   the raw logits, as both papers do; ``global`` = the pipeline's per-teacher z-scores).
4. Cells = ``study.students`` x the product of the levels of ``study.factors``. A cell's
   objective is the deep merge of its levels (the :class:`~pile_jax.train.objective.Objective`
   schema) plus two study keys: ``teacher`` (``best`` = the best cross-encoder teacher on dev
   NDCG@10, a teacher name, or ``mean`` = the mean ensemble of all teachers; default
   ``study.teacher``) and ``intermediate`` (intermediate-layer terms: ``{hidden, attention,
   embedding}`` weights, ``layer_map``, ``attention_loss``; cross-encoder students only).
   The intermediate-layer teacher is the fine-tuned fold-0 model of the layer teacher
   (``<dir>/teacher_models/<name>_fold0/final_params.npz``, the 6-layer MiniLM CrossEncoder);
   when no such model exists it is fine-tuned here (one fold on all train queries, the
   pipeline's code path) and ``study.json`` says which was used.
5. Every cell x seed is trained with :func:`pile_jax.train.loop.train` on the train groups
   (TFDS ArrayRecord or in memory, ``study.train_source``), evaluated on the test split
   (trec_eval metrics), and written as a TREC run ``runs/<cell>__seed<k>.trec``.
6. Latency: scoring time of one query with ``study.latency.candidates`` BM25 candidates per
   student architecture (median over ``queries`` queries of the median of ``repeats`` calls,
   after a warm-up call per query, ``jax.block_until_ready``), on whatever device JAX uses.
7. ``study.json``, ``study.md`` (NDCG@10 / MRR mean +- std per cell over seeds, latency),
   ``study.png`` (NDCG@10 per cell; effectiveness vs latency).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import platform
import re
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio
from pile_jax.caches import BoundedCache
from pile_jax.report import jsonable as _jsonable
from pile_jax.report import save_figure
from pile_jax.prepare import prepare, ranking_groups_source, standardize_setting
from pile_jax.train.evaluate import mean_metrics, run_metrics

METRICS = ("ndcg_cut_10", "recip_rank", "map", "pnr", "pnr_pooled")
EXPORT_METRIC = "ndcg_cut_10"  # dev metric that picks each cell's exported seed

_log = logging.getLogger(__name__)
#: keys of a study cell that are not Objective fields
CELL_KEYS = ("teacher", "intermediate", "transfer")
#: study-only targets: global weights fit on the labelled training lists (``weighted_fit``), and
#: PILE on labelled lists carried to unlabelled ones as the teacher weights that best reproduce it
#: (``pile_carry``; see :func:`fit_targets`)
FITTED_TARGETS = ("weighted_fit", "pile_carry")


# ------------------------------------------------------------------------------------ cells
def expand_cells(study: Mapping[str, Any]) -> list[dict]:
    """``study.students`` x product of ``study.factors`` levels -> cells.

    Each cell: ``{"name", "slug", "student" (name), "student_spec", "levels" {factor: level},
    "objective" (merged levels, study keys included)}``. ``study.cells`` (optional list of names)
    keeps only those cells, in that order.
    """
    students = study.get("students") or {}
    if not students:
        raise C.ConfigError("study.students: at least one student is required")
    factors = study.get("factors") or {}
    for fname, levels in factors.items():
        if not isinstance(levels, Mapping) or not levels:
            raise C.ConfigError(f"study.factors.{fname}: must map level name -> objective fragment")
    common = study.get("common") or {}
    if not isinstance(common, Mapping):
        raise C.ConfigError("study.common: must be an objective fragment merged into every cell")
    cells = []
    names = list(factors)
    for sname, sspec in students.items():
        if not isinstance(sspec, Mapping) or "kind" not in sspec:
            raise C.ConfigError(f"study.students.{sname}: needs a 'kind'")
        for combo in itertools.product(*[list(factors[f]) for f in names]):
            obj: dict = copy.deepcopy(dict(common))
            for f, level in zip(names, combo):
                obj = C.deep_merge(obj, factors[f][level] or {})
            levels = {f: _level_name(l) for f, l in zip(names, combo)}
            name = sname + ("/" + ",".join(f"{f}={l}" for f, l in levels.items()) if levels else "")
            cells.append({"name": name, "slug": slugify(name), "student": sname, "student_spec": dict(sspec),
                          "levels": levels, "objective": obj})
    keep = study.get("cells")
    if keep:
        by_name = {c["name"]: c for c in cells}
        missing = [k for k in keep if k not in by_name]
        if missing:
            raise C.ConfigError(f"study.cells: unknown cell(s) {missing} (known: {list(by_name)})")
        cells = [by_name[k] for k in keep]
    for c in cells:
        if not (c["objective"].get("label_losses") or c["objective"].get("distill_losses")
                or c["objective"].get("intermediate")):
            raise C.ConfigError(f"study cell {c['name']}: no loss terms")
        if c["objective"].get("intermediate") and c["student_spec"]["kind"] != "cross_encoder":
            raise C.ConfigError(f"study cell {c['name']}: intermediate-layer terms need a cross_encoder student")
    return cells


def _level_name(level) -> str:
    # YAML 1.1 reads unquoted on/off/yes/no keys as booleans
    return {True: "on", False: "off"}.get(level, str(level)) if isinstance(level, bool) else str(level)


def slugify(name: str) -> str:
    s = name.replace("/", "__").replace(",", "_").replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


def resolve_objective(obj: Mapping[str, Any], *, teacher_names: list[str], best_teacher: str,
                      default_teacher: str = "best", fitted: Mapping[str, Any] | None = None,
                      ) -> tuple[dict, dict | None, str | None]:
    """Cell objective -> ``(Objective config, intermediate spec or None, teacher used or None)``.

    ``fitted``: ``{"weighted_fit": weights}`` (teacher ``weighted_fit`` becomes the
    ``weighted_mean`` ensemble with those weights); teacher ``pile_carry`` becomes a single
    precomputed target column (``teacher_index`` 0 of the cell's own groups)."""
    obj = copy.deepcopy(dict(obj))
    teacher = obj.pop("teacher", None)
    inter = obj.pop("intermediate", None)
    obj.pop("transfer", None)
    used = None
    if obj.get("distill_losses"):
        teacher = teacher or default_teacher
        if teacher == "best":
            teacher = best_teacher
        if teacher == "weighted_fit":
            if not fitted or "weighted_fit" not in fitted:
                raise C.ConfigError("teacher weighted_fit: the weights were not fitted")
            obj["target"] = "ensemble"
            obj["ensemble"] = {"name": "weighted_mean", "weights": [float(w) for w in fitted["weighted_fit"]]}
            used = f"weighted_fit({'+'.join(teacher_names)})"
        elif teacher == "pile_carry":
            obj.pop("ensemble", None)
            obj["target"] = "teacher"
            obj["teacher_index"] = 0
            used = f"pile_carry({'+'.join(teacher_names)})"
        elif teacher in teacher_names:
            obj["target"] = "teacher"
            obj["teacher_index"] = teacher_names.index(teacher)
            used = teacher
        else:  # an ensemble of all teachers: "mean", "pile", ... (pile_jax.ensemble names)
            obj.setdefault("target", "ensemble")
            obj["ensemble"] = C.deep_merge({"name": teacher}, obj.get("ensemble") or {}) \
                if isinstance(obj.get("ensemble"), Mapping) else {"name": teacher}
            used = f"{teacher}({'+'.join(teacher_names)})"
    if inter:
        inter = dict(inter)
        obj.setdefault("aux_losses", {})["intermediate"] = float(inter.pop("weight", 1.0))
    return obj, inter, used


# ---------------------------------------------------------------------------------- teachers
def _find_teacher_model(name: str, dirs: list) -> str | None:
    for d in dirs:
        d = pio.as_path(d)
        for base in (d / "teacher_models", d.parent / "teacher_models", d):
            p = base / f"{name}_fold0" / "final_params.npz"
            if p.is_file():
                return str(p)
    return None


def load_layer_teacher(spec, *, cfg, coll, candidates, splits, out, log) -> tuple[Any, Any, dict]:
    """``(CrossEncoder module, params, provenance)`` of a fine-tuned cross-encoder teacher for
    the intermediate-layer terms (fold-0 model if present, else fine-tuned here on all train
    queries with the pipeline's code path)."""
    from pile_jax.models import CrossEncoder, load_pretrained
    from pile_jax.params import load_params
    from pile_jax.prepare import train_cross_encoder_teacher

    if spec.get("kind") != "cross_encoder":
        raise C.ConfigError(f"study.layer_teacher: {spec['name']!r} is not a cross_encoder teacher")
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.update(spec.get("model", {}))
    num_layers = spec.get("num_layers", model_cfg.get("num_layers"))
    src = cfg.get("teachers_from")
    path = _find_teacher_model(spec["name"], ([src] if src else []) + [out])
    how = "fold-0 model of the cross-fitted teacher (trained on the other fold's train queries)"
    if path is None:
        log(f"layer teacher {spec['name']}: no fine-tuned fold model found; fine-tuning one on all train queries")
        one = dict(spec, folds=1)
        train_cross_encoder_teacher(one, cfg=cfg, coll=coll, candidates=candidates, fit_candidates=candidates,
                                    train_qids=splits["train"], score_qids=[], model_cfg=model_cfg,
                                    batch_size=int(cfg.get("score_batch_size", 64)),
                                    out_dir=str(pio.as_path(out) / "layer_teacher_models"), log=log)
        path = str(pio.as_path(out) / "layer_teacher_models" / f"{spec['name']}_fold0" / "final_params.npz")
        how = "fine-tuned here on all train queries (pipeline code path, 1 fold)"
    # a template for the fine-tuned params read next: its (new) head is overwritten, an expected step
    config, template = load_pretrained(model_cfg.get("base", "all-MiniLM-L6-v2"), num_layers=num_layers,
                                       dtype=model_cfg.get("dtype", "float32"), new_head=True)
    params = load_params(path, template)
    log(f"layer teacher {spec['name']}: {config.num_layers}-layer CrossEncoder from {path}")
    return CrossEncoder(config), params, {"name": spec["name"], "params": str(path),
                                          "num_layers": config.num_layers, "how": how}


# ---------------------------------------------------------------------------------- students
#: the intermediate-layer score function per (student score function, layer teacher, terms):
#: content keys (the teacher by its params file and depth, not ``id()`` of its params), so seeds
#: of a cell reuse one compiled step; owned here, at most 16 per process
INTER_FNS = BoundedCache("pile_jax.study", "intermediate_score_fns", maxsize=16)


def student_defaults(cfg: Mapping[str, Any]) -> dict:
    """The study's defaults for a student spec: the ``model:`` section over the study lengths
    (``PIPELINE_MAX_LENGTH``, ``PIPELINE_MAX_QUERY_LENGTH``, ``STUDY_MAX_DOC_LENGTH``)."""
    from pile_jax import rankers
    from pile_jax.models import tokenize as T

    return rankers.student_defaults(cfg.get("model"), max_length=T.PIPELINE_MAX_LENGTH,
                                    max_query_length=T.PIPELINE_MAX_QUERY_LENGTH, max_doc_length=T.STUDY_MAX_DOC_LENGTH)


def make_student(cell, *, cfg, seed: int, layer_teacher=None):
    """``(train ranker, eval ranker, to_eval_params)`` for a cell and seed (the student from the
    one factory, :func:`pile_jax.rankers.student_from_config`; with intermediate-layer terms the
    train ranker also holds the projections to the layer teacher's width)."""
    from pile_jax import layer_distill as LD
    from pile_jax import rankers
    from pile_jax.scoring import Ranker

    import jax

    ranker = rankers.student_from_config(cell["student_spec"], seed=seed, defaults=student_defaults(cfg))
    inter = cell["objective"].get("intermediate")
    if not inter:
        return ranker, ranker, lambda p: p
    t_module, t_params, t_prov = layer_teacher
    inter = {k: v for k, v in dict(inter).items() if k != "weight"}
    weights = {k: float(inter[k]) for k in ("hidden", "attention", "embedding") if k in inter}
    key = (ranker.score_fn, str(t_prov["params"]), int(t_prov["num_layers"]), tuple(sorted(weights.items())),
           str(inter.get("layer_map", "uniform")), inter.get("attention_loss", "kl"))
    score_fn = INTER_FNS.get_or_make(key, lambda: LD.make_intermediate_score_fn(
        ranker.meta["module"], t_module, t_params, layer_map=inter.get("layer_map", "uniform"),
        weights=weights, attention_loss=inter.get("attention_loss", "kl")))
    s_cfg, t_cfg = ranker.meta["module"].config, t_module.config
    proj = LD.init_projections(jax.random.PRNGKey(1000 + seed), s_cfg.hidden_size, t_cfg.hidden_size,
                               student_embedding_dim=s_cfg.embedding_size, teacher_embedding_dim=t_cfg.embedding_size)
    train_ranker = Ranker(params={"student": ranker.params, "projections": proj}, score_fn=score_fn,
                          featurize=ranker.featurize, kind=ranker.kind, meta=ranker.meta)
    return train_ranker, ranker, lambda p: p["student"]


# ----------------------------------------------------------------------------------- latency
def measure_latency(ranker, params, queries: list[str], docs: list[list[str]], *, repeats: int = 3) -> dict:
    """Scoring time of one query with its candidate list, ms: per query a warm-up call (compiles
    the shape), then the median of ``repeats`` timed calls (``jax.block_until_ready``); the
    summary is the median over queries. Featurisation (tokenisation) is timed apart."""
    import jax

    from pile_jax.train.loop import cached_scorer

    scorer = cached_scorer(ranker.score_fn)
    model_ms, feat_ms = [], []
    for q, ds in zip(queries, docs):
        t0 = time.perf_counter()
        feats = ranker.featurize([q], [ds])
        feat_ms.append((time.perf_counter() - t0) * 1e3)
        feats["mask"] = np.ones((1, len(ds)), bool)
        jax.block_until_ready(scorer(params, feats))
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            jax.block_until_ready(scorer(params, feats))
            times.append((time.perf_counter() - t0) * 1e3)
        model_ms.append(statistics.median(times))
    return {"ms_per_query": float(statistics.median(model_ms)), "ms_per_query_all": [round(x, 3) for x in model_ms],
            "featurize_ms": float(statistics.median(feat_ms)), "queries": len(queries),
            "candidates": len(docs[0]) if docs else 0, "repeats": int(repeats)}


def device_description() -> str:
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"{d.platform} ({os.cpu_count()} cores visible, {platform.processor() or platform.machine()})"
    return f"{d.platform} ({getattr(d, 'device_kind', '?')}) x{jax.device_count()}"


# ------------------------------------------------------------------------------------- study
def _subset(run: Mapping[str, Mapping[str, float]], qids) -> dict:
    return {q: dict(run.get(q, {})) for q in qids}


def _summary(vals: list[float]) -> dict:
    a = np.asarray(vals, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a)),
            "values": [float(x) for x in a]}


def fit_targets(cells: list[dict], train: Mapping[str, Any], transfer: Mapping[str, Any] | None,
                log: Callable[[str], None]) -> tuple[dict, dict, dict]:
    """The study-only targets (``FITTED_TARGETS``) of ``cells``, fit on the labelled training lists.

    * ``weighted_fit``: global teacher weights maximising the pooled label pair accuracy of the
      weighted mean on the training lists (:func:`pile_jax.ensemble_fit.fit_pair_accuracy_weights`).
    * ``pile_carry`` (beyond the paper: what PILE learns on labelled lists, carried to unlabelled
      ones): on a labelled list the target is the cell's PILE ensemble (``ensemble`` options, as
      in the train step); the teacher weights whose convex combination is nearest to that PILE
      target on the labelled lists (:func:`pile_jax.ensemble_fit.fit_mse_weights`) are the trust
      PILE put in each teacher, and on the transfer set's unlabelled lists (where PILE is the
      mean) the target is that weighted mean.

    Returns ``(fitted {"weighted_fit": w}, carried {cell name: {"train": [B, n], "transfer": [B', n]
    or None}}, info for study.json)``.
    """
    from pile_jax import ensemble as E
    from pile_jax import ensemble_fit as F

    wanted = {c["objective"].get("teacher") for c in cells}
    fitted, carried, info = {}, {}, {}
    ts = np.transpose(np.asarray(train["teacher_scores"], np.float64), (1, 0, 2))   # [T, B, n]
    mask = np.asarray(train["mask"], bool)
    lm = mask & np.asarray(train["label_mask"], bool)
    labels = np.where(lm, np.asarray(train["labels"], np.float64), 0.0)
    tw = None if train.get("teacher_mask") is None else np.transpose(np.asarray(train["teacher_mask"], bool), (1, 0, 2))
    absent = {} if tw is None else {"teacher_where": tw}   # absent scores: ignored, never 0
    if "weighted_fit" in wanted:
        w, acc = F.fit_pair_accuracy_weights(ts, labels, lm, **absent)
        fitted["weighted_fit"] = w
        info["weighted_fit"] = {"weights": w.tolist(), "train_pair_accuracy": acc,
                                "fit": "simplex grid, max pooled label pair accuracy on the training lists"}
        log(f"weighted_fit: weights {np.round(w, 3).tolist()} (training pair accuracy {acc:.4f})")
    for c in cells:
        if c["objective"].get("teacher") != "pile_carry":
            continue
        opts = dict(c["objective"].get("ensemble") or {})
        opts.pop("name", None)
        z = np.asarray(E.pile(ts.astype(np.float32), labels.astype(np.float32), where=mask, label_where=lm,
                              **absent, **opts), np.float64)
        has_pair = np.any(lm[:, :, None] & lm[:, None, :] & (labels[:, :, None] > labels[:, None, :]), axis=(1, 2))
        fit_where = mask & has_pair[:, None]
        w, mse = F.fit_mse_weights(ts, z, fit_where, **absent)
        carry_t = None
        if transfer is not None:
            tts = np.transpose(np.asarray(transfer["teacher_scores"], np.float64), (1, 0, 2))
            carry_t = np.where(np.asarray(transfer["mask"], bool), np.einsum("k,kbn->bn", w, tts), 0.0)
        carried[c["name"]] = {"train": z, "transfer": carry_t, "weights": w}
        info.setdefault("pile_carry", {})[c["name"]] = {
            "pile": opts, "weights": w.tolist(), "fit_mse": mse, "fit_lists": int(has_pair.sum()),
            "fit": "simplex grid, min squared error to the PILE target on the labelled training lists"}
        log(f"pile_carry ({c['name']}): trust weights {np.round(w, 3).tolist()} (mse to PILE {mse:.4f})")
    return fitted, carried, info


def single_column(groups: Mapping[str, Any], column: np.ndarray) -> dict:
    """``groups`` whose teacher axis holds one precomputed target column ``[B, n]``."""
    g = dict(groups)
    g["teacher_scores"] = np.asarray(column, np.float32)[:, None, :]
    g.pop("teacher_mask", None)   # the column has a value on every real item
    return g


def target_agreement(obj: Mapping[str, Any], groups: Mapping[str, Any], mean_acc: np.ndarray | None = None) -> dict:
    """A cell's training target (:func:`pile_jax.train.objective.resolve_target`, the train step's
    own function) on the labelled training lists against their labels: pooled pair accuracy,
    the mean over lists of the per-list pair accuracy, and lists where it is above / below the
    mean ensemble's (``mean_acc``, per list)."""
    from pile_jax import ensemble_fit as F
    from pile_jax import metrics as M
    from pile_jax.train.objective import resolve_target

    batch = {k: np.asarray(groups[k]) for k in ("teacher_scores", "labels", "label_mask", "mask", "teacher_mask")
             if groups.get(k) is not None}
    z = np.asarray(resolve_target(batch, obj), np.float64)
    lm = batch["mask"] & batch["label_mask"]
    labels = np.where(lm, batch["labels"], 0.0)
    per_list = np.asarray(M.pair_accuracy(z, labels, where=lm), np.float64)
    has = np.asarray(M.num_labelled_pairs(labels, where=lm)) > 0
    out = {"pair_accuracy_pooled": F.pooled_pair_accuracy(z, labels, lm),
           "pair_accuracy_mean_of_lists": float(per_list[has].mean()) if has.any() else float("nan"),
           "lists": int(has.sum()), "per_list": per_list}
    if mean_acc is not None:
        out["vs_mean"] = {"better": int(((per_list > mean_acc + 1e-9) & has).sum()),
                          "worse": int(((per_list < mean_acc - 1e-9) & has).sum())}
    return out


def add_significance(cell_out: dict, study: Mapping[str, Any], *, log: Callable[[str], None] = _log.info) -> dict | None:
    """Paired test over the evaluation queries of every cell against its reference cell (same
    student, first factor at level ``study.reference``), on the per-query NDCG@10 averaged over
    seeds, with Holm's correction across the tested cells; writes ``significance`` into each
    cell of ``cell_out`` (``{reference, test, p, p_holm, mean_diff, ...}``; the reference cell's
    ``p`` is null). No ``study.reference``: nothing (returns None)."""
    from pile_jax import significance as S

    ref_level = study.get("reference")
    if ref_level is None:
        return None
    test = str(study.get("test", "paired_t"))
    if test not in S.TESTS:
        raise C.ConfigError(f"study.test: unknown test {test!r} (known: {', '.join(S.TESTS)})")
    factor = next(iter(study.get("factors") or {}), None)
    pairs = {}
    for name, c in cell_out.items():
        ref = next((n for n, r in cell_out.items() if r["student"] == c["student"] and factor is not None
                    and r["levels"].get(factor) == str(ref_level)), None)
        if ref is None:   # a part of a study split over processes (study.cells): --merge tests the whole
            log(f"study.reference: no cell of student {c['student']!r} has {factor}={ref_level} here; "
                "no paired tests (run `pile-jax study --merge` over all parts)")
            return None
        pairs[name] = ref
    sig = S.against_reference({n: c["per_query"] for n, c in cell_out.items()}, pairs, test)
    raw = [n for n in pairs if pairs[n] != n]
    for name, s in sig.items():
        cell_out[name]["significance"] = s
        if s["p"] is not None:
            log(f"{name} vs {s['reference']}: NDCG@10 diff {s['mean_diff']:+.4f}, {test} p={s['p']:.4g}, "
                f"Holm p={s['p_holm']:.4g}")
    return {"reference_level": str(ref_level), "test": test, "metric": EXPORT_METRIC,
            "unit": "evaluation queries (per-query value: mean over seeds)", "correction": "holm",
            "family": sorted(raw)}


def label_free_ensembles(groups, teacher_names, fitted, carried, qrels, eval_qids, *, splits, eval_split) -> dict:
    """NDCG@10 etc. on the evaluation split of the ensembles that read no labels there: each
    teacher, the mean, the z-score mean, and the fitted global weights (``weighted_fit``,
    ``pile_carry``'s trust weights; fit on the training lists only)."""
    from pile_jax import ensemble as E
    from pile_jax.pipeline import groups_to_run
    from pile_jax.train.evaluate import mean_metrics, run_metrics

    g = groups[eval_split] if eval_split in groups else groups["test"]
    ts = np.transpose(np.asarray(g["teacher_scores"], np.float64), (1, 0, 2))
    mask = np.asarray(g["mask"], bool)
    systems = {"mean": np.asarray(E.mean(ts.astype(np.float32), where=mask), np.float64),
               "zscore_mean": np.asarray(E.zscore_mean(ts.astype(np.float32), where=mask), np.float64)}
    weights = {}
    if "weighted_fit" in fitted:
        weights["weighted_fit"] = np.asarray(fitted["weighted_fit"])
    for name, c in carried.items():
        weights[f"pile_carry_weights[{name}]"] = np.asarray(c["weights"])
    for name, w in weights.items():
        systems[name] = np.where(mask, np.einsum("k,kbn->bn", w, ts), 0.0)
    out = {}
    for name, z in systems.items():
        pq = run_metrics(groups_to_run(g, z), qrels, qids=eval_qids)
        out[name] = {"metrics": mean_metrics(pq), "per_query": {q: float(pq[q][EXPORT_METRIC]) for q in eval_qids},
                     **({"weights": weights[name].tolist()} if name in weights else {})}
    return out


def teacher_report_dev(dev: Mapping[str, Any], teacher_names, dev_teacher, fitted) -> dict:
    """Per teacher (and label-free ensemble) on the dev lists: NDCG@10 of the re-ranked BM25
    candidates (trec_eval, ``dev_teacher``), PNR and pair agreement with the labels
    (:func:`pile_jax.ensemble.teacher_report`)."""
    from pile_jax import ensemble as E

    ts = np.transpose(np.asarray(dev["teacher_scores"], np.float32), (1, 0, 2))
    ens = [("mean", "mean", {}), ("zscore_mean", "zscore_mean", {})]
    if "weighted_fit" in fitted:
        ens.append(("weighted_fit", "weighted_mean", {"weights": [float(w) for w in fitted["weighted_fit"]]}))
    rep = E.teacher_report(ts, np.asarray(dev["labels"]), where=np.asarray(dev["mask"]) & np.asarray(dev["label_mask"]),
                           teacher_names=teacher_names, ensembles=ens)
    out = {"num_evaluated_lists": rep["num_evaluated_lists"], "rows": {}}
    for kind in ("teachers", "ensembles"):
        for name, e in rep[kind].items():
            out["rows"][name] = {"kind": kind[:-1], "pnr": e["pnr"], "pnr_pooled": e["pnr_pooled"],
                                 "pair_accuracy": e["pair_accuracy"], "ndcg10_lists": e["ndcg"],
                                 **({"ndcg_cut_10_trec": dev_teacher[name]["ndcg_cut_10"]} if name in dev_teacher else {})}
    return out


def run_study(cfg: Mapping[str, Any], *, out: str, log: Callable[[str], None] | None = None) -> dict:
    """Runs the study of ``cfg`` (module docstring); returns the ``study.json`` content.

    Progress goes to the ``pile_jax`` logger (or ``log``) and to ``<out>/log.txt``; each cell's
    best seed (dev ``ndcg_cut_10``) is exported to ``<out>/models/<cell>/`` unless ``study.export``
    is false (:func:`pile_jax.rankers.export_ranker`)."""
    from pile_jax.logs import log_to_file

    with log_to_file(pio.as_path(out) / "log.txt"):
        return _run_study(cfg, out=out, log=log or _log.info)


def _run_study(cfg: Mapping[str, Any], *, out: str, log: Callable[[str], None]) -> dict:
    """The study, top to bottom: prepare (teachers, layer teacher) -> train groups -> the grid of
    cells x seeds -> export of each cell's best seed -> latency per student -> report."""
    t_start = time.perf_counter()
    out_path = pio.as_path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    st = _study_settings(cfg)
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {timings[name]}s")
        return result

    job = timed("prepare", _study_prepare, cfg, st, out, log)
    job.train_source = timed("groups", _study_train_source, st, job, out_path, log)
    grid = timed("grid", _grid, cfg, st, job, out_path, log)
    exported = _export_cells(grid, out_path, log) if st.export else {}
    pio.barrier("study_export")
    latency = timed("latency", _latency, st, job, grid, log)
    timings["total"] = round(time.perf_counter() - t_start, 1)
    results = _study_results(cfg, st, job, grid, latency, exported, timings)
    if pio.is_primary():
        pio.write_json(out_path / "study.json", _jsonable(results))
        write_study_report(results, grid.curves, out)
    pio.barrier("study_results")
    log(f"done in {timings['total']}s: {out_path / 'study.md'}")
    return results


def _study_settings(cfg) -> SimpleNamespace:
    """The ``study:`` section read once: cells, seeds, train source, standardisation, eval split."""
    study = dict(C.require(cfg, "study"))
    source_kind = study.get("train_source", "memory")
    if source_kind not in ("tfds", "memory"):
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: study.train_source must be tfds or memory")
    standardize = standardize_setting(cfg, "ensembles.standardize", "none")
    C.require(cfg, "teachers")
    return SimpleNamespace(study=study, cells=expand_cells(study), seeds=[int(s) for s in study.get("seeds", [0])],
                           source_kind=source_kind, standardize=standardize, export=bool(study.get("export", True)),
                           eval_split=C.get(cfg, "eval.split", "test"), bs=int(cfg.get("score_batch_size", 64)))


def _study_prepare(cfg, st, out, log) -> SimpleNamespace:
    """Data, first stage, teachers (reused from ``teachers_from`` or ``<out>/teachers``), groups;
    the best cross-encoder teacher on dev; the layer teacher when a cell has intermediate terms."""
    src = cfg.get("teachers_from")
    prep = prepare(cfg, out=out, log=log, standardize=st.standardize, reuse_from=[src] if src else [])
    coll, splits = prep.coll, prep.splits
    log(f"study {st.study.get('name', '')}: {coll.name}, " + ", ".join(f"{s} {len(q)}" for s, q in splits.items())
        + f" queries, depth {prep.depth}; {len(st.cells)} cells x {len(st.seeds)} seeds")
    names = list(prep.teachers)
    dev_teacher = {n: mean_metrics(run_metrics(_subset(prep.teachers[n], splits["dev"]), coll.qrels,
                                               qids=splits["dev"])) for n in names}
    specs = {s["name"]: s for s in cfg["teachers"]}
    ce = [n for n in names if specs[n].get("kind") == "cross_encoder"] or names
    best_teacher = max(ce, key=lambda n: dev_teacher[n]["ndcg_cut_10"])
    log(f"best cross-encoder teacher on dev: {best_teacher} (ndcg_cut_10 {dev_teacher[best_teacher]['ndcg_cut_10']:.4f})")
    layer_teacher = None
    if any(c["objective"].get("intermediate") for c in st.cells):
        lt = st.study.get("layer_teacher", "best")
        lt = best_teacher if lt == "best" else lt
        if lt not in specs:
            raise C.ConfigError(f"study.layer_teacher: unknown teacher {lt!r}")
        layer_teacher = load_layer_teacher(specs[lt], cfg=cfg, coll=coll, candidates=prep.candidates, splits=splits,
                                           out=out, log=log)
    return SimpleNamespace(prep=prep, coll=coll, splits=splits, candidates=prep.candidates, teacher_names=names,
                           dev_teacher=dev_teacher, best_teacher=best_teacher, layer_teacher=layer_teacher,
                           eval_qids=splits[st.eval_split])


def _study_train_source(st, job, out_path, log):
    """The train groups as a TFDS ArrayRecord source or an in-memory list of examples."""
    from pile_jax.data import iter_group_examples

    groups, names = job.prep.groups, job.teacher_names
    if st.source_kind == "tfds":
        source, _ = ranking_groups_source(
            groups["train"], out_path / "tfds", f"{job.coll.name}_n{groups['train']['labels'].shape[1]}_t{len(names)}")
    else:
        source = list(iter_group_examples(groups["train"]))
    log(f"train groups: {len(groups['train']['query_id'])} x {groups['train']['labels'].shape[1]} items "
        f"({st.source_kind}); teachers {names}; standardize={st.standardize}")
    return source


def _grid(cfg, st, job, out_path, log) -> SimpleNamespace:
    """Every cell trained over the seeds and evaluated; ``study.partial.json`` after each cell.

    Fitted targets (``weighted_fit``, ``pile_carry``: :func:`fit_targets`), the transfer set
    (a cell's ``transfer: true``) and ``study.offline_targets`` (each cell's target computed once
    by the train step's own :func:`~pile_jax.train.objective.resolve_target` and distilled as a
    single column, so every cell shares one compiled step) choose each cell's train source."""
    from pile_jax.data import iter_group_examples
    from pile_jax.prepare import concat_groups
    from pile_jax.train.objective import resolve_target

    grid = SimpleNamespace(runs={}, cells={}, curves={}, trained={}, best_seed={}, per_query={})
    groups, transfer = job.prep.groups, job.prep.transfer
    fitted, carried, grid.fit_info = fit_targets(st.cells, groups["train"], transfer, log)
    grid.fitted, grid.carried = fitted, carried
    if any(c["objective"].get("transfer") for c in st.cells) and transfer is None:
        raise C.ConfigError(f"{cfg.get('_source', 'config')}: a study cell sets transfer: true, but there is no "
                            "transfer set (set transfer.queries)")
    offline = bool(st.study.get("offline_targets", False))
    sources: dict = {}

    def as_source(g, name):
        if st.source_kind == "tfds":
            return ranking_groups_source(g, out_path / "tfds", name)[0]
        return list(iter_group_examples(g))

    def make_source(use_transfer: bool, carry):
        key = (bool(use_transfer), carry)
        if key == (False, None):
            return job.train_source
        if key not in sources:
            g = groups["train"] if carry is None else single_column(groups["train"], carried[carry]["train"])
            if use_transfer:
                g = concat_groups(g, transfer if carry is None else single_column(transfer, carried[carry]["transfer"]))
            sources[key] = as_source(g, f"{job.coll.name}_{'transfer' if use_transfer else 'train'}"
                                        + (f"_{slugify(carry)}" if carry else ""))
        return sources[key]

    def column(g, o):
        return np.asarray(resolve_target({k: np.asarray(g[k]) for k in
                                          ("teacher_scores", "labels", "label_mask", "mask", "teacher_mask")
                                          if g.get(k) is not None}, o))

    mean_acc = None
    if any(c["objective"].get("distill_losses") for c in st.cells):
        mean_acc = target_agreement({"distill_losses": {"margin_mse": 1.0}, "ensemble": {"name": "mean"}},
                                    groups["train"])["per_list"]
    for cell in st.cells:
        obj, inter, used = resolve_objective(cell["objective"], teacher_names=job.teacher_names,
                                             best_teacher=job.best_teacher,
                                             default_teacher=st.study.get("teacher", "best"), fitted=fitted)
        carry = cell["name"] if cell["name"] in carried else None
        use_transfer = bool(cell["objective"].get("transfer"))
        source = make_source(use_transfer, carry)
        extra: dict = {"transfer": use_transfer}
        if obj.get("distill_losses"):
            agree = target_agreement(obj, groups["train"] if carry is None
                                     else single_column(groups["train"], carried[carry]["train"]), mean_acc)
            extra["target_train_agreement"] = {k: v for k, v in agree.items() if k != "per_list"}
            if offline:
                extra.update(target_objective=copy.deepcopy(obj), offline_target=True)
                if carry is None:
                    g = single_column(groups["train"], column(groups["train"], obj))
                    if use_transfer:
                        g = concat_groups(g, single_column(transfer, column(transfer, obj)))
                    source = as_source(g, f"{job.coll.name}_{cell['slug']}_target")
                obj = {k: v for k, v in obj.items() if k not in ("ensemble", "target", "teacher_index")}
                obj.update(target="teacher", teacher_index=0)
        files, secs = [], []
        for seed in st.seeds:
            t1 = time.perf_counter()
            files.append(_cell_seed(cfg, st, job, grid, cell, obj, seed, out_path, log, source=source))
            secs.append(time.perf_counter() - t1)
            log(f"{cell['name']} seed {seed}: " + " ".join(f"{k}={grid.runs[files[-1]][k]:.4f}" for k in METRICS)
                + f" ({secs[-1]:.1f}s)")
        grid.cells[cell["name"]] = {
            "student": cell["student"], "kind": cell["student_spec"]["kind"], "levels": cell["levels"],
            "objective": obj, "intermediate": inter, "teacher": used, "runs": files, **extra,
            "metrics": {m: _summary([grid.runs[f][m] for f in files]) for m in METRICS},
            "per_query": {q: float(np.mean(v)) for q, v in grid.per_query[cell["name"]].items()},
            "train_seconds": _summary(secs),
        }
        if pio.is_primary():  # progress, if the grid is cut short
            pio.write_json(out_path / "study.partial.json",
                           _jsonable({"cells": grid.cells, "runs": grid.runs, "best_teacher": job.best_teacher}))
    grid.significance = add_significance(grid.cells, st.study, log=log)
    return grid


def _cell_seed(cfg, st, job, grid, cell, obj, seed: int, out_path, log, *, source=None) -> str:
    """One cell and seed: train (on ``source``, default the train groups; with dev selection when
    ``study.select_on_dev``), score the eval split (run file ``runs/<cell>__seed<k>.trec``, metrics,
    per-query NDCG@10), keep the best seed for export (by the dev metric; one seed: no choice, no
    dev scoring); returns the run file's path relative to the output folder."""
    from pile_jax.data import write_run
    from pile_jax.train.loop import score_candidates, train

    coll, splits = job.coll, job.splits
    train_ranker, eval_ranker, to_eval = make_student(cell, cfg=cfg, seed=seed, layer_teacher=job.layer_teacher)
    dev_cands = {q: job.candidates[q] for q in splits["dev"]}
    dev_eval = None
    if st.study.get("select_on_dev", False):   # dev NDCG@10 every eval_every steps; the best params are kept
        def dev_eval(p):
            r = score_candidates(eval_ranker, to_eval(p), dev_cands, coll.queries, coll.docs, batch_size=st.bs)
            return mean_metrics(run_metrics(r, coll.qrels, qids=splits["dev"]))
    result = train(train_ranker, source=job.train_source if source is None else source, objective=obj,
                   queries=coll.queries, docs=coll.docs, config=dict(st.study.get("train", {}), seed=seed),
                   workdir=str(out_path / "students" / f"{cell['slug']}__seed{seed}"), evaluate=dev_eval, log=log)
    params = to_eval(result.params)
    eval_cands = {q: job.candidates[q] for q in job.eval_qids}
    run_ = score_candidates(eval_ranker, params, eval_cands, coll.queries, coll.docs, batch_size=st.bs)
    fname = f"runs/{cell['slug']}__seed{seed}.trec"
    if pio.is_primary():
        write_run(out_path / fname, _subset(run_, job.eval_qids), tag=cell["slug"])
    pq = run_metrics(_subset(run_, job.eval_qids), coll.qrels, qids=job.eval_qids)
    for q in job.eval_qids:
        grid.per_query.setdefault(cell["name"], {}).setdefault(q, []).append(float(pq[q][EXPORT_METRIC]))
    grid.runs[fname] = mean_metrics(pq)
    grid.curves.setdefault(cell["name"], []).append([(h["step"], h["loss"]) for h in result.history if "loss" in h])
    grid.trained.setdefault(cell["student"], (eval_ranker, params))
    if st.export:
        dev = None
        if len(st.seeds) > 1:
            dev_run = score_candidates(eval_ranker, params, dev_cands, coll.queries, coll.docs, batch_size=st.bs)
            dev = mean_metrics(run_metrics(dev_run, coll.qrels, qids=splits["dev"]))[EXPORT_METRIC]
        if cell["slug"] not in grid.best_seed or (dev is not None and dev > grid.best_seed[cell["slug"]][0]):
            grid.best_seed[cell["slug"]] = (dev, seed, eval_ranker, params, {
                "name": f"{cell['name']} (seed {seed})", "teachers": job.teacher_names, "objective": obj,
                "data": f"{coll.name} train queries", "metrics": grid.runs[fname], "metrics_split": st.eval_split,
                **({"dev_" + EXPORT_METRIC: dev} if dev is not None else {})})
    return fname


def _export_cells(grid, out_path, log) -> dict:
    """Each cell's best seed -> ``<out>/models/<cell>/`` (process 0)."""
    exported = {}
    if not pio.is_primary():
        return exported
    from pile_jax.rankers import export_ranker

    for slug, (dev, seed, ranker, params, card) in grid.best_seed.items():
        path = out_path / "models" / slug
        export_ranker(ranker, params, str(path), card=card)
        exported[slug] = {"path": str(path), "seed": seed, "dev_" + EXPORT_METRIC: dev}
        log(f"{slug}: exported seed {seed} -> {path}")
    return exported


def _latency(st, job, grid, log) -> dict:
    """Scoring latency per student architecture (its first trained cell) on BM25 candidate lists
    of the first test queries (:func:`measure_latency`)."""
    from pile_jax.bm25 import bm25_search

    lat_cfg = dict(st.study.get("latency") or {})
    latency: dict[str, dict] = {}
    if not lat_cfg.get("enabled", True):
        return latency
    coll = job.coll
    nq = int(lat_cfg.get("queries", 5))
    ncand = int(lat_cfg.get("candidates", 100))
    lqids = job.splits["test"][:nq]
    lrun = bm25_search(coll.docs, {q: coll.queries[q] for q in lqids}, depth=ncand)
    lq = [coll.queries[q] for q in lqids]
    ld = [[coll.docs[d] for d in lrun[q]] for q in lqids]
    for sname, (ranker, params) in grid.trained.items():
        latency[sname] = measure_latency(ranker, params, lq, ld, repeats=int(lat_cfg.get("repeats", 3)))
        log(f"latency {sname}: {latency[sname]['ms_per_query']:.1f} ms/query ({ncand} candidates; "
            f"tokenisation {latency[sname]['featurize_ms']:.1f} ms)")
    return latency


def _study_results(cfg, st, job, grid, latency, exported, timings) -> dict:
    """The ``study.json`` content."""
    prep, qrels, eval_qids = job.prep, job.coll.qrels, job.eval_qids
    groups = prep.groups
    return {
        "study": st.study.get("name", ""),
        "collection": job.coll.name,
        "eval_split": st.eval_split,
        "eval_queries": len(eval_qids),
        "train_groups": int(len(groups["train"]["query_id"])),
        "group_size": int(groups["train"]["labels"].shape[1]),
        "depth": prep.depth,
        "seeds": st.seeds,
        "teachers": job.teacher_names,
        "teacher_provenance": prep.provenance,
        "teacher_dev": job.dev_teacher,
        "teacher_test": {n: mean_metrics(run_metrics(_subset(prep.teachers[n], eval_qids), qrels, qids=eval_qids))
                         for n in job.teacher_names},
        "bm25_test": mean_metrics(run_metrics(_subset(prep.ranked, eval_qids), qrels, qids=eval_qids)),
        "best_teacher": job.best_teacher,
        "layer_teacher": job.layer_teacher[2] if job.layer_teacher else None,
        "standardize": st.standardize,
        "fitted_targets": grid.fit_info,
        "significance": grid.significance,
        "label_free_ensembles_test": label_free_ensembles(groups, job.teacher_names, grid.fitted, grid.carried, qrels,
                                                          eval_qids, splits=job.splits, eval_split=st.eval_split),
        "teacher_report_dev": teacher_report_dev(groups["dev"], job.teacher_names, job.dev_teacher, grid.fitted),
        "cells": grid.cells,
        "runs": grid.runs,
        "latency": latency,
        "device": device_description(),
        "timings_s": timings,
        "exported_models": exported,
        "config": {k: v for k, v in cfg.items() if not k.startswith("_")},
    }


def merge_studies(parts: list[str], out: str, *, log: Callable[[str], None] = _log.info) -> dict:
    """One study from several output folders of the same config run on disjoint ``study.cells``
    (e.g. two processes side by side): cells, runs and per-query values are combined, the run
    files copied to ``<out>/runs``, and the paired tests and Holm's correction recomputed over
    the whole family. Every part must share the collection, evaluation queries, teachers and
    seeds; a cell in two parts is an error."""
    import shutil

    res = [pio.read_json(pio.as_path(p) / "study.json") for p in parts]
    base = copy.deepcopy(res[0])
    for key in ("collection", "eval_queries", "teachers", "seeds", "eval_split"):
        if any(r[key] != base[key] for r in res[1:]):
            raise ValueError(f"merge_studies: the parts differ in {key!r}")
    out_path = pio.as_path(out)
    (out_path / "runs").mkdir(parents=True, exist_ok=True)
    cells, runs = {}, {}
    for p, r in zip(parts, res):
        for name, c in r["cells"].items():
            if name in cells:
                raise ValueError(f"merge_studies: cell {name!r} is in two parts")
            cells[name] = c
            for f in c["runs"]:
                shutil.copyfile(pio.as_path(p) / f, out_path / f)
        runs.update(r["runs"])
    cfg = base.get("config") or {}
    study = dict(cfg.get("study") or {})
    study.pop("cells", None)   # each part kept its own subset
    order = [c["name"] for c in expand_cells(study)] if study.get("students") else list(cells)
    cells = {n: cells[n] for n in order if n in cells}
    base.update(cells=cells, runs=runs, merged_from=[str(p) for p in parts])
    base["significance"] = add_significance(base["cells"], study, log=log)
    base["timings_s"] = {f"part{i}": r["timings_s"] for i, r in enumerate(res)}
    pio.write_json(out_path / "study.json", _jsonable(base))
    write_study_report(base, {}, out)
    return base


# ------------------------------------------------------------------------------------ report
def _pm(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}" if stat["n"] > 1 else f"{stat['mean']:.4f}"


def markdown_table(results: Mapping[str, Any]) -> str:
    cells = results["cells"]
    factors = list(next(iter(cells.values()))["levels"]) if cells else []
    head = ["cell", "student", *factors, "seeds", "NDCG@10", "MRR", "latency ms/query"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in cells.items():
        lat = results["latency"].get(c["student"])
        lat_s = f"{lat['ms_per_query']:.1f}" if lat else "n/a"
        row = [name, f"{c['student']} ({c['kind']})", *[c["levels"][f] for f in factors],
               str(c["metrics"]["ndcg_cut_10"]["n"]), _pm(c["metrics"]["ndcg_cut_10"]),
               _pm(c["metrics"]["recip_rank"]), lat_s]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _f(x, fmt=".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def significance_table(results: Mapping[str, Any]) -> str:
    """Per cell: NDCG@10 mean ± sd over seeds, difference to the reference, p and Holm p, and
    the training target's agreement with the labels of the training lists."""
    cells = results["cells"]
    head = ["system", "transfer set", "seeds", "NDCG@10", "Δ vs ref", "p", "Holm p",
            "target pair acc. (train, pooled)", "target vs mean (better/worse lists)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, c in cells.items():
        s = c.get("significance") or {}
        a = c.get("target_train_agreement") or {}
        vs = a.get("vs_mean")
        diff = None
        if s.get("reference") and s["reference"] != name:
            diff = c["metrics"]["ndcg_cut_10"]["mean"] - cells[s["reference"]]["metrics"]["ndcg_cut_10"]["mean"]
        lines.append("| " + " | ".join([
            name + (" (reference)" if s.get("reference") == name else ""), "yes" if c.get("transfer") else "no",
            str(c["metrics"]["ndcg_cut_10"]["n"]), _pm(c["metrics"]["ndcg_cut_10"]),
            "" if diff is None else f"{diff:+.4f}", _f(s.get("p"), ".3g") if s.get("p") is not None else "",
            _f(s.get("p_holm"), ".3g") if s.get("p_holm") is not None else "",
            _f(a.get("pair_accuracy_pooled")), f"{vs['better']}/{vs['worse']}" if vs else ""]) + " |")
    return "\n".join(lines)


def write_study_report(results: Mapping[str, Any], curves: Mapping[str, list], out: str) -> None:
    """``study.md`` (the table + context) and ``study.png``."""
    ref = [f"BM25 NDCG@10 {results['bm25_test']['ndcg_cut_10']:.4f} / MRR {results['bm25_test']['recip_rank']:.4f}"]
    for n, m in results["teacher_test"].items():
        ref.append(f"teacher {n} NDCG@10 {m['ndcg_cut_10']:.4f} / MRR {m['recip_rank']:.4f}")
    lat = next(iter(results["latency"].values()), None)
    md = [f"# pile_jax study {results['study']}: {results['collection']} "
          f"({results['eval_split']}, {results['eval_queries']} queries)", "",
          markdown_table(results), "",
          "NDCG@10 = trec_eval ndcg_cut_10, MRR = recip_rank; mean ± sample std over seeds "
          f"{results['seeds']}. Run files: `runs/<cell>__seed<k>.trec`.",
          "Reference (same test queries, re-ranking depth "
          f"{results['depth']}): " + "; ".join(ref) + ".",
          f"Teachers: {', '.join(results['teachers'])}; best cross-encoder teacher on dev: {results['best_teacher']}; "
          f"teacher scores standardize={results['standardize']}."]
    if results.get("layer_teacher"):
        lt = results["layer_teacher"]
        md.append(f"Intermediate-layer teacher: {lt['name']}, {lt['num_layers']}-layer CrossEncoder, {lt['how']}.")
    if lat:
        md.append(f"Latency: model time to score one query with {lat['candidates']} BM25 candidates (median over "
                  f"{lat['queries']} test queries of the median of {lat['repeats']} calls after warm-up, no "
                  f"document caching, tokenisation excluded) on {results['device']}.")
    if results.get("significance"):
        sig = results["significance"]
        md += ["", f"## Against the reference ({sig['reference_level']})", "",
               f"Paired {sig['test']} test over the {results['eval_queries']} {results['eval_split']} queries "
               "(per-query NDCG@10 averaged over seeds), Holm-corrected across the tested systems. Target pair "
               "accuracy: the training target (the train step's own function) against the labels of the labelled "
               "training lists; better/worse: lists where its pair accuracy is above/below the mean ensemble's.", "",
               significance_table(results)]
    if results.get("label_free_ensembles_test"):
        md += ["", "## Ensembles that read no labels, as systems on the evaluation split", "",
               "| ensemble | weights | NDCG@10 | MRR |", "|---|---|---:|---:|"]
        for n, e in results["label_free_ensembles_test"].items():
            w = e.get("weights")
            md.append(f"| {n} | {'' if w is None else ', '.join(f'{x:.2f}' for x in w)} | "
                      f"{e['metrics']['ndcg_cut_10']:.4f} | {e['metrics']['recip_rank']:.4f} |")
    if results.get("teacher_report_dev"):
        rep = results["teacher_report_dev"]
        md += ["", f"## Teacher report on dev ({rep['num_evaluated_lists']} lists with a labelled pair)", "",
               "| name | kind | NDCG@10 (trec_eval) | PNR (mean of lists) | PNR (pooled) | pair acc. |",
               "|---|---|---:|---:|---:|---:|"]
        for n, r in rep["rows"].items():
            md.append(f"| {n} | {r['kind']} | {_f(r.get('ndcg_cut_10_trec'))} | {r['pnr']:.3f} | "
                      f"{r['pnr_pooled']:.3f} | {r['pair_accuracy']:.4f} |")
    if results.get("fitted_targets"):
        md += ["", "Fitted targets: `" + json.dumps(_jsonable(results["fitted_targets"])) + "`"]
    md.append(f"Train groups: {results['train_groups']} x {results['group_size']} items. Timings (s): {results['timings_s']}.")
    pio.write_text(pio.as_path(out) / "study.md", "\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    names = list(cells)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, max(4.5, 0.32 * len(names) + 1.5)))
    means = np.array([cells[n]["metrics"]["ndcg_cut_10"]["mean"] for n in names])
    stds = np.array([cells[n]["metrics"]["ndcg_cut_10"]["std"] for n in names])
    y = np.arange(len(names))
    students = sorted({cells[n]["student"] for n in names})
    ax1.barh(y, means, xerr=stds, color=[f"C{students.index(cells[n]['student']) % 10}" for n in names])
    for n, m in results["teacher_test"].items():
        ax1.axvline(m["ndcg_cut_10"], color="k", ls="--", lw=0.8)
    ax1.axvline(results["bm25_test"]["ndcg_cut_10"], color="grey", ls=":", lw=0.8)
    ax1.set_yticks(y, names, fontsize=6)
    ax1.invert_yaxis()
    ax1.set_xlabel("NDCG@10 (mean ± std over seeds; dashed: teachers, dotted: BM25)")
    ax1.set_title(f"{results['study']}: {results['collection']} {results['eval_split']}")
    if results["latency"]:
        for n in names:
            c = cells[n]
            lat = results["latency"].get(c["student"])
            if lat:
                i = students.index(c["student"])
                ax2.errorbar(lat["ms_per_query"], c["metrics"]["ndcg_cut_10"]["mean"],
                             yerr=c["metrics"]["ndcg_cut_10"]["std"], fmt="o", color=f"C{i % 10}", alpha=0.8)
                ax2.annotate(",".join(str(v) for v in c["levels"].values()) or c["student"],
                             (lat["ms_per_query"], c["metrics"]["ndcg_cut_10"]["mean"]), fontsize=6)
        for i, s in enumerate(students):
            ax2.plot([], [], "o", color=f"C{i % 10}", label=s)
        ax2.set_xscale("log")
        ax2.legend(fontsize=7)
        ax2.set_xlabel(f"ms per query ({results['device']})")
        ax2.set_ylabel("NDCG@10")
        ax2.set_title("effectiveness vs latency")
    else:
        for name, rs in curves.items():
            for k, curve in enumerate(rs):
                if curve:
                    steps, losses = zip(*curve)
                    ax2.plot(steps, losses, alpha=0.6, label=name if k == 0 else None)
        ax2.set_title("training loss")
    fig.tight_layout()
    save_figure(fig, pio.as_path(out) / "study.png")


# ------------------------------------------------------------------------------ schema
#: the top-level sections of a ``pile-jax study`` config
CONFIG_KEYS = ("data", "first_stage", "candidates", "train_groups", "model", "score_batch_size", "teachers",
               "teachers_from", "teacher_train", "ensembles", "study", "eval", "transfer")
STUDY_KEYS = ("name", "train_source", "seeds", "teacher", "layer_teacher", "students", "factors", "cells", "train",
              "latency", "export", "common", "select_on_dev", "reference", "test", "offline_targets")
LATENCY_KEYS = ("enabled", "queries", "candidates", "repeats")
#: a study student's keys besides its kind's options (:func:`pile_jax.rankers.student_options`)
STUDENT_SPEC_KEYS = ("kind", "base", "max_length", "max_query_length", "max_doc_length", "dtype", "num_layers", "remat")


def check_study(c: C.Checker, cfg: Mapping[str, Any], context: dict) -> None:
    """Fragment: the ``study:`` section (students and their options, factors, cells and their
    objectives, latency, seeds, train section, teachers named by ``teacher`` / ``layer_teacher``)."""
    from pile_jax.models.tokenize import check_lengths
    from pile_jax.rankers import check_layers, check_student_options, student_options
    from pile_jax.train.loop import check_train_section
    from pile_jax.train.objective import check_objective

    teacher_names = context["teacher_names"]
    from pile_jax.models.students import STUDENT_KINDS

    study = c.section(cfg.get("study"), "study", STUDY_KEYS, required=True)
    c.choice(study, "train_source", "study", ("tfds", "memory"))
    c.choice(study, "test", "study", ("paired_t", "permutation"))
    C.check_seeds(c, study, "study")
    if "train" in study:
        check_train_section(study["train"], "study.train", c.source)
    lat = c.section(study.get("latency"), "study.latency", LATENCY_KEYS)
    for k in ("queries", "candidates", "repeats"):
        c.number(lat, k, "study.latency", integer=True, low=1, nullable=False)
    students = study.get("students")
    if not isinstance(students, Mapping) or not students:
        c.fail("study.students", "required: a mapping of student name -> {kind, ...}")
    model = dict(cfg.get("model") or {})
    for sname, spec in students.items():
        where = f"study.students.{sname}"
        if not isinstance(spec, Mapping):
            c.fail(where, f"must be a mapping {{kind, ...}}, got {spec!r}")
        if spec.get("kind") not in STUDENT_KINDS:
            c.fail(f"{where}.kind", f"unknown student {spec.get('kind')!r}"
                                    f"{C.did_you_mean(str(spec.get('kind')), STUDENT_KINDS)} "
                                    f"(known: {', '.join(STUDENT_KINDS)})")
        c.keys(spec, where, STUDENT_SPEC_KEYS + student_options().get(spec["kind"], ()))
        sbase = spec.get("base", model.get("base", "all-MiniLM-L6-v2"))
        check_layers(c, spec, "num_layers", where, sbase)
        check_student_options(c, spec["kind"], {k: v for k, v in spec.items()
                                                if k in student_options().get(spec["kind"], ())}, where, base=sbase,
                              num_layers=spec.get("num_layers"))
        if spec["kind"] == "cross_encoder":
            check_lengths(c, {**model, **{k: v for k, v in spec.items() if k != "kind"}}, where)
    for key in ("teacher", "layer_teacher"):
        t = study.get(key)
        if key == "layer_teacher" and t is not None and t != "best" and t not in teacher_names:
            c.fail(f"study.{key}", f"unknown teacher {t!r}{C.did_you_mean(str(t), teacher_names)}")
    try:
        cells = expand_cells(study)
    except C.ConfigError as e:
        raise C.ConfigError(f"{c.source}: {e}") from None
    best = teacher_names[0] if teacher_names else "best"
    for cell in cells:
        obj, _, _ = resolve_objective(cell["objective"], teacher_names=teacher_names, best_teacher=best,
                                      default_teacher=study.get("teacher", "best"),
                                      # placeholder weights, shaped for check_objective's 2-teacher trial
                                      fitted={"weighted_fit": [1.0, 1.0]})
        check_objective(obj, f"study cell {cell['name']}", c.source)


def schema() -> C.JobSchema:
    """The config schema of ``pile-jax study``."""
    from pile_jax import prepare as P

    return C.JobSchema("study", CONFIG_KEYS, (P.check_inputs, P.check_model, P.check_teachers, P.check_ensembles,
                                              check_study))
