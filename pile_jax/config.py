"""Configs are data: YAML files in ``configs/`` loaded into plain nested dicts.

A config may start from another (``extends: base.yaml``) and hold preset sections (e.g. ``presets: {quick: {...}, large: {...}}``) that are
deep-merged over the base when selected, and any key can be overridden from the command line
with ``--set a.b.c=value`` (the value is parsed as YAML, so ``3``, ``0.5``, ``true``,
``[1, 2]`` work).  Errors name the file and the key.

:func:`validate` checks a whole job config against the one schema below (known keys per section,
types, ranges, names) before any work; ``pile-jax run``, ``study`` and ``train`` call it first.
"""

from __future__ import annotations

import copy
import math
import os
import re
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file and key."""


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Returns ``base`` with ``update`` merged in (dicts recursively, everything else replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: str, seen: tuple = ()) -> dict[str, Any]:
    """One YAML file (local path or URL) as a dict, with its ``extends:`` chain merged underneath
    (presets included)."""
    from pile_jax import io as pio

    if not pio.as_path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(pio.read_text(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(cfg).__name__}")
    parent = cfg.pop("extends", None)
    if parent is None:
        return cfg
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a file name, got {parent!r}")
    parent = os.path.join(os.path.dirname(path), parent)
    parent = parent if "://" in parent else os.path.normpath(parent)
    if parent in seen:
        raise ConfigError(f"{path}: extends: cycle through {parent}")
    return deep_merge(_read(parent, seen + (path if "://" in path else os.path.normpath(path),)), cfg)


def load_config(path: str | os.PathLike, *, presets: Iterable[str] = (), overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Loads a YAML config, merges the named presets, then applies ``key.path=value`` overrides.

    ``extends: other.yaml`` (relative to the file) starts from that config, presets included, and
    merges this file over it (mappings recursively, anything else replaced)."""
    path = os.fspath(path)
    cfg = _read(path)
    available = cfg.pop("presets", {}) or {}
    for name in presets:
        if name not in available:
            raise ConfigError(f"{path}: no preset {name!r} (available: {sorted(available)})")
        cfg = deep_merge(cfg, available[name])
    for item in overrides:
        cfg = apply_override(cfg, item, source=path)
    cfg["_source"] = path
    return cfg


def apply_override(cfg: dict[str, Any], item: str, *, source: str = "command line") -> dict[str, Any]:
    """Applies one ``a.b.c=value`` override (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"{source}: override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip() or any(not p.strip() for p in key.strip().split(".")):
        raise ConfigError(f"{source}: override {item!r}: empty key (expected key.path=value)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: override {item!r}: value is not valid YAML: {e}") from e
    cfg = copy.deepcopy(cfg)
    node = cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return cfg


def require(cfg: Mapping[str, Any], key: str, *, source: str | None = None) -> Any:
    """``cfg[key]`` for a dotted key, or a ConfigError naming the key and file."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            where = source or cfg.get("_source", "config")
            raise ConfigError(f"{where}: missing required key {key!r}")
        node = node[part]
    return node


def get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``cfg[key]`` for a dotted key, or ``default``."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def limited_splits(cfg: Mapping[str, Any], coll) -> dict[str, list[str]]:
    """The train/dev/test query ids of ``coll``, cut to ``data.max_queries_per_split``: one number
    for every split, or a mapping per split (``{train: 200, dev: 50}``; a split not named, or null,
    keeps all its queries)."""
    splits = {}
    where = f"{getattr(coll, 'path', None) or 'collection'}/splits.json"
    for s in ("train", "dev", "test"):
        try:
            splits[s] = list(coll.split_qids(s))
        except ValueError:
            raise _data_error(where, f"no {s!r} split (the jobs need train, dev and test query ids)") from None
        if not splits[s]:
            raise _data_error(where, f"split {s!r} is empty")
    _check_judgments(cfg, coll, splits)
    limit = get(cfg, "data.max_queries_per_split")
    if not limit:
        return splits
    per = dict(limit) if isinstance(limit, Mapping) else {s: limit for s in splits}
    unknown = sorted(set(per) - set(splits))
    if unknown:
        raise ConfigError(f"{cfg.get('_source', 'config')}: data.max_queries_per_split: unknown split(s) {unknown}")
    out = {}
    for s, qids in splits.items():
        n = per.get(s)
        try:
            out[s] = qids if n is None else qids[: int(n)]
        except (TypeError, ValueError):
            raise ConfigError(f"{cfg.get('_source', 'config')}: data.max_queries_per_split.{s}: "
                              f"expected a number, got {n!r}") from None
        if not out[s]:
            raise ConfigError(f"{cfg.get('_source', 'config')}: data.max_queries_per_split.{s}: {n!r} leaves "
                              f"no {s} queries")
    return out


def _check_judgments(cfg: Mapping[str, Any], coll, splits: Mapping[str, list]) -> None:
    """The jobs learn from and evaluate against judgments: empty qrels, or none for the train or
    the evaluated split, is one error naming the qrels file (not a traceback later on)."""
    where = f"{getattr(coll, 'path', None) or 'collection'}/{get(cfg, 'data.qrels_file', 'qrels.tsv')}"
    qrels = getattr(coll, "qrels", None)
    if qrels is None:   # not a loaded collection (no judgments attached): nothing to check
        return
    if not any(qrels.values()):
        raise _data_error(where, "no judgments (an empty qrels file?): the jobs need relevance labels")
    for s in ("train", str(get(cfg, "eval.split", "test"))):
        if s in splits and not any(qrels.get(q) for q in splits[s]):
            raise _data_error(where, f"no judgments for any query of split {s!r}")


def _data_error(path: str, message: str):
    from pile_jax.data.errors import DataError

    return DataError(path, None, message)


# --------------------------------------------------------------------------------- schema
# One place for what a job's config may hold: the known keys of every section, their types and
# ranges. `validate(cfg, job=...)` checks a whole config before any work (`pile-jax run`,
# `study`, `train` call it first), so a typo or a bad value is one ConfigError naming the file
# and the key, with a "did you mean" suggestion for unknown keys. A key added to the code must be
# added here too (an unknown key is an error, never silently ignored).

JOB_KEYS = {
    "run": ("data", "first_stage", "candidates", "train_groups", "model", "score_batch_size", "teachers",
            "teacher_train", "ensembles", "students", "eval", "transfer"),
    "study": ("data", "first_stage", "candidates", "train_groups", "model", "score_batch_size", "teachers",
              "teachers_from", "teacher_train", "ensembles", "study", "eval"),
    "train": ("data", "first_stage", "candidates", "train_groups", "score_batch_size", "teachers", "teacher_train",
              "standardize", "student", "objective", "train", "distributed", "eval"),
}
SECTION_KEYS = {
    "data": ("collection", "qrels_file", "unjudged", "max_queries_per_split"),
    "first_stage": ("depth",),
    "candidates": ("bm25_depth", "run", "depth"),
    "train_groups": ("size", "policy", "seed"),
    "model": ("base", "max_length", "max_query_length", "max_doc_length", "dtype", "num_layers", "remat"),
    "teacher": ("name", "kind", "model", "path", "num_layers", "seed", "folds", "eval_scored_by", "objective", "train",
                "outliers"),
    "ensembles": ("standardize", "methods"),
    "students": ("kind", "options", "num_layers", "seeds", "select_on_dev", "train", "runs", "report_init"),
    "student": ("base", "num_layers", "max_length", "max_query_length", "dtype", "remat"),
    "distributed": ("enabled", "coordinator_address", "num_processes", "process_id"),
    "eval": ("split",),
    "study": ("name", "train_source", "seeds", "teacher", "layer_teacher", "students", "factors", "cells", "train",
              "latency", "export"),
    "study.latency": ("enabled", "queries", "candidates", "repeats"),
    "study.student": ("kind", "base", "max_length", "max_query_length", "max_doc_length", "dtype", "num_layers",
                      "remat"),  # + the kind's options (STUDENT_OPTIONS)
}
#: per student kind, the options :func:`pile_jax.models.students.build_student` takes
STUDENT_OPTIONS = {
    "cross_encoder": (),
    "bert_dot": ("compress_dim", "pooling", "normalize"),
    "colbert": ("compress_dim", "query_augment", "mask_token_id"),
    "prett": ("split_layer",),
    "tk": ("tk_layers", "embed_dim", "num_heads", "ff_dim", "mu", "sigma", "doc_position_offset", "dropout"),
    "query_encoder": ("pooling", "normalize", "doc_encoder", "doc_layers", "doc_pooling", "doc_normalize"),
}
SPLITS = ("train", "dev", "test")
UNJUDGED = ("zero", "ignore")
STANDARDIZE = ("global", "none")
DTYPES = ("float32", "bfloat16", "float16")
#: train-config ranges: key -> (lowest allowed value, null allowed, integer)
TRAIN_RANGES = {"batch_size": (1, False, True), "accum_steps": (1, False, True), "checkpoint_every": (1, False, True),
                "log_every": (1, False, True), "eval_every": (1, True, True), "keep_checkpoints": (1, False, True),
                "max_nonfinite_steps": (1, False, True), "steps": (1, True, True), "seed": (0, False, True),
                "learning_rate": (0, False, False), "weight_decay": (0, False, False), "clip_norm": (0, True, False),
                "warmup_steps": (0, False, False)}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class _Checker:
    """Error helpers bound to the config's file name."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source + ': ' if self.source else ''}{key}: {message}")

    def section(self, node: Any, key: str, known: Iterable[str], *, required: bool = False) -> dict:
        """``node`` as a mapping whose keys are all in ``known`` (a missing optional section = {})."""
        if node is None:
            if required:
                self.fail(key, "required section is missing or null")
            return {}
        if not isinstance(node, Mapping):
            self.fail(key, f"must be a mapping, got {type(node).__name__} {node!r}")
        self.keys(node, key, known)
        return dict(node)

    def keys(self, node: Mapping, key: str, known: Iterable[str]) -> None:
        known = list(known)
        for k in node:
            if k not in known:
                where = f"{key}.{k}" if key else str(k)
                self.fail(where, f"unknown key{did_you_mean(str(k), known)} (known: {', '.join(sorted(known))})")

    def number(self, node: Mapping, key: str, path: str, *, integer: bool = False, low: float | None = None,
               low_open: bool = False, nullable: bool = True) -> None:
        if key not in node:
            return
        value = node[key]
        where = f"{path}.{key}" if path else key
        if value is None:
            if not nullable:
                self.fail(where, "must not be null")
            return
        ok = not isinstance(value, bool)
        if ok:
            try:
                num = float(value)  # YAML reads 1e-4 (no dot) as a string
            except (TypeError, ValueError):
                ok = False
        if not ok or not math.isfinite(num):
            self.fail(where, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if integer and num != int(num):
            self.fail(where, f"expected an integer, got {value!r}")
        if low is not None and (num <= low if low_open else num < low):
            self.fail(where, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")

    def choice(self, node: Mapping, key: str, path: str, choices: Iterable[str]) -> None:
        if key in node and node[key] not in tuple(choices):
            where = f"{path}.{key}" if path else key
            self.fail(where, f"must be one of {', '.join(map(str, choices))}, got {node[key]!r}"
                             f"{did_you_mean(str(node[key]), [str(c) for c in choices])}")

    def name(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.fail(where, f"{value!r} must be a simple name (letters, digits, '_', '-', '.'; no path "
                             "separators, not starting with '.')")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_name(value: Any, where: str, source: str = "config") -> str:
    """A name used as a file name (teachers, runs): letters, digits, ``_ - .``, not starting with
    '.', so it can never leave its folder."""
    _Checker(source).name(value, where)
    return value


def train_keys() -> tuple[str, ...]:
    """The keys of a ``train:`` section: the fields of :class:`pile_jax.train.loop.TrainConfig`."""
    import dataclasses

    from pile_jax.train.loop import TrainConfig

    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def check_train_section(node: Any, path: str, source: str = "config") -> dict:
    """A ``train:`` section (TrainConfig keys, ranges, parallel / schedule names)."""
    from pile_jax.train import optim, step

    PARALLEL_MODES = getattr(step, "PARALLEL_MODES", ("pmap", "shard_map", "none"))
    SCHEDULES = getattr(optim, "SCHEDULES", ("linear", "cosine", "constant"))
    c = _Checker(source)
    node = c.section(node, path, train_keys())
    for key, (low, nullable, integer) in TRAIN_RANGES.items():
        c.number(node, key, path, integer=integer, low=low, nullable=nullable)
    c.number(node, "epochs", path, low=0, low_open=True, nullable=False)
    c.choice(node, "parallel", path, PARALLEL_MODES)
    c.choice(node, "schedule", path, SCHEDULES)
    if "progress" in node and not isinstance(node["progress"], bool):
        c.fail(f"{path}.progress", f"must be true or false, got {node['progress']!r}")
    lrm = node.get("lr_multipliers")
    if lrm is not None:
        if not isinstance(lrm, Mapping):
            c.fail(f"{path}.lr_multipliers", f"must map a parameter-path regex to a factor, got {lrm!r}")
        for pattern in lrm:
            try:
                re.compile(str(pattern))
            except re.error as e:
                c.fail(f"{path}.lr_multipliers", f"{pattern!r} is not a valid regex ({e})")
            c.number(lrm, pattern, f"{path}.lr_multipliers", low=0, nullable=False)
    bs, acc = node.get("batch_size"), node.get("accum_steps")
    if isinstance(bs, int) and isinstance(acc, int) and bs % acc:
        c.fail(f"{path}.accum_steps", f"{acc} does not divide batch_size {bs}")
    return node


def check_ensemble(name: Any, options: Mapping[str, Any], where: str, source: str = "config",
                   trial: bool = True, name_key: str | None = None) -> None:
    """An ensemble name of :data:`pile_jax.ensemble.ENSEMBLES` with options its function takes,
    and (``trial``) values it accepts: it is run once on a tiny list."""
    import inspect

    import numpy as np

    from pile_jax import ensemble as E

    c = _Checker(source)
    if name not in E.ENSEMBLES:
        c.fail(name_key or f"{where}.name",
               f"unknown ensemble {name!r}{did_you_mean(str(name), E.ENSEMBLES)} (known: {', '.join(E.ENSEMBLES)})")
    params = inspect.signature(E.ENSEMBLES[name]).parameters
    known = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in ("where", "label_where")]
    c.keys(options, where, known)
    if trial and options:
        ts = np.array([[[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]], np.float32)
        try:
            E.ensemble(name, ts, np.array([[1.0, 0.0, 0.0]], np.float32), **dict(options))
        except (ValueError, TypeError) as e:
            c.fail(where, f"bad option value for {name}: {e}")


def check_objective(node: Any, path: str, source: str = "config", *, teacher: Iterable[str] = ()) -> dict:
    """An objective section (:class:`pile_jax.train.objective.Objective` keys, loss and ensemble
    names and options, plus ``teacher`` when ``teacher`` lists the values it may take)."""
    import dataclasses

    from pile_jax.train.objective import Objective

    c = _Checker(source)
    allowed = [f.name for f in dataclasses.fields(Objective)] + (["teacher"] if teacher else [])
    node = c.section(node, path, allowed, required=True)
    obj = dict(node)
    if "teacher" in obj:
        t = obj.pop("teacher")
        teacher = list(teacher)
        if t not in teacher:
            c.fail(f"{path}.teacher", f"unknown teacher {t!r}{did_you_mean(str(t), teacher)} "
                                      f"(known: {', '.join(teacher)})")
        obj["target"], obj["teacher_index"] = "teacher", 0
    from pile_jax.losses import LOSS_REGISTRY

    for key in ("label_losses", "distill_losses", "loss_options"):
        if isinstance(obj.get(key), Mapping):
            for loss in obj[key]:
                if loss not in LOSS_REGISTRY:
                    c.fail(f"{path}.{key}", f"unknown loss {loss!r}{did_you_mean(str(loss), LOSS_REGISTRY)} "
                                            f"(known: {', '.join(sorted(LOSS_REGISTRY))})")
    try:
        parsed = Objective.from_config(obj)
    except ConfigError as e:
        msg = str(e)
        msg = msg[len("objective"):] if msg.startswith("objective") else ": " + msg
        raise ConfigError(f"{source}: {path}{msg}") from None
    if parsed.distill_losses and parsed.target == "ensemble":
        opts = dict(parsed.ensemble)
        check_ensemble(opts.pop("name", None), opts, f"{path}.ensemble", source)
    return node


def position_limit(base: str) -> tuple[int, str]:
    """``(max tokens, folder)`` of a Hugging Face model: ``max_position_embeddings`` minus the
    RoBERTa padding offset (as ``Reranker.from_pretrained`` checks)."""
    import json

    from pile_jax.models import resolve_model_path
    from pile_jax.models.config import EncoderConfig

    folder = resolve_model_path(base)
    hf = json.loads((folder / "config.json").read_text())
    cfg = EncoderConfig.from_hf(hf, num_labels=1)
    return cfg.max_position_embeddings - cfg.position_offset, str(folder)


def _check_length(c: _Checker, model: Mapping[str, Any], where: str, base_key: str = "base",
                  default_length: int | None = None) -> None:
    from pile_jax.models.tokenize import PIPELINE_MAX_LENGTH

    default_length = PIPELINE_MAX_LENGTH if default_length is None else default_length
    base = model.get(base_key, "all-MiniLM-L6-v2")
    length = model.get("max_length", default_length)
    for key in ("max_length", "max_query_length", "max_doc_length"):
        c.number(model, key, where, integer=True, low=1, nullable=False)
    try:
        limit, folder = position_limit(str(base))
    except (OSError, ValueError, KeyError) as e:
        c.fail(f"{where}.{base_key}", f"cannot read the model {base!r}: {e}")
    for key in ("max_length", "max_doc_length"):
        if key in model and int(model[key]) > limit:
            c.fail(f"{where}.{key}", f"{model[key]} exceeds the {limit} position embeddings of {folder}")
    if "max_length" not in model and int(length) > limit:
        c.fail(f"{where}.max_length", f"the default {length} exceeds the {limit} position embeddings of {folder}")


def _exists(path: Any) -> bool:
    from pile_jax import io as pio

    return pio.as_path(str(path)).is_file()


def _model_section(c: _Checker, node: Any, where: str) -> dict:
    node = c.section(node, where, SECTION_KEYS["model"])
    c.choice(node, "dtype", where, DTYPES)
    c.number(node, "num_layers", where, integer=True, low=1)
    if "remat" in node and not isinstance(node["remat"], bool):
        c.fail(f"{where}.remat", f"must be true or false, got {node['remat']!r}")
    return node


def validate(cfg: Mapping[str, Any], *, job: str, data: str | None = None) -> None:
    """Checks the whole config of ``job`` (``run`` | ``study`` | ``train``) before any work:
    known keys in every section (with a "did you mean"), types and ranges, names used as file
    names, split names, loss / ensemble / teacher / student names and options, and ``max_length``
    against the model's position embeddings. Raises :class:`ConfigError` naming the file and key.
    ``data``: the ``--data`` folder (``run``), which stands in for ``data.collection``."""
    from pile_jax.data.groups import POLICIES
    from pile_jax.models.students import STUDENT_KINDS
    from pile_jax.prepare import TEACHER_KINDS

    if job not in JOB_KEYS:
        raise ValueError(f"validate: job must be one of {sorted(JOB_KEYS)}, got {job!r}")
    c = _Checker(str(cfg.get("_source", "config")))
    c.keys({k: v for k, v in cfg.items() if not str(k).startswith("_")}, "", JOB_KEYS[job])

    d = c.section(cfg.get("data"), "data", SECTION_KEYS["data"], required=data is None)
    if data is None and not d.get("collection"):
        c.fail("data.collection", "required (a shipped collection name or a folder)")
    c.choice(d, "unjudged", "data", UNJUDGED)
    limit = d.get("max_queries_per_split")
    if isinstance(limit, Mapping):
        for s in limit:
            if s not in SPLITS:
                c.fail(f"data.max_queries_per_split.{s}", f"unknown split{did_you_mean(str(s), SPLITS)} "
                                                          f"(known: {', '.join(SPLITS)})")
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
    tg = c.section(cfg.get("train_groups"), "train_groups", SECTION_KEYS["train_groups"])
    c.number(tg, "size", "train_groups", integer=True, low=1, nullable=False)
    c.number(tg, "seed", "train_groups", integer=True, low=0, nullable=False)
    c.choice(tg, "policy", "train_groups", POLICIES)
    c.number(cfg, "score_batch_size", "", integer=True, low=1, nullable=False)
    ev = c.section(cfg.get("eval"), "eval", SECTION_KEYS["eval"])
    c.choice(ev, "split", "eval", SPLITS)
    if "teacher_train" in cfg:
        check_train_section(cfg["teacher_train"], "teacher_train", c.source)
    if cfg.get("teachers_from") is not None and not isinstance(cfg["teachers_from"], str):
        c.fail("teachers_from", f"must be a folder, got {cfg['teachers_from']!r}")

    # model settings teachers start from
    if job == "train":
        student = c.section(cfg.get("student"), "student", SECTION_KEYS["student"], required=True)
        c.choice(student, "dtype", "student", DTYPES)
        c.number(student, "num_layers", "student", integer=True, low=1)
        if "remat" in student and not isinstance(student["remat"], bool):
            c.fail("student.remat", f"must be true or false, got {student['remat']!r}")
        from pile_jax.models.tokenize import DEFAULT_MAX_LENGTH, DEFAULT_MAX_QUERY_LENGTH

        _check_length(c, student, "student", default_length=DEFAULT_MAX_LENGTH)
        check_layers(c, student, "num_layers", "student", student.get("base", "all-MiniLM-L6-v2"))
        model = {"max_length": student.get("max_length", DEFAULT_MAX_LENGTH),
                 "max_query_length": DEFAULT_MAX_QUERY_LENGTH}
    else:
        model = _model_section(c, cfg.get("model"), "model")
        _check_length(c, model, "model")

    # teachers
    teachers = cfg.get("teachers")
    if teachers is None and job != "train":
        c.fail("teachers", "required (a list of {name, kind, ...})")
    if teachers is not None and not isinstance(teachers, list):
        c.fail("teachers", f"must be a list of {{name, kind, ...}}, got {teachers!r}")
    names = []
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
            c.fail(f"{where}.kind", f"unknown kind {kind!r}{did_you_mean(str(kind), TEACHER_KINDS)} "
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
        if "outliers" in spec and kind != "file":
            c.fail(f"{where}.outliers", "only a teacher of kind file reads a score file")
        if kind == "cross_encoder":
            check_objective(spec.get("objective"), f"{where}.objective", c.source)
        elif "objective" in spec:
            c.fail(f"{where}.objective", "only a cross_encoder teacher (fine-tuned here) takes an objective")
        if "train" in spec:
            check_train_section(spec["train"], f"{where}.train", c.source)
        if kind in ("biencoder_cosine", "checkpoint", "cross_encoder"):
            tm = dict(model)
            extra = spec.get("model")
            if isinstance(extra, str):
                tm["base"] = extra
            elif extra is not None:
                tm.update(_model_section(c, extra, f"{where}.model"))
            if kind == "checkpoint":
                tm["base"] = spec["path"]
            _check_length(c, tm, f"{where}.model" if kind != "checkpoint" else where,
                          base_key="base")
            check_layers(c, spec, "num_layers", where, tm.get("base", "all-MiniLM-L6-v2"))

    if job in ("run", "study"):
        ens = c.section(cfg.get("ensembles"), "ensembles", SECTION_KEYS["ensembles"])
        c.choice(ens, "standardize", "ensembles", STANDARDIZE)
        methods = ens.get("methods")
        if methods is not None:
            if not isinstance(methods, Mapping):
                c.fail("ensembles.methods", f"must map a display name to {{name, options}}, got {methods!r}")
            for display, spec in methods.items():
                if spec is not None and not isinstance(spec, Mapping):
                    c.fail(f"ensembles.methods.{display}", f"must be a mapping {{name, options}}, got {spec!r}")
                opts = dict(spec or {})
                check_ensemble(opts.pop("name", display), opts, f"ensembles.methods.{display}", c.source)

    if job == "run":
        s = c.section(cfg.get("students"), "students", SECTION_KEYS["students"], required=True)
        c.choice(s, "kind", "students", STUDENT_KINDS)
        base = model.get("base", "all-MiniLM-L6-v2")
        check_layers(c, s, "num_layers", "students", base)
        for key in ("select_on_dev", "report_init"):
            if key in s and not isinstance(s[key], bool):
                c.fail(f"students.{key}", f"must be true or false, got {s[key]!r}")
        _check_seeds(c, s, "students")
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
        from pile_jax.prepare import transfer_settings

        transfer_settings(dict(cfg, _source=c.source))   # the transfer section's keys and values
    elif job == "train":
        check_objective(cfg.get("objective"), "objective", c.source, teacher=names)
        check_train_section(cfg.get("train"), "train", c.source)
        c.choice(cfg, "standardize", "", STANDARDIZE)
        c.section(cfg.get("distributed"), "distributed", SECTION_KEYS["distributed"])
    else:
        _check_study(c, cfg, names)


POOLINGS = ("cls", "mean")
#: per student kind, how each option is checked: ("bool",) | ("choice", values) |
#: ("int", lowest, nullable) | ("number", lowest, nullable) | ("layers", base key) | ("model",) | ("numbers",)
OPTION_RULES = {
    "bert_dot": {"compress_dim": ("int", 1, True), "pooling": ("choice", POOLINGS), "normalize": ("bool",)},
    "query_encoder": {"pooling": ("choice", POOLINGS), "normalize": ("bool",), "doc_encoder": ("model",),
                      "doc_layers": ("layers", "doc_encoder"), "doc_pooling": ("choice", POOLINGS),
                      "doc_normalize": ("bool",)},
    "colbert": {"compress_dim": ("int", 1, True), "query_augment": ("bool",), "mask_token_id": ("int", 0, True)},
    "prett": {"split_layer": ("int", 0, False)},
    "tk": {"tk_layers": ("int", 1, False), "embed_dim": ("int", 1, True), "num_heads": ("int", 1, False),
           "ff_dim": ("int", 1, False), "mu": ("numbers",), "sigma": ("number", 0, False),
           "doc_position_offset": ("int", 0, False), "dropout": ("number", 0, False)},
}


def checkpoint_depth(base: Any) -> tuple[int, str]:
    """``(number of encoder layers, folder)`` of a Hugging Face checkpoint, read from its config.json."""
    import json

    from pile_jax.models import resolve_model_path
    from pile_jax.models.config import EncoderConfig

    folder = resolve_model_path(str(base))
    hf = json.loads((folder / "config.json").read_text())
    return int(EncoderConfig.from_hf(hf, num_labels=1).num_layers), str(folder)


def check_layers(c: "_Checker", node: Mapping, key: str, where: str, base: Any) -> None:
    """``node[key]``: an integer from 1 to the depth of the checkpoint ``base`` (its config.json)."""
    c.number(node, key, where, integer=True, low=1)
    if node.get(key) is None or base is None:
        return
    try:
        depth, folder = checkpoint_depth(base)
    except (OSError, ValueError, KeyError) as e:
        c.fail(f"{where}.{key}", f"cannot read the model {base!r}: {e}")
    if int(node[key]) > depth:
        c.fail(f"{where}.{key}", f"{node[key]} exceeds the {depth} layers of {folder}")


def check_student_options(c: "_Checker", kind: str, options: Any, where: str, *, base: Any,
                          num_layers: Any = None) -> dict:
    """A student's ``options`` (known keys of ``kind``, and each value's type, range or choice,
    :data:`OPTION_RULES`): layer counts within the checkpoint's depth, PreTT's ``split_layer``
    within the student's layers, TK's dropout below 1."""
    options = c.section(options, where, STUDENT_OPTIONS.get(kind, ()))
    for key, rule in OPTION_RULES.get(kind, {}).items():
        if key not in options:
            continue
        value, at = options[key], f"{where}.{key}"
        if rule[0] == "bool" and not isinstance(value, bool):
            c.fail(at, f"must be true or false, got {value!r}")
        elif rule[0] == "choice":
            c.choice(options, key, where, rule[1])
        elif rule[0] in ("int", "number"):
            c.number(options, key, where, integer=rule[0] == "int", low=rule[1], nullable=rule[2],
                     low_open=key == "sigma")
        elif rule[0] == "numbers":
            if not isinstance(value, (list, tuple)) or not value:
                c.fail(at, f"must be a non-empty list of numbers, got {value!r}")
            for i in range(len(value)):
                c.number(dict(enumerate(value)), i, at, nullable=False)
        elif rule[0] == "model":
            if not isinstance(value, str) or not value:
                c.fail(at, f"must be a model folder or hub id, got {value!r}")
            try:
                checkpoint_depth(value)
            except (OSError, ValueError, KeyError) as e:
                c.fail(at, f"cannot read the model {value!r}: {e}")
        elif rule[0] == "layers":
            check_layers(c, options, key, where, options.get(rule[1]) or base)
    if kind == "tk" and isinstance(options.get("dropout"), (int, float)) and options["dropout"] >= 1:
        c.fail(f"{where}.dropout", f"must be < 1, got {options['dropout']!r}")
    if kind == "prett" and isinstance(options.get("split_layer"), int):
        layers = num_layers
        if layers is None:
            try:
                layers = checkpoint_depth(base)[0]
            except (OSError, ValueError, KeyError):
                layers = None
        if layers is not None and options["split_layer"] > int(layers):
            c.fail(f"{where}.split_layer", f"{options['split_layer']} exceeds the student's {layers} layers")
    return options


def _check_seeds(c: _Checker, node: Mapping, path: str) -> None:
    seeds = node.get("seeds")
    if seeds is None:
        return
    if not isinstance(seeds, list) or not seeds:
        c.fail(f"{path}.seeds", f"must be a non-empty list of integers, got {seeds!r}")
    for i in range(len(seeds)):
        c.number(dict(enumerate(seeds)), i, f"{path}.seeds", integer=True, low=0, nullable=False)


def _check_study(c: _Checker, cfg: Mapping[str, Any], teacher_names: list[str]) -> None:
    from pile_jax.models.students import STUDENT_KINDS
    from pile_jax.study import expand_cells, resolve_objective

    study = c.section(cfg.get("study"), "study", SECTION_KEYS["study"], required=True)
    c.choice(study, "train_source", "study", ("tfds", "memory"))
    _check_seeds(c, study, "study")
    if "train" in study:
        check_train_section(study["train"], "study.train", c.source)
    lat = c.section(study.get("latency"), "study.latency", SECTION_KEYS["study.latency"])
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
                                    f"{did_you_mean(str(spec.get('kind')), STUDENT_KINDS)} "
                                    f"(known: {', '.join(STUDENT_KINDS)})")
        c.keys(spec, where, SECTION_KEYS["study.student"] + STUDENT_OPTIONS.get(spec["kind"], ()))
        sbase = spec.get("base", model.get("base", "all-MiniLM-L6-v2"))
        check_layers(c, spec, "num_layers", where, sbase)
        check_student_options(c, spec["kind"], {k: v for k, v in spec.items()
                                                if k in STUDENT_OPTIONS.get(spec["kind"], ())}, where, base=sbase,
                              num_layers=spec.get("num_layers"))
        if spec["kind"] == "cross_encoder":
            _check_length(c, {**model, **{k: v for k, v in spec.items() if k != "kind"}}, where)
    for key in ("teacher", "layer_teacher"):
        t = study.get(key)
        if key == "layer_teacher" and t is not None and t != "best" and t not in teacher_names:
            c.fail(f"study.{key}", f"unknown teacher {t!r}{did_you_mean(str(t), teacher_names)}")
    try:
        cells = expand_cells(study)
    except ConfigError as e:
        raise ConfigError(f"{c.source}: {e}") from None
    best = teacher_names[0] if teacher_names else "best"
    for cell in cells:
        obj, _, _ = resolve_objective(cell["objective"], teacher_names=teacher_names, best_teacher=best,
                                      default_teacher=study.get("teacher", "best"))
        check_objective(obj, f"study cell {cell['name']}", c.source)
