"""The one exception type for malformed data files."""

from __future__ import annotations

import sys

import os


class DataError(ValueError):
    """A data file is malformed or inconsistent.

    The message always starts with ``"<path>:<line>: "`` when the problem is on one line of
    a file (``"<path>: "`` when it concerns the whole file), so it can be pasted into an editor.
    ``path`` and ``line`` are kept as attributes (``line`` is ``None`` for whole-file problems).
    """

    def __init__(self, path: str | os.PathLike | None, line: int | None, message: str):
        self.path = None if path is None else str(path)
        self.line = line
        self.message = message
        if self.path is None:
            text = message
        elif line is None:
            text = f"{self.path}: {message}"
        else:
            text = f"{self.path}:{line}: {message}"
        super().__init__(text)


ON_UNKNOWN = ("error", "skip")


def check_on_unknown(on_unknown: str) -> None:
    """Raise ValueError unless ``on_unknown`` is ``"error"`` or ``"skip"``."""
    if on_unknown not in ON_UNKNOWN:
        raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, retry"; the CLI exits with it


class Preempted(RuntimeError):
    """Raised after a SIGTERM stop (a train checkpoint saved, or a store build stopped with its
    finished chunks kept); rerun the same command (train: with ``--resume``) to continue.

    The CLI prints the one-line message and exits with :data:`PREEMPTED_EXIT_CODE`
    (``Preempted.exit_code``), which a supervisor reads as "work kept, relaunch me"."""

    exit_code = PREEMPTED_EXIT_CODE


class sigterm_stops:
    """``with sigterm_stops(what):`` -- a SIGTERM inside the block raises :class:`Preempted`
    (``"preempted (SIGTERM): <what>"``) at once, in the main thread, so the work in progress (a
    chunk being built) is dropped; what the block committed before stays. The previous handler
    is restored on exit. Off the main thread this does nothing (Python delivers signals to the
    main thread only); nested guards keep the outermost handler.

    Where Python swallows the handler's exception (it can land in a gc callback such as JAX's
    ``_xla_gc_callback``, reported to ``sys.unraisablehook`` and dropped), the guard sends the signal
    again 50 ms later (the handler then runs in ordinary code), and leaving the block after a
    swallowed SIGTERM raises :class:`Preempted` all the same."""

    _active = 0

    def __init__(self, what: str):
        self.what = what
        self._previous = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and sigterm_stops._active == 0:
            self.signalled = False

            def handler(signum, frame):
                self.signalled = True
                raise Preempted(f"preempted (SIGTERM): {self.what}")

            self._previous = signal.signal(signal.SIGTERM, handler)
            self._hook = sys.unraisablehook

            def unraisable(info):
                # The handler's exception can land where Python swallows exceptions (a gc callback,
                # e.g. JAX's ``_xla_gc_callback``, or a ``__del__``): send the signal again, 50 ms later, from
                # another thread, so the handler runs at the main thread's next ordinary bytecode.
                if isinstance(info.exc_value, Preempted) and self.signalled:
                    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
                    return
                self._hook(info)

            sys.unraisablehook = unraisable
        sigterm_stops._active += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        import signal

        sigterm_stops._active -= 1
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            sys.unraisablehook = self._hook
            self._previous = None
            if exc is None and self.signalled:   # swallowed on the way: stop now, the block's work kept
                raise Preempted(f"preempted (SIGTERM): {self.what}")
        return False
