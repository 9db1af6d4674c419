"""A bounded LRU map, used only from the event loop thread (so no lock).

Bounded by entries and by bytes: an entry's size depends on its topk and on the passages (10k entries of topk 100
held 283 MB on the toy corpus, more with Wikipedia passages), so a count alone does not bound the memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used eviction at ``capacity`` entries or ``max_bytes`` (as ``size_of`` counts them), whichever
    comes first; capacity 0 or max_bytes 0 disables caching. A value larger than ``max_bytes`` is not kept."""

    def __init__(
        self, capacity: int, max_bytes: int | None = None, size_of: Callable[[Hashable, V], int] | None = None
    ):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._size_of = size_of or (lambda key, value: 0)
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity == 0 or self.max_bytes == 0:
            return
        size = self._size_of(key, value) if self.max_bytes is not None else 0
        if self.max_bytes is not None and size > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._data[key] = (value, size)
        self.bytes += size
        while len(self._data) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
            _, (_, evicted) = self._data.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._data)
