"""Read and write Hugging Face checkpoint folders for ``CrossEncoder`` parameters.

* ``load_pretrained(path, *, num_layers=None, num_labels=1, dtype="float32", seed=0, strict=False,
  return_report=False) -> (EncoderConfig, params)`` (``+ LoadReport`` with ``return_report``).
  ``path`` is a local folder (or a name ``resolve_model_path`` knows) holding ``config.json`` and
  ``model.safetensors`` (sharded ``model.safetensors.index.json`` too); ``pytorch_model.bin`` is
  read only when torch is importable. Keys may carry the base-model prefix (``bert.``,
  ``roberta.``, ``electra.``, ``distilbert.``) or be bare (``AutoModel`` / sentence-transformers
  folders). ``num_layers=k`` keeps the first ``k`` layers. A score head absent from the checkpoint
  is initialised (normal(0.02) kernels, zero biases, from ``seed``) and reported (INFO with
  ``new_head=True``, WARNING by default; ``new_head=False`` makes it a ``ValueError``); a missing
  encoder weight, a shape mismatch, a missing ``config.json`` or an unsupported ``model_type``
  raise ``ValueError``/``FileNotFoundError`` naming the file and the key. Checkpoint keys that are
  not used (MLM heads, a RoBERTa pooler, dropped layers) are reported; ``strict=True`` turns any
  missing or unused key into a ``ValueError``.
* ``export_pretrained(params, config, path, *, tokenizer=None) -> Path`` writes ``config.json``
  (``architectures=[<Family>ForSequenceClassification]``, ``num_labels``; plus
  ``sentence_transformers.activation_fn = Identity`` so sentence-transformers' ``CrossEncoder``
  returns the raw logits pile_jax scores with) and ``model.safetensors`` in the exact layout of
  ``AutoModelForSequenceClassification`` (no missing / unexpected keys), and the tokenizer files
  when ``tokenizer`` (a transformers tokenizer, a ``PairTokenizer`` or a folder) is given.
* ``params_to_state_dict`` / ``state_dict_to_params`` are the pure key/array mappings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import EncoderConfig, hf_prefix
from .hub import resolve_model_path

__all__ = ["load_pretrained", "export_pretrained", "LoadReport", "params_to_state_dict",
           "state_dict_to_params", "read_state_dict", "weight_table"]

log = logging.getLogger(__name__)

# Buffers some checkpoints carry that are not parameters.
_IGNORED = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``load_pretrained`` did: ``initialized`` = HF keys absent from the checkpoint that were
    freshly initialised (the score head); ``unexpected`` = checkpoint keys not used;
    ``dropped_layers`` = layer indices cut by ``num_layers``; ``source`` = the weights file."""

    source: str
    initialized: tuple = ()
    unexpected: tuple = ()
    dropped_layers: tuple = ()


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: tuple        # path in the CrossEncoder params tree
    key: str           # HF key relative to the base model (base=True) or top-level (base=False)
    base: bool         # lives under the base-model prefix
    linear: bool       # torch Linear weight: transpose [out, in] <-> [in, out]
    head: bool         # part of the score head (may be initialised when absent)
    shape: tuple       # shape in the flax tree


def _dense_entries(path, key, n_in, n_out, *, base=True, head=False):
    return [_Entry(path + ("kernel",), key + ".weight", base, True, head, (n_in, n_out)),
            _Entry(path + ("bias",), key + ".bias", base, False, head, (n_out,))]


def _norm_entries(path, key, n):
    return [_Entry(path + ("scale",), key + ".weight", True, False, False, (n,)),
            _Entry(path + ("bias",), key + ".bias", True, False, False, (n,))]


def weight_table(config: EncoderConfig) -> list:
    """Every parameter of ``CrossEncoder(config)`` with its Hugging Face key and shape (list of entries)."""
    enc = ("encoder",)
    emb = enc + ("embeddings",)
    E, H, I = config.embedding_size, config.hidden_size, config.intermediate_size
    e = [_Entry(emb + ("word_embeddings", "embedding"), "embeddings.word_embeddings.weight", True, False, False,
                (config.vocab_size, E)),
         _Entry(emb + ("position_embeddings", "embedding"), "embeddings.position_embeddings.weight",
                True, False, False, (config.max_position_embeddings, E))]
    if config.type_vocab_size > 0:
        e.append(_Entry(emb + ("token_type_embeddings", "embedding"), "embeddings.token_type_embeddings.weight",
                        True, False, False, (config.type_vocab_size, E)))
    e += _norm_entries(emb + ("LayerNorm",), "embeddings.LayerNorm", E)
    if E != H:
        e += _dense_entries(enc + ("embeddings_project",), "embeddings_project", E, H)
    if config.family == "distilbert":
        names = {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
                 "attention_out": "attention.out_lin", "attention_norm": "sa_layer_norm",
                 "intermediate": "ffn.lin1", "output": "ffn.lin2", "output_norm": "output_layer_norm"}
        layer_fmt = "transformer.layer.{}."
    else:
        names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
        layer_fmt = "encoder.layer.{}."
    dims = {"intermediate": (H, I), "output": (I, H)}
    for i in range(config.num_layers):
        lp = enc + (f"layer_{i}",)
        for ours, theirs in names.items():
            key = layer_fmt.format(i) + theirs
            if ours.endswith("_norm"):
                e += _norm_entries(lp + (ours,), key, H)
            else:
                e += _dense_entries(lp + (ours,), key, *dims.get(ours, (H, H)))
    head, L = ("head",), config.num_labels
    if config.family == "bert":
        e += _dense_entries(head + ("pooler",), "pooler.dense", H, H, base=True, head=True)
        e += _dense_entries(head + ("classifier",), "classifier", H, L, base=False, head=True)
    elif config.family == "distilbert":
        e += _dense_entries(head + ("pre_classifier",), "pre_classifier", H, H, base=False, head=True)
        e += _dense_entries(head + ("classifier",), "classifier", H, L, base=False, head=True)
    else:
        e += _dense_entries(head + ("dense",), "classifier.dense", H, H, base=False, head=True)
        e += _dense_entries(head + ("out_proj",), "classifier.out_proj", H, L, base=False, head=True)
    return e


def _full_key(entry: _Entry, config: EncoderConfig) -> str:
    return f"{hf_prefix(config.family)}.{entry.key}" if entry.base else entry.key


# ----------------------------------------------------------------------------- reading
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(file: Path) -> dict:
    """All tensors of one ``.safetensors`` file as NumPy arrays (bf16 via ml_dtypes)."""
    data = file.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ValueError(f"{file}: not a valid safetensors file ({err})") from err
    out = {}
    base = 8 + n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dt = info["dtype"]
        if dt == "BF16":
            import ml_dtypes
            dtype = np.dtype(ml_dtypes.bfloat16)
        elif dt in _ST_DTYPES:
            dtype = np.dtype(_ST_DTYPES[dt])
        else:
            raise ValueError(f"{file}: tensor {key!r} has unsupported dtype {dt}")
        start, end = info["data_offsets"]
        out[key] = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
                                 offset=base + start).reshape(info["shape"])
    return out


def read_state_dict(folder) -> tuple:
    """``(state_dict, source_file)`` from a HF folder: safetensors (single or sharded) or
    ``pytorch_model.bin`` (needs torch)."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return _read_safetensors(single), single
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_safetensors(folder / shard))
        return state, index
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"{pt} is a PyTorch pickle; reading it needs torch, which is not installed. Install torch "
                "or convert the checkpoint to model.safetensors") from err
        sd = torch.load(pt, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}, pt
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _normalise_key(key: str) -> str:
    # TF-era checkpoints name LayerNorm parameters gamma/beta.
    if key.endswith(".gamma"):
        return key[:-6] + ".weight"
    if key.endswith(".beta"):
        return key[:-5] + ".bias"
    return key


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def state_dict_to_params(state: Mapping[str, Any], config: EncoderConfig, *, source: str = "<state_dict>",
                         seed: int = 0, original_layers: int | None = None) -> tuple:
    """Map a HF state dict onto ``CrossEncoder(config)`` params. Returns ``(params, LoadReport)``.

    Raises ``ValueError`` naming ``source`` and the key for missing encoder weights and shape
    mismatches. The head is initialised from ``seed`` where absent (HF's scheme: normal(0.02)
    kernels, zero biases; drawn with NumPy so loading compiles nothing).
    """
    state = {_normalise_key(k): v for k, v in state.items()}
    prefix = hf_prefix(config.family) + "."
    params: dict = {}
    used, initialized, missing = set(), [], []
    rng = np.random.default_rng(seed)
    for entry in weight_table(config):
        candidates = [prefix + entry.key, entry.key] if entry.base else [entry.key]
        key = next((c for c in candidates if c in state), None)
        expected = entry.shape
        if key is None:
            if entry.head:
                value = rng.normal(0.0, 0.02, entry.shape) if entry.path[-1] == "kernel" else np.zeros(entry.shape)
                _set(params, entry.path, jnp.asarray(value, jnp.float32))
                initialized.append(_full_key(entry, config))
            else:
                missing.append(candidates[0])
            continue
        used.add(key)
        value = np.asarray(state[key])
        if entry.linear:
            value = value.T
        if tuple(value.shape) != expected:
            shown = tuple(np.asarray(state[key]).shape)
            want = expected[::-1] if entry.linear else expected
            raise ValueError(
                f"{source}: weight {key!r} has shape {shown}, expected {want} for this "
                f"{config.family} config (hidden_size={config.hidden_size}, num_labels={config.num_labels})")
        _set(params, entry.path, jnp.asarray(value.astype(np.float32)))
    if missing:
        raise ValueError(f"{source}: missing encoder weights {missing[:8]}"
                         + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    layer_re = re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.")
    unexpected, dropped = [], set()
    for key in state:
        if key in used or _IGNORED.search(key):
            continue
        m = layer_re.search(key)
        if m and config.num_layers <= int(m.group(1)) < (original_layers or 0):
            dropped.add(int(m.group(1)))
            continue
        unexpected.append(key)
    report = LoadReport(source=str(source), initialized=tuple(initialized), unexpected=tuple(sorted(unexpected)),
                        dropped_layers=tuple(sorted(dropped)))
    return params, report


def load_pretrained(path, *, num_layers: int | None = None, num_labels: int = 1, dtype: str = "float32",
                    seed: int = 0, strict: bool = False, return_report: bool = False, remat: bool = False,
                    new_head: bool | None = None, attention_impl: str | None = None, encoder_only: bool = False):
    """Load a local Hugging Face folder as ``(EncoderConfig, params)`` for ``CrossEncoder``.

    See the module docstring. ``num_layers`` keeps the first k layers (1 <= k <= checkpoint layers).
    ``new_head`` says what a checkpoint without a score head means: ``True`` = initialise one, an
    expected step (logged at INFO: a teacher or student built from a bi-encoder); ``False`` = a
    ``ValueError`` (scoring needs a trained head); ``None`` (default) = initialise it with a
    WARNING. ``encoder_only=True``: the caller uses the encoder alone (a bi-encoder, a frozen
    document index, a two-tower student), so a missing head is expected and logged at DEBUG only.
    ``attention_impl`` goes to ``EncoderConfig.attention_impl``. A folder holding a pile_jax export
    manifest is verified against it first (:func:`pile_jax.models.manifest.verify_export`).
    """
    folder = resolve_model_path(path)
    if (folder / "pile_jax_manifest.json").is_file():   # a pile_jax export: every file as exported
        from .manifest import verify_export

        verify_export(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: {folder} is not a Hugging Face model folder")
    try:
        hf_cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file}: invalid JSON ({err})") from err
    try:
        config = EncoderConfig.from_hf(hf_cfg, num_labels=num_labels, dtype=dtype, remat=remat,
                                       attention_impl=attention_impl)
    except ValueError as err:
        raise ValueError(f"{cfg_file}: {err}") from err
    original = config.num_layers
    if num_layers is not None:
        if not 1 <= int(num_layers) <= original:
            raise ValueError(f"num_layers must be in [1, {original}] for {folder}, got {num_layers}")
        config = config.replace(num_layers=int(num_layers))
    state, source = read_state_dict(folder)
    params, report = state_dict_to_params(state, config, source=str(source), seed=seed, original_layers=original)
    if report.initialized:
        msg = f"{source}: no score head in the checkpoint"
        if new_head is False or (strict and not new_head):
            raise ValueError(f"{msg} (missing {list(report.initialized)}); it cannot score as it is. Load a "
                             "cross-encoder checkpoint, or pass new_head=True to initialise a new head to train")
        if encoder_only:
            log.debug("%s (unused: encoder only)", msg)
        elif new_head:
            log.info("%s: initialised a new score head %s, as requested (new_head=True)", msg,
                     list(report.initialized))
        else:
            log.warning("%s; initialised %s at random (pass new_head=True when that is intended, "
                        "new_head=False to make it an error)", msg, list(report.initialized))
    if report.unexpected:
        msg = f"{source}: unused checkpoint weights {list(report.unexpected)}"
        if strict:
            raise ValueError(msg)
        log.info(msg)
    return (config, params, report) if return_report else (config, params)


# ----------------------------------------------------------------------------- writing
def params_to_state_dict(params: Mapping, config: EncoderConfig) -> dict:
    """``CrossEncoder`` params -> HF ``...ForSequenceClassification`` state dict (float32 NumPy)."""
    table = weight_table(config)
    known = {e.path for e in table}
    extra = [".".join(p) for p in _leaf_paths(params) if p not in known]
    if extra:
        raise ValueError(f"params contain entries this {config.family} config does not define: {extra[:8]}")
    out = {}
    for entry in table:
        try:
            value = _get(params, entry.path)
        except (KeyError, TypeError):
            raise ValueError(f"params are missing {'/'.join(entry.path)} (HF key {_full_key(entry, config)!r})")
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        out[_full_key(entry, config)] = np.ascontiguousarray(value.T if entry.linear else value)
    return out


def _leaf_paths(tree: Mapping, prefix: tuple = ()) -> Iterable[tuple]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaf_paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


def export_pretrained(params: Mapping, config: EncoderConfig, path, *, tokenizer=None) -> Path:
    """Write a folder that ``AutoModelForSequenceClassification.from_pretrained`` loads cleanly."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = params_to_state_dict(params, config)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = config.to_hf()
    hf_cfg.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    hf_cfg.save_pretrained(str(folder))
    if tokenizer is not None:
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        if isinstance(tok, (str, Path)):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(resolve_model_path(tok)))
        tok.save_pretrained(str(folder))
    return folder
