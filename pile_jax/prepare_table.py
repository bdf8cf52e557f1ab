"""The large-collection preparation of ``pile-jax train``: ``candidates: {from: teachers, eval_run: FILE}``.

No candidate lists, no BM25, no groups on disk: the teacher files *are* the training candidates.

1. Teacher table (:func:`teacher_table_for`): every ``teachers[i]`` (``kind: file`` with its
   ``format`` / ``transform``) is read once into :class:`~pile_jax.data.teacher_files.ScoreTriples`
   (int32 query / doc rows of the collection's stores, float32 scores) and the teachers are joined
   on (query, doc) into one CSR :class:`~pile_jax.data.teacher_table.TeacherTable` (a missing score
   is absent, never 0). Both are kept beside the prepared collection, in
   ``<collection store>/teachers/<key>/`` (``<out>/teacher_table/<key>/`` for a collection without
   an on-disk store), ``key`` = a digest of the teacher specs, each file's size + mtime and the
   query / doc stores' fingerprints: another run, seed or host re-reads nothing. Each teacher's
   triples are a finished chunk (``triples/<name>/``, written atomically); a SIGTERM while a file is
   read or the table is joined drops that chunk, keeps the finished ones and raises
   :class:`~pile_jax.data.errors.Preempted` (the CLI exits 75); the rerun continues from there.
   Process 0 writes, the others wait at a barrier and memory-map what it wrote.
2. Groups (:func:`table_group_source`): a :class:`~pile_jax.data.table_groups.TableGroupSource`
   over the table and the qrels of the train split; ``train_groups.size`` (default 8) documents
   per query, every positive + sampled others, drawn per (``train_groups.seed``, query, epoch).
   ``standardize: global`` (default) uses each teacher's mean / std of its present scores over the
   train queries' entries (:func:`~pile_jax.data.table_groups.table_stats`, kept beside the table).
3. Evaluation candidates (:func:`eval_candidates`): the eval split's queries (the first
   ``eval.max_queries`` when set) and their documents in the TREC run ``candidates.eval_run``, read
   streaming (:func:`~pile_jax.data.trec.read_run_queries`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

import numpy as np

from pile_jax import config as C
from pile_jax import io as pio

__all__ = ["teacher_table_for", "table_group_source", "eval_candidates", "table_folder", "DEFAULT_GROUP_SIZE"]

#: documents per training group with ``candidates: {from: teachers}`` unless ``train_groups.size``
DEFAULT_GROUP_SIZE = 8
_TRIPLE_FIELDS = ("query_rows", "doc_rows", "scores")


def _file_stamp(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _teacher_key(spec: Mapping[str, Any]) -> dict:
    """What decides one teacher's triples: the spec (minus the path) and its file's stamp."""
    return {"spec": {k: v for k, v in sorted(spec.items()) if k != "path"}, "file": _file_stamp(str(spec["path"]))}


def _fingerprint(store) -> str:
    fp = getattr(store, "fingerprint", None)
    if fp is not None:
        return str(fp)
    return hashlib.sha256(json.dumps(list(store), default=str).encode()).hexdigest()[:16]


def table_folder(coll, specs, *, out) -> str:
    """``<collection store>/teachers/<key>`` (or ``<out>/teacher_table/<key>``), see the module doc."""
    key = hashlib.sha256(json.dumps({"teachers": [_teacher_key(s) for s in specs],
                                     "queries": _fingerprint(coll.queries), "docs": _fingerprint(coll.docs)},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    store = getattr(coll.docs, "path", None)
    base = os.path.join(os.path.dirname(os.path.abspath(str(store))), "teachers") if store else \
        os.path.join(str(out), "teacher_table")
    return os.path.join(base, key)


def _save_atomic(folder: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` fills a fresh temporary folder, which then replaces ``folder`` (rename)."""
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_triples(spec, coll, folder: str, log) -> Any:
    """One teacher's triples: reused from ``folder`` when finished there, else read and saved."""
    from pile_jax.data.teacher_files import ScoreTriples, read_teacher_file

    if os.path.exists(os.path.join(folder, "done.json")):
        arrays = {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in _TRIPLE_FIELDS}
        return ScoreTriples(**arrays, source=str(spec["path"]))
    t0 = time.perf_counter()
    triples = read_teacher_file(spec["path"], format=spec.get("format", "tsv"), transform=spec.get("transform", "raw"),
                                queries=coll.queries, docs=coll.docs, outliers=spec.get("outliers", "error"),
                                allow_pickle=bool(spec.get("allow_pickle", False)))

    def write(tmp):
        for k in _TRIPLE_FIELDS:
            np.save(os.path.join(tmp, f"{k}.npy"), np.asarray(getattr(triples, k)))
        pio.write_json(os.path.join(tmp, "done.json"), {"teacher": spec["name"], "pairs": len(triples.scores),
                                                         "seconds": round(time.perf_counter() - t0, 1)})

    _save_atomic(folder, write)
    log(f"teacher {spec['name']}: {len(triples.scores)} scores read from {spec['path']} "
        f"({spec.get('format', 'tsv')}, {spec.get('transform', 'raw')}) in {time.perf_counter() - t0:.1f}s")
    return triples


def teacher_table_for(cfg: Mapping[str, Any], coll, *, out, log: Callable[[str], None] | None = None):
    """``(table, folder)``: the joined :class:`~pile_jax.data.teacher_table.TeacherTable` of
    ``cfg``'s teachers over ``coll`` (memory-mapped) and its folder; read and joined once and kept
    (module docstring, step 1)."""
    from pile_jax.data.errors import sigterm_stops
    from pile_jax.data.teacher_table import TeacherTable, join_teachers

    log = log or (lambda s: None)
    specs = [dict(s) for s in cfg.get("teachers") or []]
    folder = table_folder(coll, specs, out=out)
    table_dir = os.path.join(folder, "table")
    if pio.is_primary() and not os.path.exists(os.path.join(table_dir, "done.json")):
        os.makedirs(folder, exist_ok=True)
        pio.write_json(os.path.join(folder, "key.json"), {"teachers": [_teacher_key(s) for s in specs]})
        with sigterm_stops(f"teacher table in {folder} (finished teachers kept; rerun to continue)"):
            triples = [_read_triples(s, coll, os.path.join(folder, "triples", s["name"]), log) for s in specs]
            t0 = time.perf_counter()
            table = join_teachers([s["name"] for s in specs], triples)
            del triples

            def write(tmp):
                table.save(tmp)
                pio.write_json(os.path.join(tmp, "done.json"), {"queries": len(table.query_rows),
                                                                 "entries": len(table.doc_rows)})

            _save_atomic(table_dir, write)
        log(f"teacher table: {len(table.query_rows)} queries, {len(table.doc_rows)} (query, doc) entries, "
            f"teachers {table.names}; joined in {time.perf_counter() - t0:.1f}s -> {table_dir}")
    pio.barrier("teacher_table")
    return TeacherTable.load(table_dir, mmap=True), table_dir


def table_group_source(cfg: Mapping[str, Any], coll, table, train_qids, *, standardize: str = "global",
                       folder: str | None = None, log: Callable[[str], None] | None = None):
    """``(source, mu, sd)``: the :class:`~pile_jax.data.table_groups.TableGroupSource` of the train
    queries (module docstring, step 2) and the standardisation it applies (float64 ``[T]``; kept in
    ``folder/stats.json`` when a folder is given)."""
    from pile_jax.data.table_groups import TableGroupSource, table_stats

    log = log or (lambda s: None)
    T = len(table.names)
    mu, sd = np.zeros(T), np.ones(T)
    if standardize == "global" and T:
        mu, sd = _cached_stats(table, coll, train_qids, table_stats, folder)
    tg = cfg.get("train_groups") or {}
    source = TableGroupSource(table, qrels=coll.qrels, qids=train_qids, queries=coll.queries, docs=coll.docs,
                              group_size=int(tg.get("size", DEFAULT_GROUP_SIZE)), seed=int(tg.get("seed", 0)),
                              unjudged=C.get(cfg, "data.unjudged", "zero"), mu=mu, sd=sd)
    if not len(source):
        from pile_jax.data.errors import DataError

        raise DataError(str(cfg["teachers"][0]["path"]), None,
                        "no train query has a judged positive and another document scored by a teacher")
    log(f"train groups: {len(source)} queries of {len(train_qids)} (skipped without a positive and another "
        f"scored document: {source.skipped}), {source.n} documents each, teachers {list(table.names)}"
        + (f"; standardised (mu {np.round(mu, 4).tolist()}, sd {np.round(sd, 4).tolist()})"
           if standardize == "global" else ""))
    return source, mu, sd


def _cached_stats(table, coll, train_qids, table_stats, path):
    """:func:`table_stats` over the train queries' entries, kept in ``<path>/stats.json``."""
    qrows = np.asarray(coll.queries.rows(list(train_qids), missing="skip")) if hasattr(coll.queries, "rows") \
        else None
    if qrows is None:
        from pile_jax.data.table_groups import IdIndex

        qrows = IdIndex(list(coll.queries)).rows(list(train_qids), missing="skip")
    qrows = np.unique(qrows[qrows >= 0])
    digest = hashlib.sha256(qrows.tobytes()).hexdigest()[:16]
    stats_file = os.path.join(str(path), "stats.json") if path else None
    if stats_file and os.path.exists(stats_file):
        saved = pio.read_json(stats_file)
        if saved.get("train_queries") == digest:
            return np.asarray(saved["mu"], np.float64), np.asarray(saved["sd"], np.float64)
    mu, sd = table_stats(table, qrows)
    if stats_file and pio.is_primary():
        pio.write_json(stats_file, {"train_queries": digest, "mu": mu.tolist(), "sd": sd.tolist()})
    return mu, sd


def eval_candidates(cfg: Mapping[str, Any], coll, split: str) -> dict[str, np.ndarray]:
    """``{qid: doc ids}`` of the eval split's queries (first ``eval.max_queries``) in the run
    ``candidates.eval_run``, ranked; a query the run lacks gets an empty list (it scores 0)."""
    from pile_jax.data.trec import read_run_queries

    qids = list(coll.split_qids(split))
    limit = C.get(cfg, "eval.max_queries")
    if limit:
        qids = qids[:int(limit)]
    run = read_run_queries(C.require(cfg, "candidates.eval_run"), qids)
    return {q: run.get(q, np.zeros(0, np.str_)) for q in qids}
