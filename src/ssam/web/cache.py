"""A thread-safe LRU cache of image embeddings with a byte budget.

Keys name an uploaded file's content and how it was preprocessed (see
``ssam.web.engine.embedding_key``); values are one slice's image embedding, a (C, h, w) CPU
tensor, with what undoes its preprocessing. Each entry is charged the bytes its caller states;
when the total passes the budget the least recently used entries go.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CacheStats:
    """Counts since the cache was made, and what it holds now."""

    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's elements."""
    return tensor.numel() * tensor.element_size()


class EmbeddingCache:
    """LRU mapping key -> value, at most ``budget`` stated bytes in all.

    A value larger than the whole budget is not stored. A budget of 0 stores nothing.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {budget}")
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The stored value (now most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Store ``value`` charged ``size`` bytes, evicting least recently used entries."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.budget:
                return
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.budget:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._items), self._bytes, self.budget)
