"""A fake ``gs://`` filesystem for tests: fsspec's DirFileSystem over a local folder, registered
as the ``gs``/``gcs`` protocol, so ``etils.epath.Path("gs://bucket/x")`` reads and writes
``ROOT/bucket/x`` through the same code path as a real bucket (epath -> fsspec), with no network.

orbax writes array data with tensorstore, whose ``gs://`` driver speaks HTTP to Google Cloud
Storage; ``install`` therefore also wraps ``orbax.checkpoint.CheckpointManager`` so that it
records the directory it is given (the test asserts it is the unchanged ``gs://`` URL) and
opens the same folder locally.
"""

from __future__ import annotations

import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

SEEN_CHECKPOINT_DIRS: list[str] = []


class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")
    root = None  # set by install()
    cachable = False

    def __init__(self, *args, **kwargs):
        kwargs.pop("finalize_on_close", None)
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))

    @classmethod
    def _strip_protocol(cls, path):
        path = path if isinstance(path, str) else os.fspath(path)
        for p in ("gs://", "gcs://"):
            if path.startswith(p):
                return path[len(p):].rstrip("/")
        return path.rstrip("/")

    def _join(self, path):
        if isinstance(path, str):
            path = self._strip_protocol(path)
        elif isinstance(path, (list, tuple)):
            path = [self._strip_protocol(p) for p in path]
        return super()._join(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        return self.fs.makedirs(self._join(path), exist_ok=True)


def install(root: str) -> None:
    """Register :class:`FakeGCS` over ``root`` and wrap orbax's CheckpointManager (see above)."""
    os.makedirs(root, exist_ok=True)
    FakeGCS.root = os.path.abspath(root)
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)

    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager
    if getattr(real, "_fake_gs", False):
        return

    def manager(directory, *args, **kwargs):
        url = str(directory)
        SEEN_CHECKPOINT_DIRS.append(url)
        if not url.startswith("gs://"):
            raise AssertionError(f"orbax got a non-URL checkpoint directory {url!r}")
        print(f"fake_gs: orbax directory {url}", flush=True)
        return real(os.path.join(FakeGCS.root, url[len("gs://"):]), *args, **kwargs)

    manager._fake_gs = True
    ocp.CheckpointManager = manager
