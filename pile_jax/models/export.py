"""Export every student kind to a folder other tools (and pile_jax) load; reload it exactly.

Folder formats (every export also writes ``pile_jax_student.json``, the tokenizer files with
``model_max_length`` = the training length, and a model card ``README.md``):

``cross_encoder``
    A Hugging Face ``...ForSequenceClassification`` folder (``config.json`` + ``model.safetensors``,
    :func:`pile_jax.models.hf_io.export_pretrained`): ``AutoModelForSequenceClassification`` and
    ``sentence_transformers.CrossEncoder`` load it; the CrossEncoder truncates pairs at the
    training ``max_length`` (the tokenizer's ``model_max_length``, also in
    ``sentence_bert_config.json``) and returns the raw logits (activation ``Identity``).
``bert_dot``
    A sentence-transformers folder: the encoder at the root (``config.json`` with
    ``architectures=[<Family>Model]``, ``model.safetensors`` with bare ``AutoModel`` keys,
    tokenizer), ``sentence_bert_config.json`` (``max_seq_length`` = the training document length
    ``max_doc_length`` + the special tokens), ``1_Pooling/config.json`` (the student's ``cls`` or
    ``mean`` pooling), ``2_Dense`` (``linear.weight``/``linear.bias``, Identity activation) when
    the student has a ``compress_dim`` projection, ``N_Normalize`` when it L2-normalises, and
    ``modules.json`` listing them. ``SentenceTransformer(folder).encode(texts)`` gives the
    student's vectors; its score is their dot product.
``query_encoder``
    The trained query tower as a sentence-transformers folder at the root (as ``bert_dot``;
    ``max_seq_length`` = the query length) and the frozen document encoder, unchanged, as a
    second sentence-transformers folder ``document_encoder/`` (its pooling, ``Normalize`` when it
    normalises, ``max_seq_length`` = the document length); ``pile_jax_student.json`` records
    it under ``document_encoder``. Score: ``query_model.encode(q) · document_model.encode(d)``;
    an index built with the document encoder before training stays valid.
``colbert``, ``prett``, ``tk``
    pile_jax's own format: ``pile_jax_student.json`` and ``model.safetensors`` holding the Flax
    parameter tree, one tensor per leaf named by its path joined with ``/`` (e.g.
    ``encoder/layer_0/query/kernel``), float32, in Flax's layout (``[in, out]`` kernels).

``pile_jax_student.json``: ``format`` (``"pile_jax_student"``), ``format_version`` (1), ``kind``,
``input_kind``, ``module`` (the student module's options, e.g. ``compress_dim``, ``pooling``,
``split_layer``; TK's sizes and kernels), ``encoder_config`` (the
:class:`~pile_jax.models.config.EncoderConfig` as a dict; absent for TK), ``max_length``,
``max_query_length``, ``max_doc_length``, ``base`` (the model it was trained from), ``card``
(what the model card says) and ``pile_jax_version``.

``pile_jax_manifest.json`` (written last, so an interrupted export has none): ``files`` (every
other file of the folder, by its ``/``-separated relative path, with ``size`` in bytes and
``sha256``), ``pile_jax_version``, ``kind``, ``dtype`` (of the stored tensors, ``float32``) and the
lengths. :func:`verify_export` checks it: a missing, truncated or overwritten file (or a missing
manifest) is a :class:`~pile_jax.data.errors.DataError` naming that file. An export is built in a
fresh folder beside ``path`` and moved into place, so no file of an earlier export survives; an
existing ``path`` is replaced only when it is empty or holds a pile_jax export (anything else is
refused). Parameters that are not finite are refused before anything is written.

:func:`load_student` reads any of these folders back as ``(module, params, score_fn,
input_kind)`` with the same parameters, bit for bit; ``pile_jax.rankers.load_student`` wraps it
in a :class:`~pile_jax.train.loop.Ranker` with the stored lengths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from ..data.errors import DataError
from .config import _HF_NAMES, EncoderConfig
from .manifest import MANIFEST_FILE, verify_export, write_manifest

__all__ = ["export_student", "load_student", "read_student_info", "flatten_params", "unflatten_params",
           "model_card", "verify_export", "STUDENT_FILE", "MANIFEST_FILE", "FORMAT_VERSION", "INPUT_KIND_OF"]

log = logging.getLogger(__name__)

STUDENT_FILE = "pile_jax_student.json"
FORMAT_VERSION = 1
INPUT_KIND_OF = {"cross_encoder": "pair", "bert_dot": "two_tower", "colbert": "two_tower",
                 "prett": "two_tower_prett", "tk": "two_tower_words", "query_encoder": "frozen_docs"}
DOCUMENT_ENCODER_DIR = "document_encoder"
_MODULE_SKIP = ("parent", "name", "config")


# ----------------------------------------------------------------------------- params <-> flat
def flatten_params(params: Mapping) -> dict[str, np.ndarray]:
    """``{"a/b/kernel": array}``: every leaf of a nested params dict, keyed by its path (``/``)."""
    out: dict[str, np.ndarray] = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            key = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(v, key)
            else:
                out[key] = np.array(jax.device_get(v), order="C")  # (not ascontiguousarray: it makes 0-d 1-d)
    walk(params, "")
    return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
    """Inverse of :func:`flatten_params`."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


# ----------------------------------------------------------------------------- helpers
def _module_options(module) -> dict:
    opts = {}
    for f in dataclasses.fields(module):
        if f.name in _MODULE_SKIP:
            continue
        v = getattr(module, f.name)
        opts[f.name] = list(v) if isinstance(v, tuple) else v
    return opts


def _pile_jax_version() -> str:
    try:
        from pile_jax import __version__

        return __version__
    except Exception:  # pragma: no cover
        return "unknown"


def _resolve_tokenizer(tokenizer):
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if isinstance(tok, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from .hub import resolve_model_path

        tok = AutoTokenizer.from_pretrained(str(resolve_model_path(tok)))
    return tok


def _save_tokenizer(tok, folder: Path, model_max_length: int) -> None:
    old = tok.model_max_length
    tok.model_max_length = int(model_max_length)
    try:
        tok.save_pretrained(str(folder))
    finally:
        tok.model_max_length = old


def _encoder_state_dict(params: Mapping, config: EncoderConfig) -> dict:
    """The encoder's tensors under bare ``AutoModel`` keys (no base-model prefix, no head)."""
    from .hf_io import _get, weight_table

    out = {}
    for entry in weight_table(config):
        if entry.head or not entry.base:
            continue
        value = np.asarray(jax.device_get(_get({"encoder": params}, entry.path)), dtype=np.float32)
        out[entry.key] = np.ascontiguousarray(value.T if entry.linear else value)
    if config.family == "bert":  # BertModel has a pooler; unused by sentence-transformers' pooling: zeros
        H = config.hidden_size
        out["pooler.dense.weight"] = np.zeros((H, H), np.float32)
        out["pooler.dense.bias"] = np.zeros((H,), np.float32)
    return out


def _encoder_from_state_dict(state: Mapping[str, np.ndarray], config: EncoderConfig) -> dict:
    from .hf_io import _set, weight_table

    tree: dict = {}
    for entry in weight_table(config):
        if entry.head or not entry.base:
            continue
        if entry.key not in state:
            raise ValueError(f"exported encoder lacks {entry.key!r}")
        value = np.asarray(state[entry.key], np.float32)
        _set(tree, entry.path, value.T if entry.linear else value)
    return tree["encoder"]


def _base_model_config(config: EncoderConfig) -> dict:
    hf = config.to_hf().to_dict()
    hf["architectures"] = [_HF_NAMES[config.family][1] + "Model"]
    for k in ("id2label", "label2id", "num_labels", "problem_type"):
        hf.pop(k, None)
    return hf


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def model_card(info: Mapping[str, Any]) -> str:
    """The ``README.md`` of an exported student: base model, kind, teachers, objective, data,
    metrics, training lengths, pile_jax version, and how to load it."""
    card = dict(info.get("card") or {})
    kind = info["kind"]
    lines = ["---", "library_name: " + ("sentence-transformers" if kind in ("cross_encoder", "bert_dot", "query_encoder")
                                    else "pile_jax"),
             "tags:", "- pile_jax", "- knowledge-distillation", "- reranking", f"- {kind}"]
    if info.get("base"):
        lines.append(f"base_model: {info['base']}")
    lines += ["---", "", f"# {card.get('name') or kind + ' student'}", "",
              f"A `{kind}` ranking student trained with pile_jax {info.get('pile_jax_version', '')} "
              "(knowledge distillation from cross-encoder teachers).", "",
              "| | |", "|---|---|",
              f"| base model | {info.get('base') or 'unknown'} |",
              f"| student | `{kind}` {json.dumps(info.get('module') or {}, sort_keys=True)} |",
              f"| encoder layers | {(info.get('encoder_config') or {}).get('num_layers', 'n/a')} |",
              f"| training max_length (pairs) | {info.get('max_length')} |",
              f"| max_query_length / max_doc_length | {info.get('max_query_length')} / {info.get('max_doc_length')} |",
              f"| teachers | {', '.join(map(str, card.get('teachers') or [])) or 'unknown'} |",
              f"| objective | {json.dumps(card['objective'], sort_keys=True) if card.get('objective') else 'unknown'} |",
              f"| training data | {card.get('data') or 'unknown'} |",
              f"| pile_jax version | {info.get('pile_jax_version')} |", ""]
    metrics = card.get("metrics")
    if metrics:
        lines += [f"## Metrics ({card.get('metrics_split', 'test')})", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {float(v):.4f} |" for k, v in metrics.items() if isinstance(v, (int, float))]
        lines += [f"| {k} (selection) | {float(v):.4f} |" for k, v in card.items()
                  if k.startswith("dev_") and isinstance(v, (int, float))]
        lines.append("")
    lines += ["## Usage", "", "```python"]
    if kind == "cross_encoder":
        lines += ["from sentence_transformers import CrossEncoder", "",
                  "model = CrossEncoder('PATH')  # raw logits; pairs truncated at the training max_length",
                  "scores = model.predict([('query', 'document'), ...])", "",
                  "# or in JAX: pile_jax.models.Reranker.from_pretrained('PATH')"]
    elif kind == "query_encoder":
        lines += ["from sentence_transformers import SentenceTransformer", "",
                  "queries = SentenceTransformer('PATH')                    # the trained query encoder",
                  "documents = SentenceTransformer('PATH/document_encoder') # frozen: an existing index stays valid",
                  "score = (queries.encode(['query']) * documents.encode(['document'])).sum(-1)"]
    elif kind == "bert_dot":
        lines += ["from sentence_transformers import SentenceTransformer", "",
                  "model = SentenceTransformer('PATH')",
                  "q, d = model.encode(['query']), model.encode(['document'])",
                  "score = (q * d).sum(-1)  # the student's score: the dot product"]
    lines += ["", "# any pile_jax student:", "from pile_jax import rankers",
              "ranker = rankers.load_student('PATH')",
              "scores = ranker.score_fn(ranker.params, ranker.featurize(['query'], [['doc a', 'doc b']]))",
              "```", "", "Folder format: see `pile_jax.models.export`.", ""]
    return "\n".join(lines)


def _copy_tree(src: Path, dest, *, last: str | None = None) -> None:
    """Copy every file of the local folder ``src`` to ``dest`` (local or URL) through pile_jax.io
    (the file ``last``, relative to ``src``, after all others)."""
    from pile_jax import io as pio

    files = [f for f in sorted(src.rglob("*")) if f.is_file()]
    files.sort(key=lambda f: f.relative_to(src).as_posix() == last)
    for f in files:
        pio.write_bytes(pio.as_path(dest) / f.relative_to(src).as_posix(), f.read_bytes())


# ----------------------------------------------------------------------------- manifest, staging
def _check_finite_params(params: Mapping, path) -> None:
    """Refuses parameters holding NaN or Inf (a diverged run) before anything is written."""
    for key, value in flatten_params(params).items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise DataError(path, None, f"not exported: parameter {key} holds NaN or Inf values (a training run "
                                        "that diverged?)")


def _is_replaceable(folder: Path) -> bool:
    """An existing export target may be replaced only when empty or a pile_jax export."""
    return not any(folder.iterdir()) or (folder / STUDENT_FILE).is_file() or (folder / MANIFEST_FILE).is_file()


class _staging_folder:
    """``with _staging_folder(path) as folder:`` build the export in ``folder``; on success it
    replaces ``path`` whole (locally: a fresh sibling folder renamed into place, the old one
    removed after; a URL: the old objects deleted, then the new ones copied, manifest last). On
    an error the staging folder is removed and ``path`` is left as it was."""

    def __init__(self, path):
        from pile_jax import io as pio

        self.url = pio.is_url(path)
        self.target = pio.as_path(path) if self.url else Path(path)
        if not self.url:
            if self.target.is_file():
                raise DataError(self.target, None, "is a file; an export is a folder")
            if self.target.is_dir() and not _is_replaceable(self.target):
                raise DataError(self.target, None, "exists and holds files that are not a pile_jax export; "
                                                   "export into a new or empty folder")

    def __enter__(self) -> Path:
        if self.url:
            self._tmp = tempfile.mkdtemp(prefix="pile_jax_export_")
            self.stage = Path(self._tmp)
        else:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.stage = self.target.parent / f".{self.target.name}.export-{uuid.uuid4().hex[:8]}"
            self.stage.mkdir()
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return False
        try:
            if self.url:
                if self.target.exists():
                    self.target.rmtree()
                _copy_tree(self.stage, self.target, last=MANIFEST_FILE)
            else:
                old = None
                if self.target.exists():
                    old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
                    os.replace(self.target, old)
                try:
                    os.replace(self.stage, self.target)
                except BaseException:
                    if old is not None:
                        os.replace(old, self.target)
                    raise
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            if self.stage.exists():
                shutil.rmtree(self.stage, ignore_errors=True)
        return False


# ----------------------------------------------------------------------------- export
def export_student(path, *, kind: str, params: Mapping, tokenizer, module=None, config: EncoderConfig | None = None,
                   max_length: int, max_query_length: int, max_doc_length: int | None = None,
                   base: str | None = None, card: Mapping[str, Any] | None = None, document_index=None) -> str:
    """Write a student to the folder ``path`` (local or URL) in its kind's format (module docstring).

    ``module``: the student's Flax module (two-tower kinds); ``config``: the encoder config
    (cross_encoder; taken from ``module.config`` otherwise). ``params``: float32 master weights.
    ``tokenizer``: a transformers tokenizer, a featuriser holding one, or a folder. ``card``:
    ``teachers``, ``objective``, ``data``, ``metrics`` (+ ``metrics_split``), ``name`` for the
    model card. ``document_index``: the frozen
    :class:`~pile_jax.models.frozen_docs.DocumentIndex` (kind ``query_encoder``). Returns ``str(path)``.
    """
    from safetensors.numpy import save as st_save

    if kind not in INPUT_KIND_OF:
        raise ValueError(f"unknown student kind {kind!r}; use one of {tuple(INPUT_KIND_OF)}")
    if config is None and module is not None:
        config = getattr(module, "config", None)
    if kind != "tk" and config is None:
        raise ValueError(f"export_student({kind!r}): pass the encoder config (or the module)")
    if kind != "cross_encoder" and module is None:
        raise ValueError(f"export_student({kind!r}): pass the student module")
    if kind == "query_encoder" and document_index is None:
        raise ValueError("export_student('query_encoder'): pass the frozen document_index")
    info: dict[str, Any] = {
        "format": "pile_jax_student", "format_version": FORMAT_VERSION, "kind": kind, "input_kind": INPUT_KIND_OF[kind],
        "module": _module_options(module) if kind != "cross_encoder" else {},
        "max_length": int(max_length), "max_query_length": int(max_query_length),
        "max_doc_length": None if max_doc_length is None else int(max_doc_length),
        "base": None if base is None else str(base), "card": json.loads(json.dumps(dict(card or {}), default=str)),
        "pile_jax_version": _pile_jax_version(),
        "precision": _precision_policy(),   # how the exported scores were computed (pile_jax.numerics)
    }
    if config is not None:
        info["encoder_config"] = config.to_dict()
    _check_finite_params(params, path)
    tok = _resolve_tokenizer(tokenizer)
    with _staging_folder(path) as folder:
        if kind == "cross_encoder":
            from .hf_io import export_pretrained

            export_pretrained(params, config.replace(dtype="float32"), folder)
            seq_len = int(max_length)
            _write_json(folder / "sentence_bert_config.json", {"max_seq_length": seq_len, "do_lower_case": False})
        elif kind == "bert_dot":
            seq_len = int(max_doc_length or max_length) + _special_tokens(tok)  # [CLS] d [SEP]
            _write_sentence_transformer(folder, module, config, params, seq_len)
            info["sentence_transformers_max_seq_length"] = seq_len
        elif kind == "query_encoder":
            seq_len = int(max_query_length) + _special_tokens(tok)             # [CLS] q [SEP]
            _write_sentence_transformer(folder, module, config, params, seq_len)
            info["sentence_transformers_max_seq_length"] = seq_len
            info["document_encoder"] = _write_document_encoder(folder / DOCUMENT_ENCODER_DIR, document_index, tok)
        else:
            seq_len = int(max(max_length, (max_doc_length or 0)))
            flat = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in flatten_params(params).items()}
            (folder / "model.safetensors").write_bytes(st_save(flat, metadata={"format": "pile_jax", "kind": kind}))
        _save_tokenizer(tok, folder, seq_len)
        _write_json(folder / STUDENT_FILE, info)
        (folder / "README.md").write_text(model_card(info))
        write_manifest(folder, info)
    log.info("exported the %s student to %s", kind, path)
    return str(path)


def _precision_policy() -> dict:
    from pile_jax.numerics import policy

    return policy()


def _special_tokens(tokenizer) -> int:
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    try:
        return int(tok.num_special_tokens_to_add(pair=False))
    except Exception:  # pragma: no cover
        return 2


def _write_sentence_transformer(folder: Path, module, config: EncoderConfig, params: Mapping, seq_len: int) -> None:
    from safetensors.numpy import save_file

    opts = _module_options(module)
    save_file(_encoder_state_dict(params["encoder"], config), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    _write_json(folder / "config.json", _base_model_config(config))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling = opts.get("pooling", "cls")
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if opts.get("compress_dim"):
        kernel = np.asarray(jax.device_get(params["compressor"]["kernel"]), np.float32)
        bias = np.asarray(jax.device_get(params["compressor"]["bias"]), np.float32)
        (folder / "2_Dense").mkdir()
        save_file({"linear.weight": np.ascontiguousarray(kernel.T), "linear.bias": bias},
                  str(folder / "2_Dense" / "model.safetensors"))
        _write_json(folder / "2_Dense" / "config.json", {
            "in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]), "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"})
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if opts.get("normalize"):
        n = len(modules)
        (folder / f"{n}_Normalize").mkdir()
        modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": int(seq_len), "do_lower_case": False})


def _write_document_encoder(folder: Path, index, tok) -> dict:
    """The frozen document encoder of a query_encoder student as a sentence-transformers folder."""
    from .students import BertDot

    folder.mkdir(parents=True)
    seq_len = int(index.tokens.max_doc_length) + _special_tokens(tok)
    module = BertDot(index.config, pooling=index.pooling, normalize=index.normalize)
    _write_sentence_transformer(folder, module, index.config.replace(dtype="float32"), {"encoder": index.params}, seq_len)
    _save_tokenizer(tok, folder, seq_len)
    spec = index.spec()
    return {"path": DOCUMENT_ENCODER_DIR, "source": spec["doc_encoder"], "num_layers": spec["doc_layers"],
            "pooling": spec["doc_pooling"], "normalize": spec["doc_normalize"],
            "max_doc_length": spec["max_doc_length"], "encoder_config": index.config.to_dict(),
            "index_dtype": str(index.config.dtype)}   # float32: the vectors the query tower trained against


# ----------------------------------------------------------------------------- reload
def read_student_info(path) -> dict:
    """The ``pile_jax_student.json`` of an exported folder (``FileNotFoundError`` naming it if absent)."""
    from .hub import resolve_model_path

    folder = Path(resolve_model_path(path))
    f = folder / STUDENT_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: {folder} is not a pile_jax student export "
                                "(a plain Hugging Face cross-encoder folder loads with Reranker.from_pretrained)")
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{f}: invalid JSON ({err})") from err
    if info.get("format") != "pile_jax_student" or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{f}: not a pile_jax student file of format version <= {FORMAT_VERSION}")
    if info.get("kind") not in INPUT_KIND_OF:
        raise ValueError(f"{f}: kind: unknown student kind {info.get('kind')!r}")
    return info


def load_student(path, *, dtype: str | None = None):
    """``(module, params, score_fn, input_kind)`` of an exported student folder (any kind).

    The parameters are the exported float32 tensors, unchanged; ``dtype`` overrides the compute
    dtype stored with the encoder config (e.g. ``"bfloat16"``). The folder is checked against its
    manifest first (:func:`verify_export`)."""
    from safetensors.numpy import load_file

    from .hub import resolve_model_path
    from .students import BertDot, ColBERT, PreTT, TK, make_score_fn

    folder = Path(resolve_model_path(path))
    info = read_student_info(folder)
    verify_export(folder)
    kind = info["kind"]
    config = None
    if info.get("encoder_config") is not None:
        config = EncoderConfig(**info["encoder_config"])
        if dtype is not None:
            config = config.replace(dtype=dtype)
    if kind == "cross_encoder":
        from .cross_encoder import CrossEncoder
        from .hf_io import load_pretrained

        hf_config, params = load_pretrained(folder, num_labels=config.num_labels, dtype=config.dtype,
                                            remat=config.remat, new_head=False, attention_impl=config.attention_impl)
        module = CrossEncoder(config)
        return module, params, make_score_fn(module, kind), info["input_kind"]
    opts = dict(info.get("module") or {})
    if kind == "tk":
        if "mu" in opts:
            opts["mu"] = tuple(opts["mu"])
        module = TK(**opts)
    else:
        module = {"bert_dot": BertDot, "query_encoder": BertDot, "colbert": ColBERT, "prett": PreTT}[kind](config, **opts)
    if kind in ("bert_dot", "query_encoder"):
        params = {"encoder": _encoder_from_state_dict(load_file(str(folder / "model.safetensors")), config)}
        if opts.get("compress_dim"):
            dense = load_file(str(folder / "2_Dense" / "model.safetensors"))
            params["compressor"] = {"kernel": np.ascontiguousarray(dense["linear.weight"].T),
                                    "bias": dense["linear.bias"]}
    else:
        params = unflatten_params(load_file(str(folder / "model.safetensors")))
    params = jax.tree_util.tree_map(jax.numpy.asarray, params)
    return module, params, make_score_fn(module, kind), info["input_kind"]
