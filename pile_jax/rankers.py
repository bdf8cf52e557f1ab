"""Ready-made :class:`~pile_jax.scoring.Ranker` s: what the train loop and the scorers run.

- :func:`cross_encoder`: a (possibly truncated) pretrained BERT-family cross-encoder;
- :func:`biencoder_cosine`: the zero-shot bi-encoder cosine (mean pooling, L2-normalised), the
  way all-MiniLM-L6-v2 was trained (sentence-transformers' pooling config for that model);
- :func:`student`: any student architecture of :mod:`pile_jax.models.students`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pile_jax.models.tokenize import (
    DEFAULT_MAX_DOC_LENGTH,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_QUERY_LENGTH,
    DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,
)
from pile_jax.caches import BoundedCache
from pile_jax.numerics import SCORE_PRECISION
from pile_jax.scoring import Ranker


@functools.lru_cache(maxsize=16)
def _cross_encoder_parts(path: str, num_layers, max_length: int, max_query_length: int, dtype: str, remat: bool):
    """Model, tokenizer and the (identity-stable) score/featurize functions for one shape config.

    Cached, so runs that differ only in seed or objective reuse the same functions and hence
    JAX's compiled executables (compilation dominates short CPU runs). The score function is
    the students' cross-encoder one (:func:`pile_jax.models.students.make_score_fn`)."""
    from pile_jax.models import CrossEncoder, EncoderConfig, PairTokenizer
    from pile_jax.models.students import make_score_fn

    hf = json.loads((Path(path) / "config.json").read_text())
    config = EncoderConfig.from_hf(hf, num_labels=1, dtype=dtype, remat=remat)
    if num_layers is not None:
        config = config.replace(num_layers=int(num_layers))
    model = CrossEncoder(config)
    tokenizer = PairTokenizer(path, max_length=max_length, max_query_length=max_query_length)
    return config, model, tokenizer, make_score_fn(model, "cross_encoder"), tokenizer.featurize


def cross_encoder(
    base: str,
    *,
    num_layers: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
    dtype: str = "float32",
    seed: int = 0,
    remat: bool = False,
    new_head: bool | None = None,
) -> Ranker:
    """Cross-encoder from a Hugging Face folder (or "all-MiniLM-L6-v2"), first ``num_layers``
    layers. A checkpoint without a score head gets a new one (seeded) when ``new_head=True``
    (logged at INFO: building a teacher/student to train), is an error with ``new_head=False``
    (scoring with a checkpoint), and gets one with a WARNING when ``new_head`` is None."""
    from pile_jax.models import load_pretrained, resolve_model_path

    path = str(resolve_model_path(base))
    config, model, tokenizer, score_fn, featurize = _cross_encoder_parts(
        path, None if num_layers is None else int(num_layers), int(max_length), int(max_query_length), dtype, bool(remat))
    _, params = load_pretrained(path, num_layers=num_layers, seed=seed, new_head=new_head)
    return Ranker(params=params, score_fn=score_fn, featurize=featurize, kind="cross_encoder",
                  meta={"config": config, "path": path, "tokenizer": tokenizer, "features": tokenizer, "model": model,
                        "base": base, "max_length": int(max_length), "max_query_length": int(max_query_length)})


def biencoder_cosine(base: str, *, max_length: int = DEFAULT_MAX_LENGTH, buckets=(16, 32, 64, 128, 192, 256, 384, 512)) -> Ranker:
    """Zero-shot bi-encoder: cosine of mean-pooled, L2-normalised token vectors (no training).

    Texts are ``[CLS] text [SEP]`` with at most ``max_length - 2`` content tokens (the two-tower
    featuriser, both towers alike); ``meta["encode_texts"]`` encodes texts once each."""
    from pile_jax.models import resolve_model_path
    from pile_jax.models.frozen_docs import DocumentIndex
    from pile_jax.models.tokenize import TwoTowerTokenizer

    path = resolve_model_path(base)
    features = TwoTowerTokenizer(path, max_query_length=max_length - 2, max_doc_length=max_length - 2,
                                 query_special=True, doc_special="cls_sep", buckets=buckets)
    # the encoder is a frozen document index's: BertDot's tower, mean pooling, L2-normalised
    index = DocumentIndex(path, tokens=features, pooling="mean", normalize=True)

    def score_fn(params, batch, *, rng=None, train=False):
        q = index.encode(params, batch["query_ids"], batch["query_mask"])                     # [B, H]
        B, n, L = batch["doc_ids"].shape
        d = index.encode(params, batch["doc_ids"].reshape(B * n, L), batch["doc_mask"].reshape(B * n, L))
        return jnp.einsum("bh,bnh->bn", q, d.reshape(B, n, -1), precision=SCORE_PRECISION)

    def encode_texts(enc_params, texts: Sequence[str], *, batch_size: int = 64, progress: str | None = None,
                     devices=None, distributed: bool | None = None) -> np.ndarray:
        """L2-normalised vectors [N, H] of ``texts``, each unique text tokenised once and encoded
        once per process (with the pretrained params, vectors are kept for later calls and for a
        frozen document index of the same model, :mod:`pile_jax.models.frozen_docs`), in
        length-sorted batches, data-parallel (:meth:`DocumentIndex.encode_rows`)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, index.dim), np.float32)
        unique = list(dict.fromkeys(texts))
        store = features.tokenize_texts(unique, unique)
        out = index.encode_rows(store, store.rows(np.asarray(unique, dtype=object)), params=enc_params,
                                batch_size=batch_size, devices=devices, distributed=distributed, progress=progress)
        position = {t: i for i, t in enumerate(unique)}
        return out[np.fromiter((position[t] for t in texts), np.int64, len(texts))]

    return Ranker(params=index.params, score_fn=score_fn, featurize=features.featurize, kind="biencoder_cosine",
                  meta={"config": index.config, "path": path, "encode_texts": encode_texts, "features": features})


def biencoder_score_candidates(
    ranker: Ranker,
    candidates: Mapping[str, Sequence[str]],
    queries: Mapping[str, str],
    docs: Mapping[str, str],
    *,
    batch_size: int = 64,
    progress: str | None = None,
) -> dict[str, dict[str, float]]:
    """``{qid: {doc_id: cosine}}`` with every query and every document encoded once (a document
    in many candidate lists is not re-encoded): the score of :func:`biencoder_cosine`."""
    encode = ranker.meta["encode_texts"]
    qids = list(candidates)
    doc_ids = sorted({d for q in qids for d in candidates[q]})
    qv = encode(ranker.params, [queries[q] for q in qids], batch_size=batch_size,
                progress=progress and f"{progress} (queries)")
    dv = encode(ranker.params, [docs[d] for d in doc_ids], batch_size=batch_size,
                progress=progress and f"{progress} (documents)")
    row = {d: i for i, d in enumerate(doc_ids)}
    return {q: {d: float(qv[i] @ dv[row[d]]) for d in candidates[q]} for i, q in enumerate(qids)}


#: (module, score function, featuriser, input kind) per student shape config (content key: kind,
#: checkpoint folder, layers, lengths, dtype, remat, options), so seeds and objectives reuse the
#: compiled train/score steps; owned here, at most 16 shapes per process
STUDENT_PARTS = BoundedCache("pile_jax.rankers", "student_parts", maxsize=16)


def _student_parts(kind: str, path: str, num_layers, max_length: int, max_query_length: int, max_doc_length: int,
                   dtype, remat, opts: tuple, seed: int):
    """``(module, score_fn, features, input_kind, params or None)`` of one student shape config.

    Cached in :data:`STUDENT_PARTS` (see :func:`_cross_encoder_parts`); on a cache miss the
    params built for ``seed`` come back too (the checkpoint is read once)."""
    from pile_jax.models.features import make_features, split_doc_side
    from pile_jax.models.students import build_student

    key = (kind, path, num_layers, max_length, max_query_length, max_doc_length, dtype, remat, opts)
    kept = STUDENT_PARTS.get(key)
    if kept is not None:
        return (*kept, None)
    module_opts, doc_side = split_doc_side(kind, dict(opts))
    module, params, score_fn, input_kind = build_student(kind, path, seed=seed, num_layers=num_layers, dtype=dtype,
                                                         remat=remat, **module_opts)
    features = make_features(input_kind, path, max_query_length=max_query_length, max_doc_length=max_doc_length,
                             max_length=max_length, **({"dtype": dtype, **doc_side} if input_kind == "frozen_docs" else {}))
    STUDENT_PARTS.put(key, (module, score_fn, features, input_kind))
    return module, score_fn, features, input_kind, params


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def student(
    kind: str,
    base: str = "all-MiniLM-L6-v2",
    *,
    num_layers: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_query_length: int = DEFAULT_TWO_TOWER_MAX_QUERY_LENGTH,  # also for kind="cross_encoder" here
    max_doc_length: int = DEFAULT_MAX_DOC_LENGTH,
    dtype: str | None = None,
    remat: bool | None = None,
    seed: int = 0,
    **opts,
) -> Ranker:
    """A student of :mod:`pile_jax.models.students` (``kind`` in ``cross_encoder``, ``bert_dot``,
    ``colbert``, ``prett``, ``tk``, ``query_encoder``) from a Hugging Face folder (or "all-MiniLM-L6-v2"): the first
    ``num_layers`` encoder layers are loaded, new parts (heads, compressors, TK's Transformer)
    are initialised from ``seed``. ``max_length`` bounds cross-encoder pairs; the two-tower kinds
    use ``max_query_length`` / ``max_doc_length``. ``opts`` are :func:`build_student`'s per-kind
    options (e.g. ``split_layer`` for prett, ``compress_dim`` for colbert, ``tk_layers`` for tk);
    ``query_encoder`` (a query tower scored against a frozen, precomputed document index,
    :mod:`pile_jax.models.frozen_docs`) also takes ``doc_encoder`` (default ``base``),
    ``doc_layers`` (default all), ``doc_pooling`` (``mean``), ``doc_normalize`` (true); its
    documents keep ``max_doc_length`` content tokens.

    The module, score function and featuriser are cached per shape config, so rankers that differ
    only in ``seed`` share JAX's compiled steps. ``meta``: ``module``, ``input_kind``, ``path``,
    ``features`` (the tokenise-once featuriser: ``tokenize_texts`` / ``assemble`` / ``item_lengths``).
    """
    from pile_jax.models import resolve_model_path
    from pile_jax.models.features import split_doc_side
    from pile_jax.models.students import build_student

    path = str(resolve_model_path(base))
    nl = None if num_layers is None else int(num_layers)
    key_opts = _hashable(dict(opts))
    module, score_fn, features, input_kind, params = _student_parts(
        kind, path, nl, int(max_length), int(max_query_length), int(max_doc_length), dtype, remat, key_opts, int(seed))
    if params is None:
        _, params, _, _ = build_student(kind, path, seed=seed, num_layers=nl, dtype=dtype, remat=remat,
                                        **split_doc_side(kind, dict(opts))[0])
    return Ranker(params=params, score_fn=score_fn, featurize=features.featurize, kind=kind,
                  meta={"module": module, "input_kind": input_kind, "path": path, "num_layers": nl,
                        "features": features, "base": base, "max_length": int(max_length),
                        "max_query_length": int(max_query_length), "max_doc_length": int(max_doc_length),
                        "dtype": dtype, "remat": remat, "options": dict(opts)})


#: the keys of a student spec (``student:`` of ``pile-jax train``, ``students:`` of ``run``, each
#: student of ``study.students``) that :func:`student_from_config` reads besides the kind's options
STUDENT_SPEC_KEYS = ("kind", "base", "num_layers", "max_length", "max_query_length", "max_doc_length", "dtype",
                     "remat", "options")


def student_options() -> dict[str, tuple[str, ...]]:
    """Per student kind, the options its spec may set (:func:`pile_jax.models.students.build_student`'s,
    plus the frozen document side of ``query_encoder``)."""
    from pile_jax.models.features import STUDENT_OPTIONS

    return dict(STUDENT_OPTIONS)


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


def check_layers(c, node: Mapping, key: str, where: str, base) -> None:
    """Schema helper: ``node[key]`` an integer from 1 to the depth of the checkpoint ``base``
    (read from its config.json, :func:`pile_jax.models.hub.checkpoint_depth`)."""
    from pile_jax.models.hub import checkpoint_depth

    c.number(node, key, where, integer=True, low=1)
    if node.get(key) is None or base is None:
        return
    try:
        depth, folder = checkpoint_depth(base)
    except (OSError, ValueError, KeyError) as e:
        c.fail(f"{where}.{key}", f"cannot read the model {base!r}: {e}")
    if int(node[key]) > depth:
        c.fail(f"{where}.{key}", f"{node[key]} exceeds the {depth} layers of {folder}")


def check_student_options(c, kind: str, options, where: str, *, base, num_layers=None) -> dict:
    """Schema helper: a student's ``options`` (the known keys of ``kind``, each value's type, range
    or choice, :data:`OPTION_RULES`): layer counts within the checkpoint's depth, PreTT's
    ``split_layer`` within the student's layers, TK's dropout below 1. Returns the options."""
    from pile_jax.models.hub import checkpoint_depth

    options = c.section(options, where, student_options().get(kind, ()))
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


#: the keys of a job's ``model:`` section that are student defaults
MODEL_DEFAULT_KEYS = ("base", "max_length", "max_query_length", "max_doc_length", "dtype")


def student_defaults(model: Mapping | None, **length_defaults) -> dict:
    """A job's defaults for :func:`student_from_config`: ``length_defaults`` (the job's documented
    lengths, e.g. ``PIPELINE_MAX_LENGTH``) overridden by the ``model:`` section's ``base``,
    lengths and ``dtype`` where it sets them."""
    model = dict(model or {})
    return {**length_defaults, **{k: model[k] for k in MODEL_DEFAULT_KEYS if k in model}}


def student_from_config(spec: Mapping, *, seed: int = 0, defaults: Mapping | None = None) -> Ranker:
    """The one student factory of ``run``, ``study`` and ``train``: :func:`student` from a config
    spec ``{kind (default cross_encoder), base (default all-MiniLM-L6-v2), num_layers, max_length,
    max_query_length, max_doc_length (default max_length), dtype, remat, options: {...}}``; kind
    options may also sit in the spec itself (a study cell). ``defaults``: the job's values for keys
    the spec lacks (its ``model:`` section and length defaults). A cross-encoder's score head is new
    (seeded) where the checkpoint has none; the two-tower kinds keep the encoder only."""
    merged = {**dict(defaults or {}), **{k: v for k, v in dict(spec).items() if v is not None or k == "options"}}
    kind = merged.pop("kind", "cross_encoder")
    options = dict(merged.pop("options", None) or {})
    options.update({k: merged.pop(k) for k in list(merged) if k not in STUDENT_SPEC_KEYS})
    max_length = int(merged.get("max_length", DEFAULT_MAX_LENGTH))
    return student(kind, merged.get("base", "all-MiniLM-L6-v2"), num_layers=merged.get("num_layers"),
                   max_length=max_length, max_query_length=int(merged.get("max_query_length", DEFAULT_MAX_QUERY_LENGTH)),
                   max_doc_length=int(merged.get("max_doc_length", max_length)), dtype=merged.get("dtype"),
                   remat=merged.get("remat"), seed=int(seed), **options)


def student_record(ranker: Ranker) -> dict:
    """The spec that rebuilds ``ranker`` with :func:`student_from_config` (``model.json``,
    ``pile-jax export <work folder>``)."""
    meta = ranker.meta
    return {"kind": ranker.kind, "base": meta.get("base"), "num_layers": meta.get("num_layers"),
            "max_length": meta["max_length"], "max_query_length": meta["max_query_length"],
            "max_doc_length": meta["max_doc_length"], "dtype": meta.get("dtype"), "remat": meta.get("remat"),
            "options": dict(meta.get("options") or {})}


def export_ranker(ranker: Ranker, params, path, *, card: Mapping | None = None) -> str:
    """Export a trained :func:`cross_encoder` or :func:`student` ranker with ``params`` to the
    folder ``path`` in its kind's format (:mod:`pile_jax.models.export`: a Hugging Face /
    sentence-transformers folder for cross-encoders and BERT-dot, pile_jax's own for ColBERT,
    PreTT and TK), with a model card built from ``card`` (teachers, objective, data, metrics).
    A model whose scores on a probe batch (:func:`check_probe_scores`) are not finite is refused
    (:class:`~pile_jax.data.errors.DataError` naming ``path``) before anything is written."""
    from pile_jax.models.export import export_student

    check_probe_scores(ranker, params, path)
    meta = ranker.meta or {}
    kind = ranker.kind
    module = meta.get("module") if kind != "cross_encoder" else None
    config = meta.get("config") if kind == "cross_encoder" else getattr(module, "config", None)
    if kind == "cross_encoder" and config is None and meta.get("module") is not None:
        config = meta["module"].config
    return export_student(path, kind=kind, params=params, tokenizer=meta["path"], module=module, config=config,
                          max_length=meta.get("max_length", DEFAULT_MAX_LENGTH),
                          max_query_length=meta.get("max_query_length", DEFAULT_MAX_QUERY_LENGTH),
                          max_doc_length=meta.get("max_doc_length"), base=meta.get("base"), card=card,
                          document_index=getattr(meta.get("features"), "index", None) if kind == "query_encoder" else None)


PROBE_QUERIES = ("what is the boundary layer thickness", "heat transfer at the wall")
PROBE_DOCS = (("the boundary layer on a flat plate in supersonic flow", "a short note about wings"),
              ("heat flux measured at the wall of a tube", "nothing relevant here"))


def check_probe_scores(ranker: Ranker, params, path=None) -> None:
    """Scores a fixed probe batch (2 queries x 2 documents) with ``params``; raises
    :class:`~pile_jax.data.errors.DataError` (naming ``path``) when a score is NaN or Inf: the
    model would rank nothing (a diverged run's parameters)."""
    from pile_jax.data.errors import DataError
    from pile_jax.scoring import cached_scorer

    features = (ranker.meta or {}).get("features")
    if hasattr(features, "index_documents"):
        # a frozen document index: probe the query tower against fixed unit vectors, so the probe
        # adds nothing to the index's per-process vector cache
        ids, mask = features.encode_queries(list(PROBE_QUERIES))
        dim = int(features.index.dim)
        feats = {"query_ids": ids, "query_mask": mask,
                 "doc_vecs": np.full((len(PROBE_QUERIES), len(PROBE_DOCS[0]), dim), dim ** -0.5, np.float32)}
    else:
        feats = dict(ranker.featurize(list(PROBE_QUERIES), [list(d) for d in PROBE_DOCS]))
    feats.setdefault("mask", np.ones((len(PROBE_QUERIES), len(PROBE_DOCS[0])), bool))
    scores = np.asarray(jax.device_get(cached_scorer(ranker.score_fn)(params, feats)), np.float64)
    if not np.isfinite(scores).all():
        raise DataError(path, None, f"not exported: the model's scores on a probe batch are not finite "
                                    f"({int((~np.isfinite(scores)).sum())} of {scores.size} NaN/Inf; a training run "
                                    "that diverged?)")


def load_student(path, *, dtype: str | None = None) -> Ranker:
    """A :class:`Ranker` for a folder written by :func:`export_ranker` (any student kind): the
    exported parameters, its score function and a featuriser with the training lengths
    (``max_length``, ``max_query_length``, ``max_doc_length`` of ``pile_jax_student.json``)."""
    from pile_jax.models.export import load_student as _load, read_student_info
    from pile_jax.models.hub import resolve_model_path
    from pile_jax.models.features import make_features

    folder = str(resolve_model_path(path))
    module, params, score_fn, input_kind = _load(folder, dtype=dtype)   # checks the manifest first
    info = read_student_info(folder)
    mq = int(info["max_query_length"])
    md = int(info.get("max_doc_length") or info["max_length"])
    doc_side = {}
    if input_kind == "frozen_docs":   # the frozen document encoder exported beside the query tower
        d = info["document_encoder"]
        doc_side = {"doc_encoder": str(Path(folder) / d["path"]), "doc_pooling": d["pooling"],
                    "doc_normalize": bool(d["normalize"]), "dtype": dtype}
    features = make_features(input_kind, folder, max_query_length=mq, max_doc_length=md,
                             max_length=int(info["max_length"]), **doc_side)
    meta = {"module": module, "input_kind": input_kind, "path": folder, "base": info.get("base"), "features": features,
            "max_length": int(info["max_length"]), "max_query_length": mq, "max_doc_length": md, "export": info}
    if info["kind"] == "cross_encoder":
        meta["config"] = module.config
    return Ranker(params=params, score_fn=score_fn, featurize=features.featurize, kind=info["kind"], meta=meta)
