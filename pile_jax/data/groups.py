"""Ranking groups: per query, a fixed-size list of candidates with graded labels and every
teacher's score.

A *groups* dict (what :func:`build_groups` returns, G groups of size n, T teachers)::

    query_id        list[str]           [G]
    doc_ids         np.str_  [G, n]     "" for padding
    labels          float32  [G, n]     grade from qrels (negative -> 0); unjudged -> 0; padding 0
    label_mask      bool     [G, n]     item takes part in label terms (False for padding,
                                        and for unjudged items when unjudged="ignore")
    mask            bool     [G, n]     real (non-padding) item
    teacher_scores  float32  [G, T, n]  padding 0 (never NaN); 0 where absent (never read there)
    teacher_names   list[str]           [T], the order of the T axis
    teacher_mask    bool     [G, T, n]  optional: teacher t scored item i. False = the score is
                                        **absent** (not 0): every ensemble, the teacher statistics
                                        and the distillation loss ignore it. Missing key = every
                                        real item scored by every teacher (``mask`` broadcast),
                                        so groups without it keep working (:func:`teacher_mask_of`).

Policies
--------
* Candidate order is the first-stage rank order (the order of the candidate list); padding goes
  at the end.
* Unjudged documents (not in the qrels of the query): ``unjudged="zero"`` (default) gives them
  label 0 with ``label_mask`` True, the usual "unjudged = non-relevant" convention;
  ``unjudged="ignore"`` sets ``label_mask`` False so they take part in no label pair (their
  teacher scores still count for distillation, ``mask`` stays True).
* Selection (``policy``, see :func:`select_candidates`): ``"top"`` takes the top-n candidates
  by first-stage rank (use it for evaluation and for the default training set);
  ``"positives_top"`` / ``"positives_sampled"`` keep every judged-relevant candidate and fill
  the rest by first-stage rank / by seeded sampling (training).
* Skips (counted in the returned stats, never raised): a query with no candidates
  (``skipped_no_candidates``); with ``require_label_pair=True`` (default) a group with no two
  label-masked items of different labels, e.g. no relevant document retrieved
  (``skipped_no_label_pair``). With ``require_label_pair=False`` such groups are kept
  (distillation-only training).
* A candidate kept in a group without a score from some teacher raises :class:`DataError`
  naming the teacher (and its file when ``teacher_sources`` is given), the query and the doc --
  unless ``missing_scores="absent"``: then the score is absent (``teacher_mask`` False).
"""

from __future__ import annotations

import math
import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np

from pile_jax.data.errors import DataError

__all__ = [
    "POLICIES",
    "select_candidates",
    "build_groups",
    "check_groups",
    "num_groups",
    "take_groups",
    "iter_group_examples",
    "stack_group_examples",
    "teacher_mask_of",
]

POLICIES = ("top", "positives_top", "positives_sampled")
GROUP_ARRAY_KEYS = ("doc_ids", "labels", "label_mask", "mask", "teacher_scores")
#: optional group arrays (carried when present)
OPTIONAL_ARRAY_KEYS = ("teacher_mask",)
MISSING_SCORES = ("error", "absent")


def teacher_mask_of(groups: Mapping) -> np.ndarray:
    """bool ``[G, T, n]``: which teacher scores are present -- ``teacher_mask & mask`` when the
    groups (or a batch) have one, else ``mask`` broadcast over the teachers (all present)."""
    mask = np.asarray(groups["mask"], bool)
    shape = np.shape(groups["teacher_scores"])
    if groups.get("teacher_mask") is None:
        return np.broadcast_to(mask[:, None, :], shape).copy()
    return np.asarray(groups["teacher_mask"], bool) & mask[:, None, :]


def _query_rng(seed: int, qid: str) -> np.random.Generator:
    """A generator that depends only on (seed, qid): stable across runs, machines and query order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(qid.encode("utf-8"))])


def select_candidates(
    candidates: Sequence[str],
    judged: Mapping[str, int],
    n: int,
    *,
    policy: str = "top",
    seed: int = 0,
    qid: str = "",
) -> list[str]:
    """Pick at most ``n`` of ``candidates`` (given in first-stage rank order); returned in that order.

    * ``"top"``: the first ``n``.
    * ``"positives_top"``: every candidate with grade > 0 in ``judged`` (if there are more than
      ``n``: highest grade first, then best rank), the remaining slots filled with the other
      candidates in first-stage rank order (judged-0 and unjudged alike).
    * ``"positives_sampled"``: the same positives, the remaining slots filled by sampling the
      other candidates uniformly without replacement with a generator seeded by
      ``(seed, crc32(qid))`` -- deterministic per query, whatever the order queries are built in.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if n <= 0:
        raise ValueError(f"group size must be positive, got {n}")
    candidates = list(candidates)
    if policy == "top" or len(candidates) <= n:
        return candidates[:n]
    rank = {d: i for i, d in enumerate(candidates)}
    positives = [d for d in candidates if judged.get(d, 0) > 0]
    positives = sorted(positives, key=lambda d: (-judged[d], rank[d]))[:n]
    chosen = set(positives)
    rest = [d for d in candidates if d not in chosen]
    k = n - len(positives)
    if policy == "positives_top":
        fill = rest[:k]
    else:
        picks = _query_rng(seed, qid).choice(len(rest), size=k, replace=False) if k else []
        fill = [rest[i] for i in picks]
    chosen.update(fill)
    return [d for d in candidates if d in chosen]


def build_groups(
    qrels,
    candidates: Mapping[str, Sequence],
    teachers: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    group_size: int,
    qids: Sequence[str] | None = None,
    unjudged: str = "zero",
    policy: str = "top",
    seed: int = 0,
    include_unretrieved_positives: bool = False,
    require_label_pair: bool = True,
    teacher_sources: Mapping[str, str] | None = None,
    missing_scores: str = "error",
) -> tuple[dict, dict]:
    """Build fixed-size ranking groups (layout and policies in the module docstring).

    Args:
      qrels: ``{qid: {docid: grade}}`` or a :class:`Collection` (its ``.qrels``).
      candidates: ``{qid: [docid, ...]}`` in first-stage rank order (``[(docid, score), ...]``
        as :func:`pile_jax.data.trec.read_run` returns also works).
      teachers: ``{teacher_name: {qid: {docid: score}}}``; dict order = teacher axis order.
        May be empty (T = 0).
      group_size: n.
      qids: queries to build, in this order (default: the order of ``candidates``).
      include_unretrieved_positives: append judged-relevant docs missing from the candidate list
        after the last candidate (best grade first) before selection -- they then need teacher
        scores too.
      teacher_sources: ``{teacher_name: file}``, only used in error messages.
      missing_scores: ``"error"`` (default): a kept candidate without a score from some teacher is
        a DataError; ``"absent"``: its score is absent (``teacher_mask`` False, the groups get a
        ``teacher_mask`` key).

    Returns:
      ``(groups, stats)``; stats counts ``queries``, ``groups``, ``skipped_no_candidates``,
      ``skipped_no_label_pair``, ``truncated`` (lists longer than n), ``padded`` (shorter),
      ``unjudged_items`` (real unjudged items kept) and ``positives_outside_group`` (judged
      grade > 0 docs of kept queries that are not in their group).
    """
    if unjudged not in ("zero", "ignore"):
        raise ValueError(f"unjudged must be 'zero' or 'ignore', got {unjudged!r}")
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if missing_scores not in MISSING_SCORES:
        raise ValueError(f"missing_scores must be one of {MISSING_SCORES}, got {missing_scores!r}")
    qrels = getattr(qrels, "qrels", qrels)
    teacher_names = [str(t) for t in teachers]
    sources = dict(teacher_sources or {})
    n, T = group_size, len(teacher_names)
    qids = list(candidates) if qids is None else list(qids)

    stats = dict(
        queries=len(qids), groups=0, skipped_no_candidates=0, skipped_no_label_pair=0,
        truncated=0, padded=0, unjudged_items=0, positives_outside_group=0,
    )
    out_qids, out_docs, out_labels, out_lmask, out_mask, out_teach, out_tmask = [], [], [], [], [], [], []
    for qid in qids:
        judged = qrels.get(qid, {})
        cands = [c[0] if isinstance(c, (tuple, list)) else c for c in candidates.get(qid, ())]
        if include_unretrieved_positives:
            present = set(cands)
            missing = [d for d, g in judged.items() if g > 0 and d not in present]
            cands += sorted(missing, key=lambda d: -judged[d])  # stable: file order among equals
        if "" in cands:
            raise ValueError(f"candidate list of query {qid!r} holds an empty doc id")
        if len(set(cands)) != len(cands):
            raise ValueError(f"candidate list of query {qid!r} repeats a doc id")
        if not cands:
            stats["skipped_no_candidates"] += 1
            continue
        chosen = select_candidates(cands, judged, n, policy=policy, seed=seed, qid=qid)
        labels = np.zeros(n, np.float32)
        lmask = np.zeros(n, bool)
        mask = np.zeros(n, bool)
        mask[: len(chosen)] = True
        for i, d in enumerate(chosen):
            if d in judged:
                labels[i] = max(judged[d], 0)  # negative grades (TREC -1/-2) are non-relevant: 0
                lmask[i] = True
            else:
                lmask[i] = unjudged == "zero"
        if require_label_pair and len(set(labels[lmask].tolist())) < 2:
            stats["skipped_no_label_pair"] += 1
            continue
        teach, tmask = _teacher_rows(teachers, teacher_names, qid, chosen, n, sources, missing_scores)
        stats["truncated"] += len(cands) > n
        stats["padded"] += len(chosen) < n
        stats["unjudged_items"] += sum(d not in judged for d in chosen)
        chosen_set = set(chosen)
        stats["positives_outside_group"] += sum(g > 0 and d not in chosen_set for d, g in judged.items())
        out_qids.append(qid)
        out_docs.append(list(chosen) + [""] * (n - len(chosen)))
        out_labels.append(labels)
        out_lmask.append(lmask)
        out_mask.append(mask)
        out_teach.append(teach)
        out_tmask.append(tmask)
    stats["groups"] = len(out_qids)
    G = len(out_qids)
    groups = {
        "query_id": out_qids,
        "doc_ids": np.array(out_docs, dtype=np.str_).reshape(G, n) if G else np.zeros((0, n), np.str_),
        "labels": np.stack(out_labels) if G else np.zeros((0, n), np.float32),
        "label_mask": np.stack(out_lmask) if G else np.zeros((0, n), bool),
        "mask": np.stack(out_mask) if G else np.zeros((0, n), bool),
        "teacher_scores": np.stack(out_teach) if G else np.zeros((0, T, n), np.float32),
        "teacher_names": teacher_names,
    }
    if missing_scores == "absent":
        groups["teacher_mask"] = np.stack(out_tmask) if G else np.zeros((0, T, n), bool)
    return groups, stats


def _teacher_rows(teachers, teacher_names, qid, chosen, n, sources, missing_scores):
    """``(scores float32 [T, n], present bool [T, n])`` of one group's chosen docs."""
    T = len(teacher_names)
    teach = np.zeros((T, n), np.float32)
    present = np.zeros((T, n), bool)
    for t, name in enumerate(teacher_names):
        per_query = teachers[name].get(qid, {})
        for i, d in enumerate(chosen):
            score = per_query.get(d)
            if score is None:
                if missing_scores == "absent":
                    continue
                where = f"teacher {name!r}" + (f" ({sources[name]})" if name in sources else "")
                raise DataError(None, None, f"{where} has no score for query {qid!r} doc {d!r}")
            if not math.isfinite(score):
                raise DataError(None, None, f"teacher {name!r} score for query {qid!r} doc {d!r} is {score}")
            teach[t, i] = score
            present[t, i] = True
    return teach, present


def check_groups(groups: Mapping) -> tuple[int, int, int]:
    """Validate a groups dict (keys, dtypes, shapes, padding invariants); return ``(G, n, T)``."""
    missing = [k for k in ("query_id", "teacher_names", *GROUP_ARRAY_KEYS) if k not in groups]
    if missing:
        raise ValueError(f"groups dict lacks keys {missing}")
    doc_ids = np.asarray(groups["doc_ids"])
    if doc_ids.ndim != 2:
        raise ValueError(f"doc_ids must be [G, n], got shape {doc_ids.shape}")
    G, n = doc_ids.shape
    T = len(groups["teacher_names"])
    if len(groups["query_id"]) != G:
        raise ValueError(f"query_id has {len(groups['query_id'])} entries, doc_ids has {G} rows")
    expect = {
        "labels": (np.float32, (G, n)),
        "label_mask": (np.bool_, (G, n)),
        "mask": (np.bool_, (G, n)),
        "teacher_scores": (np.float32, (G, T, n)),
    }
    for key, (dtype, shape) in expect.items():
        arr = np.asarray(groups[key])
        if arr.dtype != dtype or arr.shape != shape:
            raise ValueError(f"{key} must be {np.dtype(dtype).name} {shape}, got {arr.dtype} {arr.shape}")
    mask = np.asarray(groups["mask"])
    if np.any(np.asarray(groups["label_mask"]) & ~mask):
        raise ValueError("label_mask is True on a padding item")
    if np.any((doc_ids == "") != ~mask):
        raise ValueError("doc_ids must be '' exactly on padding items (mask False)")
    if not np.all(np.isfinite(groups["labels"])) or not np.all(np.isfinite(groups["teacher_scores"])):
        raise ValueError("labels / teacher_scores contain NaN or Inf")
    if groups.get("teacher_mask") is not None:
        tm = np.asarray(groups["teacher_mask"])
        if tm.dtype != np.bool_ or tm.shape != (G, T, n):
            raise ValueError(f"teacher_mask must be bool {(G, T, n)}, got {tm.dtype} {tm.shape}")
        if np.any(tm & ~mask[:, None, :]):
            raise ValueError("teacher_mask is True on a padding item")
    return G, n, T


def num_groups(groups: Mapping) -> int:
    """G, the number of groups."""
    return len(groups["query_id"])


def take_groups(groups: Mapping, indices) -> dict:
    """The groups at ``indices`` (any int index array), as a new groups dict."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    out = {k: np.asarray(groups[k])[idx] for k in GROUP_ARRAY_KEYS + OPTIONAL_ARRAY_KEYS
           if groups.get(k) is not None}
    out["query_id"] = [groups["query_id"][i] for i in idx]
    out["teacher_names"] = list(groups["teacher_names"])
    return out


def iter_group_examples(groups: Mapping) -> Iterator[dict]:
    """One dict per group: ``query_id`` str, ``doc_ids`` list[str] [n], and the arrays' rows."""
    keys = [k for k in GROUP_ARRAY_KEYS + OPTIONAL_ARRAY_KEYS if k != "doc_ids" and groups.get(k) is not None]
    for g, qid in enumerate(groups["query_id"]):
        ex = {k: np.asarray(groups[k][g]) for k in keys}
        ex["query_id"] = qid
        ex["doc_ids"] = [str(d) for d in groups["doc_ids"][g]]
        yield ex


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stack_group_examples(examples: Sequence[Mapping], teacher_names: Sequence[str] | None = None) -> dict:
    """Inverse of :func:`iter_group_examples` (also takes records read back from TFDS, whose
    strings are bytes): a groups dict / a train batch ``{query_id, doc_ids [B, n], labels [B, n],
    label_mask, mask, teacher_scores [B, T, n]}`` (+ ``teacher_names`` when given; + ``teacher_mask``
    when any example has one: examples without it count every real item as scored)."""
    if not examples:
        raise ValueError("no examples to stack")
    out = {
        "query_id": [_as_str(ex["query_id"]) for ex in examples],
        "doc_ids": np.array([[_as_str(d) for d in ex["doc_ids"]] for ex in examples], dtype=np.str_),
        "labels": np.stack([np.asarray(ex["labels"], np.float32) for ex in examples]),
        "label_mask": np.stack([np.asarray(ex["label_mask"], bool) for ex in examples]),
        "mask": np.stack([np.asarray(ex["mask"], bool) for ex in examples]),
        "teacher_scores": np.stack([np.asarray(ex["teacher_scores"], np.float32) for ex in examples]),
    }
    if any(ex.get("teacher_mask") is not None for ex in examples):
        out["teacher_mask"] = np.stack([
            np.asarray(ex["teacher_mask"], bool) if ex.get("teacher_mask") is not None
            else np.broadcast_to(np.asarray(ex["mask"], bool)[None], np.shape(ex["teacher_scores"]))
            for ex in examples])
    if teacher_names is not None:
        out["teacher_names"] = list(teacher_names)
    return out
