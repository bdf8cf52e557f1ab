"""Checkpoints: orbax ``CheckpointManager`` holding the train state + a JSON ``extra`` dict (+ the
best params so far, item ``best``).

``extra`` carries what the loop needs to resume exactly: the sampler's ``state_dict()``, the
config, counters. Saves are periodic (``save_interval_steps``) with ``force=True`` for final
and preemption saves; the newest ``max_to_keep`` are kept. Async saving is safe here because
the state is copied to host memory before ``save`` returns (donated device buffers may be
reused by the next step right away).

The directory may be a local path or a URL (``gs://bucket/run/checkpoints``): it is handed to
orbax as an :class:`etils.epath.Path`, unchanged (only a local relative path is made absolute).

Preemption (TPU VMs get SIGTERM): ``checkpointer.should_stop(step, flag)`` is checked every
step; when True the loop saves with ``force=True``, calls ``wait()`` and exits. On one process
the flag set by :func:`install_sigterm_handler` is enough (no collective). On several processes
it is orbax's preemption sync point (``CheckpointManager.reached_preemption``, i.e.
``multihost_utils.reached_preemption_sync_point``): JAX's coordination service learns of the
preemption and names one step at which every host returns True, without a per-step all-gather.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from pile_jax.io import as_path, is_url

__all__ = ["Checkpointer", "PreemptionFlag", "install_sigterm_handler", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/jax scalars and arrays (nested in dicts/lists) to plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint extra: value of type {type(obj).__name__} is not JSON-able")


def _to_host(tree: Any) -> Any:
    """numpy copy of every leaf (pmap-replicated leaves must be unreplicated first)."""
    def get(x):
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable and not x.is_fully_replicated:
                raise ValueError("checkpoint: state leaf is sharded across hosts; only "
                                 "replicated/host-local state is supported")
            x = x.addressable_data(0) if not x.is_fully_addressable else x
        return np.array(x)  # copy
    return jax.tree_util.tree_map(get, tree)


class Checkpointer:
    """Keep-N periodic checkpoints of ``(state, extra)`` under ``directory``."""

    def __init__(self, directory: str | os.PathLike | epath.Path, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1000, async_save: bool = True):
        self.directory = as_path(directory if is_url(directory) else os.path.abspath(os.fspath(directory)))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=max(int(save_interval_steps), 1),
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extra", "best"))

    # -- queries
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """True when ``step`` is a periodic save step (and not saved yet)."""
        return self._manager.should_save(int(step))

    def should_stop(self, step: int, flag: "PreemptionFlag | None" = None) -> bool:
        """True when the run should save ``step`` and stop: a SIGTERM was received (``flag``,
        one process) or the preemption sync point is ``step`` (several processes; every process
        calls this at every step, and all of them get True at the same step)."""
        if flag is not None and flag.requested:
            return True
        if jax.process_count() > 1:
            return bool(self._manager.reached_preemption(int(step)))
        return False

    # -- save / restore
    def save(self, step: int, state: Any, extra: Mapping[str, Any] | None = None, *,
             force: bool = False, best: Any = None) -> bool:
        """Save unless ``step`` is off-interval (``force=True`` always saves). Returns saved?

        ``best``: the best params so far (the dev-selected ones), kept in the same checkpoint, so a
        resumed run on every host restores the best params of exactly this step (no side file that
        one host may lack or that may be newer than the checkpoint)."""
        step = int(step)
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(_to_host(state)),
                 "extra": ocp.args.JsonSave(to_jsonable(dict(extra or {})))}
        if best is not None:
            items["best"] = ocp.args.StandardSave(_to_host(best))
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))

    def restore_best(self, step: int, template_params: Any) -> Any | None:
        """The best params saved with checkpoint ``step`` (see :meth:`save`), or None when that
        checkpoint holds none."""
        self.wait()
        if not (self.directory / str(int(step)) / "best").exists():
            return None
        abstract = jax.tree_util.tree_map(_abstract, template_params)
        out = self._manager.restore(int(step), args=ocp.args.Composite(best=ocp.args.StandardRestore(abstract)))
        return out["best"]

    def restore(self, step: int, template_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore ``(state, extra)`` at ``step`` into the structure/dtypes of ``template_state``."""
        self.wait()
        abstract = jax.tree_util.tree_map(_abstract, template_state)
        out = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
        return out["state"], dict(out["extra"] or {})

    def restore_latest(self, template_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """``restore(latest_step)``, or None when there is no checkpoint."""
        self.wait()
        self._manager.reload()
        step = self._manager.latest_step()
        if step is None:
            return None
        return self.restore(step, template_state)

    def wait(self) -> None:
        """Block until async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _abstract(x):
    """Restore target: a template jax.Array's shape/dtype/sharding (numpy -> default device)."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


class PreemptionFlag:
    """Set by SIGTERM; ``requested`` is polled by the loop. ``uninstall()`` restores handlers."""

    def __init__(self):
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def install_sigterm_handler(callback: Callable[[int], None] | None = None,
                            signals: tuple[int, ...] = (signal.SIGTERM,)) -> PreemptionFlag:
    """On SIGTERM set the returned flag (and call ``callback(signum)``, keep it light: it runs
    inside the signal handler). The loop saves and exits when it sees the flag.

    Python only delivers signals to the main thread: called from another thread this installs
    nothing and returns a flag that is never set (the default SIGTERM behaviour stays)."""
    flag = PreemptionFlag()
    if threading.current_thread() is not threading.main_thread():
        return flag

    def handler(signum, frame):
        flag.set()
        if callback is not None:
            callback(signum)

    for sig in signals:
        flag._previous[sig] = signal.signal(sig, handler)
    return flag
