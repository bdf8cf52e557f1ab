"""Logging and progress bars: the standard :mod:`logging` module, configured once by the CLI.

Every module logs to a child of the ``"pile_jax"`` logger (``logging.getLogger(__name__)``);
the library never configures logging by itself (a program that imports pile_jax keeps its own
setup; records propagate to the root logger as usual). The ``pile-jax`` command calls
:func:`setup_logging` once:

* level: ``--log-level`` (default ``INFO``); ``-q/--quiet`` is ``WARNING``; processes other
  than 0 of a multi-host run log at ``WARNING`` (their INFO lines would repeat process 0's);
* format: ``HH:MM:SS message``, with the level name only from ``WARNING`` up
  (``HH:MM:SS WARNING message``), on stderr (stdout carries the command's result only); other
  libraries' records reach stderr from ``WARNING`` up only, in the same format;
* the jobs (``run``, ``study``, ``train``) also write their transcript to ``<out>/log.txt``
  (:func:`log_to_file`; a URL ``--out`` is rewritten whole every few seconds and at the end,
  since object stores cannot append).

Progress bars (:func:`progress`, tqdm) stay on screen when done (``leave=True``) and show the
rate and the ETA. Convention: a bar is drawn only where INFO lines would be (not with
``--quiet`` or a higher ``--log-level``, not on processes other than 0) and only when stderr is
a terminal (tqdm's ``disable=None``), so log files and CI output get no bar fragments.

The ``transformers`` banner "PyTorch was not found. Models won't be available ..." (printed when
transformers is imported without torch; pile_jax never needs torch) is dropped by
:func:`silence_transformers_banner`, which ``import pile_jax`` calls; other transformers warnings
are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterable, Iterator

__all__ = ["LOGGER_NAME", "setup_logging", "log_to_file", "progress", "progress_enabled",
           "silence_transformers_banner", "Formatter"]

LOGGER_NAME = "pile_jax"
_HANDLER_MARK = "_pile_jax_handler"
_state = {"progress": True}


class Formatter(logging.Formatter):
    """``HH:MM:SS message``; the level name is added from WARNING up (``HH:MM:SS WARNING message``)."""

    def __init__(self, datefmt: str = "%H:%M:%S"):
        super().__init__(datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        when = self.formatTime(record, self.datefmt)
        if not record.name.startswith(LOGGER_NAME) and record.name != "root":
            msg = f"[{record.name}] {msg}"  # another library's record
        if record.levelno >= logging.WARNING:
            return f"{when} {record.levelname} {msg}"
        return f"{when} {msg}"


class _TqdmStreamHandler(logging.StreamHandler):
    """A stream handler that prints through ``tqdm.write`` so log lines do not break a bar; on a
    process other than 0 (checked per record: ``jax.distributed`` may start after the setup) it
    lets only WARNING and above through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and _process_index() != 0:
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            try:
                from tqdm import tqdm

                tqdm.write(msg, file=self.stream)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                self.stream.write(msg + "\n")
            self.flush()
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


def _level(level) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _process_index() -> int:
    if "jax" not in sys.modules:
        return 0
    try:
        import jax

        return int(jax.process_index())
    except Exception:  # pragma: no cover - backend not initialisable yet
        return 0


def setup_logging(level: str | int = "INFO", *, quiet: bool = False, process_index: int | None = None,
                  stream=None) -> logging.Logger:
    """Configure the ``pile_jax`` logger once for a command; returns it.

    ``level`` (a name or number) applies on process 0; ``quiet=True`` means ``WARNING``; processes
    other than ``process_index`` 0 (default: ``jax.process_index()`` when jax is imported) log at
    ``WARNING`` or above. One stderr handler (``stream``) with :class:`Formatter`; calling it again
    replaces the handler (no duplicate lines). Records still propagate to the root logger (whose
    handler added here skips them; pytest's ``caplog`` still sees them). Progress bars follow the same
    level (:func:`progress_enabled`). Also silences the transformers no-torch banner.
    """
    silence_transformers_banner()
    lvl = logging.WARNING if quiet else _level(level)
    pid = _process_index() if process_index is None else int(process_index)
    if pid != 0:
        lvl = max(lvl, logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, False) == "stream":
            logger.removeHandler(h)
    handler = _TqdmStreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(Formatter())
    setattr(handler, _HANDLER_MARK, "stream")
    logger.addHandler(handler)
    logger.setLevel(lvl)
    # Other libraries' records (absl, orbax, bm25s, transformers via propagation) reach the root
    # logger: one handler there at WARNING, in the same format. It also keeps absl from calling
    # logging.basicConfig() (which would print bm25s' DEBUG lines: bm25s sets its logger to DEBUG).
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False) == "root":
            root.removeHandler(h)
    root_handler = _TqdmStreamHandler(stream if stream is not None else sys.stderr)
    root_handler.setFormatter(Formatter())
    root_handler.setLevel(logging.WARNING)
    root_handler.addFilter(lambda r: not r.name.startswith(LOGGER_NAME))  # those have their own handler
    setattr(root_handler, _HANDLER_MARK, "root")
    root.addHandler(root_handler)
    _state["progress"] = lvl <= logging.INFO and pid == 0
    return logger


def progress_enabled() -> bool:
    """Whether :func:`progress` draws bars: the ``pile_jax`` logger shows INFO and this is process 0."""
    return bool(_state["progress"]) and logging.getLogger(LOGGER_NAME).isEnabledFor(logging.INFO) \
        and _process_index() == 0


def progress(iterable: Iterable | None = None, *, desc: str | None = None, total: int | None = None,
             unit: str = "it", initial: int = 0):
    """A tqdm bar that stays on screen (``leave=True``) with rate and ETA, drawn only when
    :func:`progress_enabled` and stderr is a terminal (``disable=None``); otherwise a silent
    pass-through with the same interface (``update``, ``set_postfix``, ``close``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=True, dynamic_ncols=True,
                disable=None if progress_enabled() else True)


class _BannerFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


def silence_transformers_banner() -> None:
    """Drop transformers' "PyTorch was not found. Models won't be available ..." warning (a filter
    on the ``transformers`` logger, which emits it when ``transformers`` is first imported without
    torch; pile_jax only uses its tokenizers and configs). Idempotent; other messages pass."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, _BannerFilter) for f in logger.filters):
        logger.addFilter(_BannerFilter())


class _UrlTranscriptHandler(logging.Handler):
    """Keeps the formatted lines and rewrites the whole file at a URL (no append on object stores)
    at most every ``interval_s`` seconds, and on :meth:`close`."""

    def __init__(self, path: str, interval_s: float = 10.0):
        super().__init__()
        self.path, self.interval_s = path, interval_s
        self.lines: list[str] = []
        self._last = float("-inf")
        self._written = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            if time.monotonic() - self._last >= self.interval_s:
                self.flush()
        except Exception:  # pragma: no cover
            self.handleError(record)

    def flush(self) -> None:
        if self._written < len(self.lines):
            from pile_jax import io as pio

            pio.write_text(self.path, "\n".join(self.lines) + "\n")
            self._written = len(self.lines)
            self._last = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            super().close()


@contextlib.contextmanager
def log_to_file(path, *, enabled: bool | None = None, level: int = logging.DEBUG) -> Iterator[logging.Handler | None]:
    """Within the block, the ``pile_jax`` logger's records are also written to ``path`` (a local
    file: appended line by line, like ``log.txt`` of earlier runs; a URL: rewritten whole, see the
    module docstring), formatted as on screen with the date. ``enabled`` defaults to "this is
    process 0" (:func:`pile_jax.io.is_primary`). The file gets the records the logger lets through
    (its level), whatever ``level`` the handler has."""
    from pile_jax import io as pio

    if enabled is None:
        enabled = pio.is_primary()
    if not enabled:
        yield None
        return
    target = str(path)
    logger = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "_pile_jax_path", None) == target for h in logger.handlers):
        yield None  # an enclosing block already writes this file (e.g. the CLI and the job both ask)
        return
    if pio.is_url(target):
        handler: logging.Handler = _UrlTranscriptHandler(target)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        handler = logging.FileHandler(target, mode="a", encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(Formatter(datefmt="%Y-%m-%d %H:%M:%S"))
    setattr(handler, _HANDLER_MARK, "file")
    handler._pile_jax_path = target
    old_level = logger.level
    if old_level == logging.NOTSET:  # never configured (library use): let INFO reach the file
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old_level)
