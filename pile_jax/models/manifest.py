"""The manifest of an exported student folder: every file with its size and sha256.

``pile_jax_manifest.json`` is written last by :func:`pile_jax.models.export.export_student`
(:func:`write_manifest`); :func:`verify_export` checks a folder against it and names the first
missing, truncated (another size) or overwritten (another sha256) file. A leaf module (no
pile_jax import but the data error type), so every loader can call it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from ..data.errors import DataError

__all__ = ["MANIFEST_FILE", "write_manifest", "verify_export"]

MANIFEST_FILE = "pile_jax_manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, info: Mapping[str, Any]) -> dict:
    """Writes ``folder/pile_jax_manifest.json`` (every other file with its size and sha256, the
    pile_jax version, kind, dtype and lengths); call it last. Returns the manifest."""
    folder = Path(folder)
    files = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel != MANIFEST_FILE:
            files[rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {"format": "pile_jax_manifest", "format_version": 1, "pile_jax_version": info.get("pile_jax_version"),
                "kind": info.get("kind"), "dtype": "float32",
                "max_length": info.get("max_length"), "max_query_length": info.get("max_query_length"),
                "max_doc_length": info.get("max_doc_length"), "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_export(path) -> dict:
    """Checks an exported folder against its manifest; returns the manifest.

    Raises :class:`~pile_jax.data.errors.DataError` naming the first file that is missing, has
    another size (truncated) or another sha256 (overwritten bytes), or the manifest itself when it
    is absent or unreadable (an interrupted export, or a folder not written by
    :func:`export_student`)."""
    folder = Path(path)
    mf = folder / MANIFEST_FILE
    if not mf.is_file():
        raise DataError(mf, None, "missing: not a complete pile_jax export (interrupted, copied in part, or written "
                                  "by a pile_jax without manifests); export it again")
    try:
        manifest = json.loads(mf.read_text())
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(mf, None, f"unreadable manifest ({err}); export the model again") from None
    for rel, meta in sorted(files.items()):
        f = folder / rel
        if not f.is_file():
            raise DataError(f, None, "missing (listed in the export's manifest); export the model again")
        size = f.stat().st_size
        if size != int(meta["size"]):
            raise DataError(f, None, f"{size} bytes, the manifest says {meta['size']} (truncated or replaced); "
                                     "export the model again")
        if _sha256(f) != meta["sha256"]:
            raise DataError(f, None, "contents differ from the export's manifest (sha256; overwritten bytes?); "
                                     "export the model again")
    return manifest
