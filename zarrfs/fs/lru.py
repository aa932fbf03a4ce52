"""A least-recently-used mapping bounded by the total weight of its values."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(self, capacity: int, weight: Callable[[V], int] = lambda _: 1):
        self.capacity = capacity
        self._weight = weight
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._total = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self.pop(key)
        self._items[key] = value
        self._total += self._weight(value)
        while self._total > self.capacity and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._total -= self._weight(evicted)

    def pop(self, key: Hashable) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._total -= self._weight(value)

    def __len__(self) -> int:
        return len(self._items)
