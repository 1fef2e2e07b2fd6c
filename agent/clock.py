"""Time, passed in: drivers, windows and breakers ask a clock, so tests can hand in their own."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall time in seconds since the epoch: the timestamp readings carry."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: for timeouts and cool-downs."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that only moves when told to; for tests and deterministic replays."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
