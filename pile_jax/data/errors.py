"""The one exception type for malformed data files."""

from __future__ import annotations

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
