"""Tumbling windows by event time: the statistics of a channel over fixed, aligned periods.

Windows are aligned to multiples of their length since the epoch, so a 60 s
window always runs from one whole minute to the next, on every board. The
state is a handful of numbers (Welford's running mean and variance), however
many readings a window holds.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from agent.records import Aggregate, Reading

Stat = Literal["count", "mean", "min", "max", "sum", "stddev", "first", "last"]
STATS: tuple[str, ...] = get_args(Stat)


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
        "start",
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
        self.horizon = -math.inf  # end of the last closed window
        self.late = 0
        self.start: float | None = None
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
        start = math.floor(reading.ts / self.seconds) * self.seconds
        if start < self.horizon or (self.start is not None and start < self.start):
            self.late += 1
            return None
        closed = None
        if self.start is None:
            self.start = start
        elif start > self.start:
            closed = self._close(partial=False)
            self.start = start
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
        return math.inf if self.start is None else self.start + self.seconds + self.grace

    def advance(self, now: float) -> Aggregate | None:
        """Close the open window once `now` is past its end and the grace period."""
        if self.start is not None and now >= self.start + self.seconds + self.grace:
            return self._close(partial=False)
        return None

    def flush(self) -> Aggregate | None:
        """Close the open window early (at shutdown); its aggregate is marked partial."""
        return self._close(partial=True) if self.start is not None else None

    def _close(self, *, partial: bool) -> Aggregate | None:
        start = self.start
        assert start is not None
        end = start + self.seconds
        self.start = None
        self.horizon = end
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
