"""Export of every student kind (pile_jax.models.export, rankers.export_ranker / load_student).

References: the students' own scores before export (a reload must reproduce them bit for bit,
from perturbed parameters, so a loader that re-initialises cannot pass), sentence-transformers'
PyTorch ``SentenceTransformer`` / ``CrossEncoder`` on the exported folders (≤ 1e-5).
"""

import json
import logging

import jax
import numpy as np
import pytest

from pile_jax import rankers
from pile_jax.models.export import flatten_params, read_student_info, unflatten_params

QUERIES = ["what is the boundary layer thickness", "heat transfer at the wall"]
LONG = "the boundary layer in supersonic flow over a flat plate is thin and laminar " * 20
DOCS = [[LONG, "a short document about wings"], ["heat flux measured at the wall", "nothing relevant here"]]
LENGTHS = dict(max_length=48, max_query_length=12, max_doc_length=24)


def _perturbed(params, seed=0):
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        tree, [np.asarray(x) + rng.normal(0, 0.01, np.shape(x)).astype(np.asarray(x).dtype) for x in leaves])


def _scores(ranker, params):
    return np.asarray(ranker.score_fn(params, ranker.featurize(QUERIES, DOCS)))


def test_flatten_round_trip_keeps_scalars_and_paths():
    tree = {"a": {"b": np.ones((2, 3), np.float32), "c": np.float32(0.5) * np.ones((), np.float32)}, "d": np.arange(3)}
    flat = flatten_params(tree)
    assert sorted(flat) == ["a/b", "a/c", "d"] and flat["a/c"].shape == ()
    back = unflatten_params(flat)
    assert back["a"]["c"].shape == () and np.array_equal(back["d"], tree["d"])


@pytest.mark.parametrize("kind,opts", [
    ("cross_encoder", {}),
    ("bert_dot", {"pooling": "mean", "normalize": True, "compress_dim": 16}),
    ("colbert", {"compress_dim": 16, "query_augment": True}),
    ("prett", {"split_layer": 1}),
    ("tk", {"tk_layers": 1}),
    ("query_encoder", {"pooling": "mean", "doc_layers": 1}),
])
def test_every_kind_round_trips_exactly(tmp_path, kind, opts):
    ranker = rankers.student(kind, "all-MiniLM-L6-v2", num_layers=1, seed=3, **LENGTHS, **opts)
    params = _perturbed(ranker.params)
    card = {"teachers": ["ce_a", "bm25"], "objective": {"loss": "margin_mse"}, "data": "cranfield",
            "metrics": {"ndcg_cut_10": 0.4321}}
    rankers.export_ranker(ranker, params, tmp_path / kind, card=card)
    info = read_student_info(tmp_path / kind)
    assert info["kind"] == kind and info["max_length"] == 48 and info["max_doc_length"] == 24
    loaded = rankers.load_student(tmp_path / kind)
    assert loaded.kind == kind
    np.testing.assert_array_equal(_scores(loaded, loaded.params), _scores(ranker, params))
    assert not np.allclose(_scores(ranker, ranker.params), _scores(ranker, params))  # the perturbation matters
    readme = (tmp_path / kind / "README.md").read_text()
    for needle in ("all-MiniLM-L6-v2", "ce_a, bm25", "margin_mse", "cranfield", "0.4321", "| 48 |", "pile_jax version"):
        assert needle in readme, needle


@pytest.mark.parametrize("opts", [{"pooling": "mean", "normalize": True, "compress_dim": 16}, {"pooling": "cls"}])
def test_bert_dot_is_a_sentence_transformer_with_the_same_vectors(tmp_path, opts):
    from sentence_transformers import SentenceTransformer

    ranker = rankers.student("bert_dot", "all-MiniLM-L6-v2", num_layers=2, seed=1, **LENGTHS, **opts)
    params = _perturbed(ranker.params, 1)
    rankers.export_ranker(ranker, params, tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    types = [m["type"].rsplit(".", 1)[1] for m in modules]
    assert types == ["Transformer", "Pooling"] + (["Dense", "Normalize"] if opts.get("compress_dim") else [])
    assert json.loads((tmp_path / "sentence_bert_config.json").read_text())["max_seq_length"] == 24 + 2

    st = SentenceTransformer(str(tmp_path), device="cpu")
    assert st.max_seq_length == 26
    texts = [d for row in DOCS for d in row]  # the long one is truncated by both at 24 tokens + [CLS], [SEP]
    module = ranker.meta["module"]
    ids, mask = ranker.meta["features"].encode_documents(texts)
    ours = np.asarray(module.apply({"params": params}, ids, mask, method="encode_documents"))
    theirs = st.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    # the student's score is the dot product of the two vectors
    q = st.encode(QUERIES[:1], convert_to_numpy=True)
    np.testing.assert_allclose(q @ theirs[:2].T, _scores(ranker, params)[:1], atol=1e-5)


def test_query_encoder_exports_two_sentence_transformers_whose_dot_product_is_its_score(tmp_path):
    """The trained query tower at the root, the frozen document encoder (all 6 pretrained layers,
    mean pooling, normalised: all-MiniLM-L6-v2 as published) in document_encoder/; PyTorch
    sentence-transformers on both folders reproduces the student's scores."""
    from sentence_transformers import SentenceTransformer

    ranker = rankers.student("query_encoder", "all-MiniLM-L6-v2", num_layers=2, seed=1, **LENGTHS)
    params = _perturbed(ranker.params, 2)
    rankers.export_ranker(ranker, params, tmp_path)
    info = read_student_info(tmp_path)
    assert info["document_encoder"]["path"] == "document_encoder" and info["document_encoder"]["num_layers"] == 6
    queries = SentenceTransformer(str(tmp_path), device="cpu")
    documents = SentenceTransformer(str(tmp_path / "document_encoder"), device="cpu")
    assert (queries.max_seq_length, documents.max_seq_length) == (12 + 2, 24 + 2)
    q = queries.encode(QUERIES, convert_to_numpy=True)
    d = documents.encode([t for row in DOCS for t in row], convert_to_numpy=True).reshape(2, 2, -1)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)   # the published cosine model
    np.testing.assert_allclose(np.einsum("bh,bnh->bn", q, d), _scores(ranker, params), atol=1e-4, rtol=1e-5)


def test_cross_encoder_export_loads_in_sentence_transformers_with_the_training_max_length(tmp_path):
    from sentence_transformers import CrossEncoder

    ranker = rankers.cross_encoder("all-MiniLM-L6-v2", num_layers=2, max_length=48, max_query_length=12, seed=2,
                                   new_head=True)
    params = _perturbed(ranker.params, 2)
    rankers.export_ranker(ranker, params, tmp_path)
    ce = CrossEncoder(str(tmp_path), device="cpu")
    assert ce.max_seq_length == 48
    pairs = [(q, d) for q, row in zip(QUERIES, DOCS) for d in row]
    theirs = ce.predict(pairs)
    np.testing.assert_allclose(theirs, _scores(ranker, params).reshape(-1), atol=1e-5, rtol=0)


def test_export_cli_exports_a_student_work_folder_of_any_kind(tmp_path):
    from pile_jax.cli import main
    from pile_jax.params import save_params

    ranker = rankers.student("colbert", "all-MiniLM-L6-v2", num_layers=1, seed=0, **LENGTHS, compress_dim=8)
    params = _perturbed(ranker.params, 4)
    work = tmp_path / "work"
    work.mkdir()
    save_params(work / "best_params.npz", params)
    (work / "model.json").write_text(json.dumps({"student": {
        "kind": "colbert", "base": "all-MiniLM-L6-v2", "num_layers": 1, **LENGTHS, "options": {"compress_dim": 8}},
        "seed": 0, "card": {"teachers": ["t"]}}))
    pj, root = logging.getLogger("pile_jax"), logging.getLogger()
    saved = (list(pj.handlers), pj.level, pj.propagate, list(root.handlers))
    try:
        assert main(["export", str(work), "--out", str(tmp_path / "out"), "-q"]) == 0
    finally:  # the CLI configures logging for the process: undo it for the other tests
        pj.handlers[:], root.handlers[:] = saved[0], saved[3]
        pj.setLevel(saved[1])
        pj.propagate = saved[2]
    loaded = rankers.load_student(tmp_path / "out")
    np.testing.assert_array_equal(_scores(loaded, loaded.params), _scores(ranker, params))


def test_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pile_jax_student.json"):
        rankers.load_student(tmp_path)
    (tmp_path / "pile_jax_student.json").write_text('{"format": "pile_jax_student", "format_version": 1, "kind": "x"}')
    with pytest.raises(ValueError, match="unknown student kind"):
        rankers.load_student(tmp_path)


# ----------------------------------------------------------------------------- issue 22: exports that cannot lie
@pytest.fixture(scope="module")
def tk_export(tmp_path_factory):
    """A small exported student (TK: no tokenizer-independent shortcut; pile_jax's own format)."""
    ranker = rankers.student("tk", "all-MiniLM-L6-v2", seed=0, **LENGTHS, tk_layers=1)
    params = _perturbed(ranker.params, 5)
    folder = tmp_path_factory.mktemp("tk") / "export"
    rankers.export_ranker(ranker, params, folder)
    return ranker, params, folder


def _copy(folder, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_export_manifest_lists_every_file_with_size_and_sha256(tk_export):
    import hashlib

    _, _, folder = tk_export
    manifest = json.loads((folder / "pile_jax_manifest.json").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in on_disk if f != "pile_jax_manifest.json"]
    assert any(f.startswith("tokenizer") for f in manifest["files"])
    for rel, meta in manifest["files"].items():
        data = (folder / rel).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["kind"] == "tk" and manifest["dtype"] == "float32" and manifest["max_doc_length"] == 24
    assert manifest["pile_jax_version"]


@pytest.mark.parametrize("damage", ["delete_tokenizer", "truncate_weights", "overwrite_bytes", "no_manifest"])
def test_a_damaged_export_is_refused_naming_the_file(tmp_path, tk_export, damage):
    from pile_jax.data import DataError

    _, _, folder = tk_export
    folder = _copy(folder, tmp_path)
    weights = folder / "model.safetensors"
    if damage == "delete_tokenizer":   # issue 22: loaded silently, every word one id
        for f in folder.glob("tokenizer*.json"):
            f.unlink()
        fragment = "tokenizer"
    elif damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        fragment = "model.safetensors"
    elif damage == "overwrite_bytes":   # same size, one float changed: only the hash sees it
        data = bytearray(weights.read_bytes())
        data[-8:-4] = np.float32(123.0).tobytes()
        weights.write_bytes(bytes(data))
        fragment = "model.safetensors: contents differ"
    else:
        (folder / "pile_jax_manifest.json").unlink()
        fragment = "pile_jax_manifest.json: missing"
    with pytest.raises(DataError, match=fragment):
        rankers.load_student(folder)


def test_export_replaces_an_earlier_export_of_another_kind_whole(tmp_path, tk_export):
    """bert_dot writes 1_Pooling/, modules.json, config.json: none may survive a TK export."""
    ranker, params, _ = tk_export
    out = tmp_path / "out"
    dot = rankers.student("bert_dot", "all-MiniLM-L6-v2", num_layers=1, seed=0, **LENGTHS)
    rankers.export_ranker(dot, dot.params, out)
    assert (out / "modules.json").exists()
    rankers.export_ranker(ranker, params, out)
    manifest = json.loads((out / "pile_jax_manifest.json").read_text())
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == sorted(list(manifest["files"]) + ["pile_jax_manifest.json"])
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]   # no staging or old folder left
    rankers.load_student(out)


def test_export_refuses_a_folder_of_other_files_and_a_diverged_model(tmp_path, tk_export):
    from pile_jax.data import DataError

    ranker, params, _ = tk_export
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a pile_jax export"):
        rankers.export_ranker(ranker, params, keep)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]
    nan = jax.tree_util.tree_map(lambda x: np.full_like(np.asarray(x), np.nan), params)
    with pytest.raises(DataError, match="not finite"):
        rankers.export_ranker(ranker, nan, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_best_params_file_names_the_file_in_export(tmp_path, capsys, damage):
    from pile_jax.cli import main
    from pile_jax.params import save_params

    ranker = rankers.student("tk", "all-MiniLM-L6-v2", seed=0, **LENGTHS, tk_layers=1)
    work = tmp_path / "work"
    work.mkdir()
    save_params(work / "best_params.npz", ranker.params)
    data = (work / "best_params.npz").read_bytes()
    (work / "best_params.npz").write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" * 100)
    (work / "model.json").write_text(json.dumps({"student": {
        "kind": "tk", "base": "all-MiniLM-L6-v2", **LENGTHS, "options": {"tk_layers": 1}}, "seed": 0}))
    pj, root = logging.getLogger("pile_jax"), logging.getLogger()
    saved = (list(pj.handlers), pj.level, list(root.handlers))
    try:
        assert main(["export", str(work), "--out", str(tmp_path / "out"), "-q"]) == 2
    finally:
        pj.handlers[:], root.handlers[:] = saved[0], saved[2]
        pj.setLevel(saved[1])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{work / 'best_params.npz'}: unreadable parameter file" in err, err
    assert not (tmp_path / "out").exists()


def test_finite_weights_whose_scores_overflow_are_not_exported(tmp_path):
    """A diverged run's parameters can be finite while its scores are not (a score head near
    float32's limit): the probe batch refuses it, and nothing is written."""
    from pile_jax.data import DataError

    ranker = rankers.cross_encoder("all-MiniLM-L6-v2", num_layers=1, max_length=32, max_query_length=8, seed=0,
                                   new_head=True)
    params = jax.tree_util.tree_map(np.asarray, ranker.params)
    params["head"]["classifier"]["kernel"] = np.full_like(params["head"]["classifier"]["kernel"], 3e38)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
    assert not np.isfinite(_scores(ranker, params)).all()
    with pytest.raises(DataError, match="probe batch are not finite"):
        rankers.export_ranker(ranker, params, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_damaged_cross_encoder_export_is_refused_by_the_hugging_face_loader_too(tmp_path):
    """`pile-jax eval --model` and `Reranker.from_pretrained` read a cross-encoder export as a plain
    Hugging Face folder: its manifest is checked there as well."""
    from pile_jax.data import DataError
    from pile_jax.models import Reranker

    ranker = rankers.cross_encoder("all-MiniLM-L6-v2", num_layers=1, max_length=32, max_query_length=8, seed=0,
                                   new_head=True)
    rankers.export_ranker(ranker, ranker.params, tmp_path / "ce")
    Reranker.from_pretrained(str(tmp_path / "ce"))   # intact: loads
    (tmp_path / "ce" / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json: missing"):
        Reranker.from_pretrained(str(tmp_path / "ce"))
