"""URL-aware file I/O shared by the trainer and the jobs: every path may be local or a URL.

Paths go through :mod:`etils.epath` (the path layer orbax and tensorflow-datasets use), so
``gs://bucket/run`` stays a Google Cloud Storage path (install ``pile_jax[gcs]``) and is never
turned into a local folder. Contracts:

* :func:`as_path` never calls ``os.path.abspath`` on a URL; local paths keep their meaning.
* Writers are atomic: locally the bytes go to a temporary name in the same folder, then the file
  is renamed into place, so a crash never leaves a half-written file under the final name; a
  failed write (a full disk) removes the temporary file and raises ``OSError`` whose ``filename``
  is the file being written; on
  object stores (URLs) a single object upload is already atomic and is used as is.
* On several processes, shared files are written by process 0 only (:func:`is_primary`), and
  callers that read them afterwards pass a :func:`barrier`.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any, Mapping

import numpy as np
from etils import epath

__all__ = [
    "as_path", "is_url", "write_bytes", "write_text", "write_json", "read_text", "read_json",
    "save_npz", "load_npz", "is_primary", "barrier",
]

PathLike = str | os.PathLike | epath.Path


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (``gs://``, ``s3://``, ...)."""
    return "://" in os.fspath(path) if not isinstance(path, epath.Path) else "://" in str(path)


def as_path(path: PathLike) -> epath.Path:
    """An :class:`etils.epath.Path` for a local path or a URL (URLs are kept as they are)."""
    if isinstance(path, epath.Path):
        return path
    return epath.Path(os.fspath(path))


def write_bytes(path: PathLike, data: bytes) -> epath.Path:
    """Write ``data`` to ``path`` atomically: locally a temporary name in the same folder, then a
    rename; on an object store (a URL) one upload, which is atomic there (a rename would be a
    copy plus a delete)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)
        return path
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)   # a full disk or a kill leaves no temporary file behind
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and getattr(e, "filename", None) != str(path):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e   # name the file being written
        raise
    return path


def write_text(path: PathLike, text: str) -> epath.Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, *, indent: int | None = 1) -> epath.Path:
    """Write ``obj`` as JSON atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_text(path: PathLike) -> str:
    return as_path(path).read_text(encoding="utf-8")


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray]) -> epath.Path:
    """``np.savez`` to a local path or URL, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue())


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file at a local path or URL."""
    with np.load(io.BytesIO(as_path(path).read_bytes())) as data:
        return {k: data[k] for k in data.files}


def is_primary() -> bool:
    """True on the process that writes shared files (process 0)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (no-op on one process); use after process 0 wrote shared files."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

