"""Configs are data: YAML files in ``configs/`` loaded into plain nested dicts.

A config may start from another (``extends: base.yaml``) and hold preset sections (e.g. ``presets: {quick: {...}, large: {...}}``) that are
deep-merged over the base when selected, and any key can be overridden from the command line
with ``--set a.b.c=value`` (the value is parsed as YAML, so ``3``, ``0.5``, ``true``,
``[1, 2]`` work).  Errors name the file and the key.
"""

from __future__ import annotations

import copy
import os
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
    splits = {s: list(coll.split_qids(s)) for s in ("train", "dev", "test")}
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
    return out
