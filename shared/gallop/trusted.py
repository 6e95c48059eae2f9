"""What a warm container was told of a key, trusted for a while: the serving path's aliases
and snapshot pointers, the API's gateway keys. Standard library only: the API function
imports it without the serving path's onnxruntime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Trusted(Generic[K, V]):
    """What a read said of a key, trusted for `ttl` seconds, then read again. A read that
    raises is not kept: the next request reads again."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._read: dict[K, tuple[V, float]] = {}  # key -> (value, read at)
        self._lock = threading.Lock()

    def get(self, key: K, read: Callable[[], V]) -> V:
        found = self._read.get(key)
        if found is None or self._clock() - found[1] > self._ttl:
            found = (read(), self._clock())
            with self._lock:
                self._read[key] = found
        return found[0]

    def forget(self, key: K) -> None:
        self._read.pop(key, None)

    def clear(self) -> None:
        self._read.clear()
