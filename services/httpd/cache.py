"""Small in-process caches that keep bus round trips off the hot path.

A boot script or an image costs one lookup in memory instead of a request
to the store, for a short while. Staleness is bounded by the TTL and, for a
change made through this process, removed at once by :meth:`TtlCache.drop`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


class TtlCache(Generic[K, V]):
    """Values computed by a loader, kept for ``ttl`` seconds, at most ``size`` of them.

    ``stale_for`` > 0 keeps serving an expired value for that long when the
    loader fails (the store restarting), instead of failing the request.
    Errors are never cached.
    """

    def __init__(self, ttl: float, size: int = 4096, *, stale_for: float = 0.0,
                 clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.stale_for = stale_for
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V], ttl: float | None = None) -> V:
        now = self.clock()
        item = self._items.get(key)
        if item is not None and item[0] > now:
            self.hits += 1
            return item[1]
        self.misses += 1
        try:
            value = load()
        except Exception:
            if item is not None and now < item[0] + self.stale_for:
                self.stale_served += 1
                return item[1]
            raise
        self.put(key, value, ttl)
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        expires = self.clock() + (self.ttl if ttl is None else ttl)
        with self._lock:
            self._items[key] = (expires, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def expire(self) -> None:
        """Every value runs out now but stays on hand for ``stale_for``."""
        now = self.clock()
        with self._lock:
            for key, (expires, value) in list(self._items.items()):
                self._items[key] = (min(expires, now), value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Lru(Generic[K, V]):
    """Values that never go stale (keyed by content digest), bounded in number."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
