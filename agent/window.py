"""Tumbling windows by event time: the statistics of a channel over fixed, aligned periods.

Windows are aligned to multiples of their length since the epoch, so a 60 s
window always runs from one whole minute to the next, on every board. The
state is a handful of numbers (Welford's running mean and variance), however
many readings a window holds.

Windows are numbered (window k covers [k × seconds, (k + 1) × seconds)) and
compared by number: a length like 0.2 s has no exact float, and comparing
float boundaries put readings stamped on a boundary in the wrong window.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from agent.records import Aggregate, Reading

Stat = Literal["count", "mean", "min", "max", "sum", "stddev", "first", "last"]
STATS: tuple[str, ...] = get_args(Stat)

# Timestamps are meaningful to the microsecond (the poll grid is rounded to it);
# nudging by that much puts a reading stamped on a boundary in the window it opens,
# in spite of the rounding of ts / seconds.
RESOLUTION = 1e-6


def window_number(ts: float, seconds: float) -> int:
    return math.floor((ts + RESOLUTION) / seconds)


class TumblingWindow:
    """Accumulates one channel's readings and emits an Aggregate as each window closes.

    A window closes when a reading for a later window arrives, or when the
    clock passes its end plus `grace` (readings in flight from the driver may
    still arrive within `grace`). A reading for a window already closed is
    late: it is counted in `late` and dropped.
    """

    __slots__ = (
        "count",
        "first",
        "grace",
        "horizon",
        "index",
        "last",
        "late",
        "m2",
        "max",
        "mean",
        "min",
        "seconds",
        "sensor",
        "seq",
        "since",
        "stats",
        "total",
        "unit",
    )

    def __init__(
        self,
        sensor: str,
        *,
        seconds: float,
        stats: tuple[Stat, ...],
        grace: float = 0.5,
        unit: str = "",
        since: float = -math.inf,
        seq: int = 0,
    ) -> None:
        self.sensor = sensor
        self.unit = unit
        self.seconds = seconds
        self.stats = stats
        self.grace = grace
        self.since = since  # windows that began before this are incomplete: marked partial
        self.seq = seq  # sequence number of the last aggregate emitted
        self.horizon: float = -math.inf  # number of the next window that may still open
        self.late = 0
        self.index: int | None = None  # number of the open window
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.first = self.last = math.nan

    def add(self, reading: Reading) -> Aggregate | None:
        """Count one reading in; returns the previous window's aggregate if this closed it."""
        index = window_number(reading.ts, self.seconds)
        if index < self.horizon or (self.index is not None and index < self.index):
            self.late += 1
            return None
        closed = None
        if self.index is None:
            self.index = index
        elif index > self.index:
            closed = self._close(partial=False)
            self.index = index
        if not self.unit:
            self.unit = reading.unit
        value = reading.value
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if self.count == 1:
            self.first = value
        self.last = value
        return closed

    @property
    def deadline(self) -> float:
        """When the open window closes on time: its end plus grace (infinity if none is open)."""
        return math.inf if self.index is None else (self.index + 1) * self.seconds + self.grace

    @property
    def start(self) -> float | None:
        """Start of the open window, if one is open."""
        return None if self.index is None else self.index * self.seconds

    def advance(self, now: float) -> Aggregate | None:
        """Close the open window once `now` is past its end and the grace period."""
        if self.index is not None and now >= self.deadline:
            return self._close(partial=False)
        return None

    def flush(self) -> Aggregate | None:
        """Close the open window early (at shutdown); its aggregate is marked partial."""
        return self._close(partial=True) if self.index is not None else None

    def _close(self, *, partial: bool) -> Aggregate | None:
        index = self.index
        assert index is not None
        start, end = index * self.seconds, (index + 1) * self.seconds
        self.index = None
        self.horizon = index + 1
        if self.count == 0:
            return None
        values = {
            "count": float(self.count),
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "sum": self.total,
            "stddev": math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0,
            "first": self.first,
            "last": self.last,
        }
        self.seq += 1
        aggregate = Aggregate(
            sensor=self.sensor,
            start=start,
            end=end,
            count=self.count,
            stats={name: values[name] for name in self.stats},
            unit=self.unit,
            seq=self.seq,
            partial=partial or start < self.since,
        )
        self._reset()
        return aggregate
