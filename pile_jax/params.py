"""Parameter files (``best_params.npz``, ``final_params.npz``): a flat ``.npz`` keyed by pytree path.

``save_params(path, params)`` writes every leaf under its :func:`jax.tree_util.keystr` key
(atomically, local path or URL, through :mod:`pile_jax.io`); ``load_params(path, template)``
reads them back into the structure of ``template`` and raises a clear error naming the file and
the first missing key or mismatched shape (a truncated or damaged file: a
:class:`~pile_jax.data.errors.DataError` naming it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pile_jax import io as pio

__all__ = ["save_params", "load_params"]


def save_params(path: pio.PathLike, params: Any) -> None:
    """Writes the leaves of ``params`` (as host NumPy arrays) to ``path`` (``.npz``), atomically."""
    import jax

    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    pio.save_npz(path, flat)


def load_params(path: pio.PathLike, template: Any) -> Any:
    """The params saved at ``path``, in the pytree structure of ``template``."""
    import zipfile

    import jax

    from pile_jax.data.errors import DataError

    try:
        data = pio.load_npz(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise DataError(path, None, f"unreadable parameter file (truncated or damaged: {type(e).__name__}: "
                                    f"{' '.join(str(e).split())})") from None
    leaves = []
    for key, ref in jax.tree_util.tree_leaves_with_path(template):
        name = jax.tree_util.keystr(key)
        if name not in data:
            raise ValueError(f"{path}: no array {name!r} (a parameter file of another model?)")
        arr = data[name]
        if hasattr(ref, "shape") and tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {name} has shape {tuple(arr.shape)}, the model expects {tuple(ref.shape)}")
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
