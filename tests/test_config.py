"""Config files: extends chains, presets, overrides, per-split query limits; errors name file and key."""

from __future__ import annotations

import re

import pytest

from pile_jax import config as C
from pile_jax import schema as S
from pile_jax.models.hub import position_limit


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


# ------------------------------------------------------------------------------ validation
import os  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = [("cranfield_pile.yaml", "run"), ("scifact_pile.yaml", "run"), ("nfcorpus_pile.yaml", "run"),
           ("study_pile.yaml", "study"), ("study_margin_mse.yaml", "study"),
           ("study_uniform.yaml", "study"), ("train_pile.yaml", "train"), ("train_margin_mse.yaml", "train"),
           ("train_hard_labels.yaml", "train")]


def _shipped(name, *overrides, presets=()):
    return C.load_config(os.path.join(ROOT, "configs", name), presets=presets, overrides=overrides)


@pytest.mark.parametrize("name, job", SHIPPED)
def test_shipped_configs_and_presets_validate(name, job):
    cfg = _shipped(name)
    S.validate(cfg, job=job)
    for preset in ("quick", "large"):
        if preset in (C._read(os.path.join(ROOT, "configs", name)).get("presets") or {}):
            S.validate(_shipped(name, presets=[preset]), job=job)


@pytest.mark.parametrize("name, job, override, key, fragment", [
    # typos, with a suggestion
    ("train_pile.yaml", "train", "studnet={num_layers: 2}", "studnet", "did you mean 'student'"),
    ("train_pile.yaml", "train", "student.num_layer=2", "student.num_layer", "did you mean 'num_layers'"),
    ("train_pile.yaml", "train", "train.learning_rat=0.1", "train.learning_rat", "did you mean 'learning_rate'"),
    ("train_pile.yaml", "train", "students={}", "students", "did you mean 'student'"),
    ("train_pile.yaml", "train", "data.colection=x", "data.colection", "did you mean 'collection'"),
    ("train_pile.yaml", "train", "eval.splt=dev", "eval.splt", "did you mean 'split'"),
    ("train_pile.yaml", "train", "objective.distil_losses={margin_mse: 1}", "objective", "distil_losses"),
    ("cranfield_pile.yaml", "run", "model.max_lenght=64", "model.max_lenght", "did you mean 'max_length'"),
    ("cranfield_pile.yaml", "run", "teachers=[{name: b, kind: bm25, sead: 1}]", "teachers[0].sead", "'seed'"),
    ("cranfield_pile.yaml", "run", "students.seed=[0]", "students.seed", "did you mean 'seeds'"),
    ("cranfield_pile.yaml", "run", "first_stage.dept=9", "first_stage.dept", "did you mean 'depth'"),
    ("cranfield_pile.yaml", "run", "students.train.batchsize=2", "students.train.batchsize", "'batch_size'"),
    ("cranfield_pile.yaml", "run", "teacher_train.stpes=2", "teacher_train.stpes", "did you mean 'steps'"),
    ("study_uniform.yaml", "study", "study.seed=[0]", "study.seed", "did you mean 'seeds'"),
    ("study_uniform.yaml", "study", "study.latency.repeat=2", "study.latency.repeat", "'repeats'"),
    # ranges and names
    ("train_pile.yaml", "train", "train.batch_size=0", "train.batch_size", ">= 1"),
    ("train_pile.yaml", "train", "train.batch_size=-4", "train.batch_size", ">= 1"),
    ("train_pile.yaml", "train", "train.accum_steps=0", "train.accum_steps", ">= 1"),
    ("train_pile.yaml", "train", "train.accum_steps=3", "train.accum_steps", "does not divide"),
    ("train_pile.yaml", "train", "train.checkpoint_every=0", "train.checkpoint_every", ">= 1"),
    ("train_pile.yaml", "train", "train.log_every=-1", "train.log_every", ">= 1"),
    ("train_pile.yaml", "train", "train.eval_every=0", "train.eval_every", ">= 1"),
    ("train_pile.yaml", "train", "train.learning_rate=-1e-4", "train.learning_rate", ">= 0"),
    ("train_pile.yaml", "train", "train.learning_rate=fast", "train.learning_rate", "expected a number"),
    ("train_pile.yaml", "train", "train.steps=-5", "train.steps", ">= 1"),
    ("train_pile.yaml", "train", "train.steps=2.5", "train.steps", "integer"),
    ("train_pile.yaml", "train", "train.epochs=0", "train.epochs", "> 0"),
    ("train_pile.yaml", "train", "train.keep_checkpoints=0", "train.keep_checkpoints", ">= 1"),
    ("train_pile.yaml", "train", "train.weight_decay=-0.01", "train.weight_decay", ">= 0"),
    ("train_pile.yaml", "train", "train.parallel=pmapp", "train.parallel", "did you mean 'pmap'"),
    ("train_pile.yaml", "train", "train.schedule=cosin", "train.schedule", "did you mean 'cosine'"),
    ("train_pile.yaml", "train", "train.progress=maybe", "train.progress", "true or false"),
    ("train_pile.yaml", "train", "student=null", "student", "missing or null"),
    ("train_pile.yaml", "train", "eval.split=valid", "eval.split", "train, dev, test"),
    ("train_pile.yaml", "train", "standardize=zscore", "standardize", "global, none"),
    ("train_pile.yaml", "train", "objective.teacher=bm24", "objective.teacher", "did you mean 'bm25'"),
    ("train_pile.yaml", "train", "objective.ensemble={name: piel}", "objective", "unknown ensemble 'piel'"),
    ("train_pile.yaml", "train", "objective.ensemble={name: pile, num_iter: 3}", "objective.ensemble.num_iter",
     "did you mean 'num_iters'"),
    ("train_pile.yaml", "train", "objective.ensemble={name: pile, damping: 2}", "objective.ensemble", "damping"),
    ("train_pile.yaml", "train", "teachers=[{name: ../x, kind: bm25}]", "teachers[0].name", "simple name"),
    ("train_pile.yaml", "train", "teachers=[{name: /abs/x, kind: bm25}]", "teachers[0].name", "simple name"),
    ("train_pile.yaml", "train", "teachers=[{name: .hidden, kind: bm25}]", "teachers[0].name", "simple name"),
    ("train_pile.yaml", "train", "teachers=[{name: a, kind: bm25}, {name: a, kind: bm25}]", "teachers[1].name",
     "duplicate"),
    ("train_pile.yaml", "train", "teachers=[{name: a, kind: bm52}]", "teachers[0] (a).kind", "did you mean 'bm25'"),
    ("train_pile.yaml", "train", "teachers=[{name: a, kind: file}]", "teachers[0] (a).path", "required"),
    ("train_pile.yaml", "train", "teachers=[{name: a, kind: file, path: /no/such.tsv}]", "teachers[0] (a).path",
     "file not found"),
    ("train_pile.yaml", "train", "candidates={run: /no/such.run, depth: 5}", "candidates.run", "file not found"),
    ("train_pile.yaml", "train", "data.unjudged=skip", "data.unjudged", "zero, ignore"),
    ("train_pile.yaml", "train", "data.max_queries_per_split={valid: 3}", "data.max_queries_per_split.valid",
     "unknown split"),
    ("cranfield_pile.yaml", "run", "students.runs={../x: {label_losses: {pairwise_logistic: 1}}}",
     "students.runs.../x", "simple name"),
    ("cranfield_pile.yaml", "run", "students.runs.hard_labels.label_losses={pairwise_logistik: 1}",
     "students.runs.hard_labels.label_losses", "did you mean 'pairwise_logistic'"),
    ("cranfield_pile.yaml", "run", "ensembles.methods.pile.num_iters=-1", "ensembles.methods.pile", "num_iters"),
    ("cranfield_pile.yaml", "run", "ensembles.methods.mean.name=meen", "ensembles.methods.mean.name", "'mean'"),
    ("cranfield_pile.yaml", "run", "students.kind=bm42", "students.kind", "must be one of"),
    ("cranfield_pile.yaml", "run", "score_batch_size=0", "score_batch_size", ">= 1"),
    ("cranfield_pile.yaml", "run", "train_groups.policy=best", "train_groups.policy", "must be one of"),
    ("study_margin_mse.yaml", "study", "study.students.x={kind: bertdot}", "study.students.x.kind",
     "did you mean 'bert_dot'"),
    ("study_margin_mse.yaml", "study", "study.students.prett.split_layr=1", "study.students.prett.split_layr",
     "did you mean 'split_layer'"),
    ("cranfield_pile.yaml", "run", "students.options={poolin: mean}", "students.options.poolin",
     "known: doc_encoder, doc_layers, doc_normalize, doc_pooling, normalize, pooling"),   # the default: query_encoder
    ("cranfield_pile.yaml", "run", "students={kind: bert_dot, options: {poolin: mean}, runs: {a: {label_losses: "
     "{ranknet: 1}}}}", "students.options.poolin", "did you mean 'pooling'"),
    ("study_uniform.yaml", "study", "study.cells=[nope]", "study.cells", "unknown cell"),
    ("study_uniform.yaml", "study", "study.factors.soft.margin_mse={distill_losses: {margin_mce: 1}}",
     "study cell", "did you mean 'margin_mse'"),
    ("study_uniform.yaml", "study", "eval.split=validation", "eval.split", "train, dev, test"),
])
def test_validate_names_the_key(name, job, override, key, fragment):
    cfg = _shipped(name, override)
    with pytest.raises(C.ConfigError) as info:
        S.validate(cfg, job=job)
    msg = str(info.value)
    assert msg.startswith(cfg["_source"] + ": "), msg
    assert f": {key}" in msg and fragment in msg, msg
    assert "\n" not in msg


def test_max_length_above_the_position_embeddings_is_a_config_error():
    """all-MiniLM-L6-v2 has 512 position embeddings (its config.json, read here independently):
    a longer max_length is refused before any work, naming the key, in every job (issue 14 item 3)."""
    import json

    from pile_jax.models import resolve_model_path

    limit = json.loads((resolve_model_path("all-MiniLM-L6-v2") / "config.json").read_text())["max_position_embeddings"]
    assert limit == 512
    S.validate(_shipped("train_pile.yaml", f"student.max_length={limit}"), job="train")
    for name, job, override, key in [
        ("train_pile.yaml", "train", f"student.max_length={limit + 1}", "student.max_length"),
        ("cranfield_pile.yaml", "run", "model.max_length=1024", "model.max_length"),
        ("cranfield_pile.yaml", "run", "teachers=[{name: b, kind: biencoder_cosine, model: {max_length: 600}}]",
         "teachers[0] (b).model.max_length"),
        ("study_uniform.yaml", "study", "study.students.ce2={kind: cross_encoder, max_length: 513}",
         "study.students.ce2.max_length"),
    ]:
        with pytest.raises(C.ConfigError, match=rf": {re.escape(key)}: .*exceeds the {limit} position"):
            S.validate(_shipped(name, override), job=job)
    # the model is read up front: a missing one is a config error naming the key
    with pytest.raises(C.ConfigError, match="student.base"):
        S.validate(_shipped("train_pile.yaml", "student.base=/no/such/model"), job="train")


def test_position_limit_subtracts_the_roberta_offset(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "roberta", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 514, "pad_token_id": 1}))
    assert position_limit(str(tmp_path))[0] == 512  # 514 - (pad 1 + 1)
    cfg = _shipped("train_pile.yaml", f"student.base={tmp_path}", "student.max_length=513")
    with pytest.raises(C.ConfigError, match="student.max_length: 513 exceeds the 512"):
        S.validate(cfg, job="train")


@pytest.mark.parametrize("item", ["=3", "key", " =1", "a..b=1", ".a=1"])
def test_malformed_overrides_are_rejected(item):
    with pytest.raises(C.ConfigError, match="override"):
        C.apply_override({}, item)


def test_limited_splits_missing_or_empty_split_names_splits_json():
    from pile_jax.data.errors import DataError

    class Coll:
        path = "/data/coll"

        def __init__(self, splits):
            self.splits = splits

        def split_qids(self, s):
            if s not in self.splits:
                raise ValueError(f"no split {s!r}")
            return self.splits[s]

    with pytest.raises(DataError, match=r"^/data/coll/splits.json: no 'dev' split"):
        C.limited_splits({}, Coll({"train": ["a"], "test": ["b"]}))
    with pytest.raises(DataError, match=r"^/data/coll/splits.json: split 'test' is empty"):
        C.limited_splits({}, Coll({"train": ["a"], "dev": ["c"], "test": []}))


# issue 22: every option value checked with the config (before any work), the key named
@pytest.mark.parametrize("name, job, override, key, fragment", [
    ("cranfield_pile.yaml", "run", "students.options.doc_layers=10", "students.options.doc_layers",
     "exceeds the 6 layers"),
    ("cranfield_pile.yaml", "run", "students.options.doc_layers=0", "students.options.doc_layers", ">= 1"),
    ("cranfield_pile.yaml", "run", "students.options.pooling=max", "students.options.pooling", "cls, mean"),
    ("cranfield_pile.yaml", "run", "students.options.doc_pooling=max", "students.options.doc_pooling", "cls, mean"),
    ("cranfield_pile.yaml", "run", "students.options.doc_normalize=maybe", "students.options.doc_normalize",
     "true or false"),
    ("cranfield_pile.yaml", "run", "students.options.doc_encoder=/no/such/model", "students.options.doc_encoder",
     "cannot read"),
    ("cranfield_pile.yaml", "run", "students.num_layers=7", "students.num_layers", "exceeds the 6 layers"),
    ("cranfield_pile.yaml", "run", "students.select_on_dev=yes please", "students.select_on_dev", "true or false"),
    ("cranfield_pile.yaml", "run", "transfer.seed=-1", "transfer.seed", ">= 0"),
    ("cranfield_pile.yaml", "run", "transfer.group_size=8", "transfer.group_size", "differs from the train groups"),
    ("cranfield_pile.yaml", "run", "students.seeds=[0, -2]", "students.seeds.1", ">= 0"),
    ("cranfield_pile.yaml", "run", "students={kind: bert_dot, options: {compress_dim: 0}, runs: {a: {label_losses: "
     "{ranknet: 1}}}}", "students.options.compress_dim", ">= 1"),
    ("cranfield_pile.yaml", "run", "students={kind: prett, num_layers: 2, options: {split_layer: 3}, runs: {a: "
     "{label_losses: {ranknet: 1}}}}", "students.options.split_layer", "exceeds the student's 2 layers"),
    ("cranfield_pile.yaml", "run", "students={kind: tk, options: {dropout: 1.5}, runs: {a: {label_losses: "
     "{ranknet: 1}}}}", "students.options.dropout", "must be < 1"),
    ("train_pile.yaml", "train", "student.num_layers=12", "student.num_layers", "exceeds the 6 layers"),
    ("train_pile.yaml", "train", "train.seed=-1", "train.seed", ">= 0"),
    ("study_margin_mse.yaml", "study", "study.students.bert_dot.pooling=max", "study.students.bert_dot.pooling",
     "cls, mean"),
])
def test_validate_checks_every_option_value(name, job, override, key, fragment):
    test_validate_names_the_key(name, job, override, key, fragment)


def test_checkpoint_depth_is_read_from_config_json():
    """The layer limit comes from the checkpoint's own config.json (read here independently)."""
    import json

    from pile_jax.models import resolve_model_path

    hf = json.loads((resolve_model_path("all-MiniLM-L6-v2") / "config.json").read_text())
    from pile_jax.models.hub import checkpoint_depth

    assert checkpoint_depth("all-MiniLM-L6-v2")[0] == hf["num_hidden_layers"] == 6


# ------------------------------------------------------------------- device counts (issue 19)
from pile_jax.train.loop import check_device_counts  # noqa: E402


@pytest.mark.parametrize("name, job", SHIPPED)
def test_shipped_configs_and_presets_run_on_1_2_4_8_devices(name, job):
    """Every shipped config and preset trains on 1, 2, 4 or 8 devices of one host, and on two
    hosts of 4; the train_* configs also on a v4-32 slice (4 hosts x 4 chips, README)."""
    presets = [[]] + [[p] for p in (C._read(os.path.join(ROOT, "configs", name)).get("presets") or {})]
    layouts = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 4)] + ([(4, 4)] if job == "train" else [])
    for preset in presets:
        cfg = _shipped(name, presets=preset)
        for pc, ld in layouts:
            check_device_counts(cfg, job=job, process_count=pc, local_device_count=ld)


def test_device_count_errors_name_the_key_and_a_value_that_works():
    cfg = {"_source": "x.yaml", "teacher_train": {"batch_size": 2},
           "teachers": [{"name": "bm", "kind": "bm25"},
                        {"name": "ce", "kind": "cross_encoder", "train": {"steps": 3}},
                        {"name": "ce2", "kind": "cross_encoder", "train": {"batch_size": 12, "accum_steps": 2}}],
           "students": {"train": {"batch_size": 16}}}
    with pytest.raises(C.ConfigError) as e:
        check_device_counts(cfg, job="run", process_count=2, local_device_count=4)
    assert str(e.value) == ("x.yaml: teacher_train.batch_size: 2 is not divisible by processes (2) x local "
                            "devices (4) x accum_steps (1) = 8; use 8")
    cfg["teacher_train"]["batch_size"] = 8
    with pytest.raises(C.ConfigError, match=r"teachers\[2\] \(ce2\)\.train\.batch_size: 12 .* = 16; use 16$"):
        check_device_counts(cfg, job="run", process_count=2, local_device_count=4)
    check_device_counts(cfg, job="run", process_count=1, local_device_count=2)   # 12 / (2 x 2)
    with pytest.raises(C.ConfigError, match=r"students\.train\.batch_size: 16 .* = 32; use 32$"):
        check_device_counts({"students": {"train": {"batch_size": 16}}}, job="run", process_count=1,
                              local_device_count=32)
    none = {"_source": "y.yaml", "train": {"batch_size": 3, "parallel": "none"}}
    check_device_counts(none, job="train", process_count=1, local_device_count=8)   # one device: any batch
    with pytest.raises(C.ConfigError, match=r"^y.yaml: train\.parallel: none runs on one device of one process"):
        check_device_counts(none, job="train", process_count=2, local_device_count=1)
    with pytest.raises(C.ConfigError, match=r"study\.train\.batch_size: 8 .* = 12; use 12$"):
        check_device_counts({"study": {}}, job="study", process_count=3, local_device_count=4)
