"""Process-lifetime caches with an owner and a bound (a leaf module: imports nothing of pile_jax).

Every cache the library keeps between calls is a :class:`BoundedCache` created by the module that
owns it, with a name (for logs and tests) and a maximum number of entries; the least recently used
entry goes first. Keys are content (configs, token ids, option tuples) or the cached object itself
(a score function, a params pytree held by the entry), never ``id()`` of something the cache does
not keep alive: Python reuses the ``id`` of a freed object, so an ``id`` key can return the entry of
a dead object.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Hashable

__all__ = ["BoundedCache", "all_caches", "clear_all"]

_REGISTRY: list["BoundedCache"] = []
_MISSING = object()


class BoundedCache:
    """An LRU mapping ``key -> value`` of at most ``maxsize`` entries, owned by ``owner``.

    ``get_or_make(key, make)`` returns the kept value or stores ``make()``; ``clear()`` empties it
    (tests, long-lived processes). Thread-safe for single calls (one lock)."""

    def __init__(self, owner: str, name: str, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"{owner}.{name}: maxsize must be >= 1, got {maxsize}")
        self.owner, self.name, self.maxsize = owner, name, int(maxsize)
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        _REGISTRY.append(self)

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> Any:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        value = self.get(key, _MISSING)
        return self.put(key, make()) if value is _MISSING else value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __getitem__(self, key: Hashable) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __iter__(self):
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __repr__(self) -> str:
        return f"BoundedCache({self.owner}.{self.name}: {len(self)}/{self.maxsize})"


def all_caches() -> list[BoundedCache]:
    """Every cache created so far (owner, name, size)."""
    return list(_REGISTRY)


def clear_all() -> None:
    for cache in _REGISTRY:
        cache.clear()
