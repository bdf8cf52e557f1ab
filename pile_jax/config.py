"""Configs are data: YAML files in ``configs/`` loaded into plain nested dicts.

A config may start from another (``extends: base.yaml``) and hold preset sections (e.g. ``presets: {quick: {...}, large: {...}}``) that are
deep-merged over the base when selected, and any key can be overridden from the command line
with ``--set a.b.c=value`` (the value is parsed as YAML, so ``3``, ``0.5``, ``true``,
``[1, 2]`` work; a number indexes a list: ``teachers.0.path=scores.tsv``).  Errors name the file and the key.

A leaf module: it imports no behaviour of pile_jax (only :mod:`pile_jax.io` to read files and
:mod:`pile_jax.data.errors` for a data error), so every layer may import :class:`ConfigError`,
:func:`get` / :func:`require` and the checks.

Validation is collected, not centralised: each component declares the schema fragment of its own
section next to its code (``TrainConfig`` and :func:`pile_jax.train.loop.check_train_section`,
:func:`pile_jax.train.objective.check_objective`, the teachers and inputs in
:mod:`pile_jax.prepare`, each job's own sections in its module), a job's :class:`JobSchema` lists
its top-level keys and fragments, and :func:`validate` runs them on a whole config before any work.
The registry of job schemas is assembled on top, by :mod:`pile_jax.schema` (imports point down).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping

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
    """Applies one ``a.b.c=value`` override (value parsed as YAML); a number after a list indexes
    it (``teachers.0.path=scores.tsv`` sets the first teacher's path)."""
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
        if isinstance(node, list):
            child = node[_list_index(node, part, item, source)]
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
        node = child
    if isinstance(node, list):
        node[_list_index(node, parts[-1], item, source)] = value
    else:
        node[parts[-1]] = value
    return cfg


def _list_index(node: list, part: str, item: str, source: str) -> int:
    """A list element in an override path: ``teachers.0.path=...`` (0-based, existing elements)."""
    if not part.strip().isdigit() or int(part) >= len(node):
        raise ConfigError(f"{source}: override {item!r}: {part!r} is not an index of a list of {len(node)} "
                          f"(0..{len(node) - 1})")
    return int(part)


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


# --------------------------------------------------------------------------------- checks
SPLITS = ("train", "dev", "test")
UNJUDGED = ("zero", "ignore")
STANDARDIZE = ("global", "none")
DTYPES = ("float32", "bfloat16", "float16")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Checker:
    """Error helpers bound to the config's file name: each check raises one :class:`ConfigError`
    ``"<file>: <dotted key>: <what is wrong>"``."""

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
    Checker(source).name(value, where)
    return value


def check_seeds(c: Checker, node: Mapping, path: str) -> None:
    seeds = node.get("seeds")
    if seeds is None:
        return
    if not isinstance(seeds, list) or not seeds:
        c.fail(f"{path}.seeds", f"must be a non-empty list of integers, got {seeds!r}")
    for i in range(len(seeds)):
        c.number(dict(enumerate(seeds)), i, f"{path}.seeds", integer=True, low=0, nullable=False)




# --------------------------------------------------------------------------------- collector
#: a schema fragment: ``check(checker, whole config, context)``; raises :class:`ConfigError`
#: naming the key. ``context`` carries what later fragments need (``job``, ``data``: the
#: ``--data`` folder; the teachers' model settings ``model``; ``teacher_names``).
Fragment = Callable[[Checker, Mapping[str, Any], dict], None]


@dataclasses.dataclass(frozen=True)
class JobSchema:
    """What a job's config may hold: its top-level ``keys`` and the fragments that check them,
    in order (a key added to the code must be added to its fragment: an unknown key is an
    error, never silently ignored)."""

    job: str
    keys: tuple[str, ...]
    fragments: tuple[Fragment, ...]

    def validate(self, cfg: Mapping[str, Any], *, data: str | None = None) -> None:
        c = Checker(str(cfg.get("_source", "config")))
        c.keys({k: v for k, v in cfg.items() if not str(k).startswith("_")}, "", self.keys)
        context = {"job": self.job, "data": data}
        for fragment in self.fragments:
            fragment(c, cfg, context)


def validate(cfg: Mapping[str, Any], *, job: str, schemas: Mapping[str, JobSchema] | None = None,
             data: str | None = None) -> None:
    """Checks the whole config of ``job`` with its schema of ``schemas`` (the registry of
    :mod:`pile_jax.schema`) before any work: known keys in every section (with a "did you mean"),
    types and ranges, names used as file names, split names, loss / ensemble / teacher / student
    names and options, and ``max_length`` against the model's position embeddings. Raises
    :class:`ConfigError` naming the file and key. ``data``: the ``--data`` folder (``run``),
    which stands in for ``data.collection``."""
    if schemas is None:   # this leaf does not import the jobs that declare the schemas
        raise TypeError("pile_jax.config.validate needs the job schemas: call pile_jax.schema.validate(cfg, job=...)")
    if job not in schemas:
        raise ValueError(f"validate: job must be one of {sorted(schemas)}, got {job!r}")
    schemas[job].validate(cfg, data=data)


_Checker = Checker   # the older private name
