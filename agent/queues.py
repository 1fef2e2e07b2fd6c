"""A bounded inbox between the drivers and the pipeline.

When the pipeline falls behind, the oldest reading is dropped (fresh data is
worth more than stale data on a sensor link) and counted; memory never grows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self.maxsize = maxsize
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) == self.maxsize:
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def wake(self) -> None:
        """Wake a waiting consumer with nothing to take (to let it see a stop request)."""
        self._ready.set()

    async def wait(self) -> None:
        """Return once there is something to take."""
        await self._ready.wait()

    def take_all(self) -> list[T]:
        """Everything queued now, oldest first (at most `maxsize` items)."""
        items = list(self._items)
        self._items.clear()
        self._ready.clear()
        return items
