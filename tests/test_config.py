"""Config files: extends chains, presets, overrides, per-split query limits; errors name file and key."""

from __future__ import annotations

import pytest

from pile_jax import config as C


class _Coll:
    def split_qids(self, split):
        return {"train": ["a", "b", "c", "d"], "dev": ["e", "f"], "test": ["g", "h", "i"]}[split]


def _write(path, text):
    path.write_text(text)
    return path


def test_extends_merges_base_and_presets(tmp_path):
    _write(tmp_path / "base.yaml", "data: {collection: cranfield, qrels_file: qrels.tsv}\n"
                                   "model: {max_length: 96, dtype: float32}\n"
                                   "presets: {quick: {model: {max_length: 64}}}\n")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\n"
                                                   "data: {collection: scifact}\n"
                                                   "presets: {big: {model: {dtype: bfloat16}}}\n")
    cfg = C.load_config(child)
    assert cfg["data"] == {"collection": "scifact", "qrels_file": "qrels.tsv"}
    assert cfg["model"] == {"max_length": 96, "dtype": "float32"}
    assert "extends" not in cfg and "presets" not in cfg
    both = C.load_config(child, presets=["quick", "big"], overrides=["model.max_length=32"])
    assert both["model"] == {"max_length": 32, "dtype": "bfloat16"}


def test_extends_errors_name_the_file(tmp_path):
    a = _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(C.ConfigError, match="cycle"):
        C.load_config(a)
    missing = _write(tmp_path / "m.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(C.ConfigError, match="nowhere.yaml: config file not found"):
        C.load_config(missing)


def test_limited_splits_number_mapping_and_errors():
    coll = _Coll()
    assert C.limited_splits({}, coll)["train"] == ["a", "b", "c", "d"]
    assert C.limited_splits({"data": {"max_queries_per_split": 2}}, coll) == {
        "train": ["a", "b"], "dev": ["e", "f"], "test": ["g", "h"]}
    assert C.limited_splits({"data": {"max_queries_per_split": {"train": 1, "test": None}}}, coll) == {
        "train": ["a"], "dev": ["e", "f"], "test": ["g", "h", "i"]}
    with pytest.raises(C.ConfigError, match="unknown split"):
        C.limited_splits({"data": {"max_queries_per_split": {"valid": 1}}}, coll)
    with pytest.raises(C.ConfigError, match=r"max_queries_per_split\.dev"):
        C.limited_splits({"data": {"max_queries_per_split": {"dev": "many"}}}, coll)
