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
from collections.abc import Sequence
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
        "picks",
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
        self.picks = tuple(map(STATS.index, stats))  # where each is in _aggregate's values
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
        closed = self.extend((reading,))
        return closed[0] if closed else None

    def extend(self, readings: Sequence[Reading]) -> list[Aggregate]:
        """Count readings in, in order; returns the aggregates of the windows they closed.

        The running state lives in locals for the loop and goes back to the slots at the end
        (and around a close): the agent adds a batch at a time, and attribute access per
        reading was most of the window's cost. A sequence, not any iterable: nothing may
        raise in the loop and leave the slots behind the locals."""
        closed: list[Aggregate] = []
        floor, resolution, seconds, index = math.floor, RESOLUTION, self.seconds, self.index
        count, mean, m2, total = self.count, self.mean, self.m2, self.total
        low, high, first, last = self.min, self.max, self.first, self.last
        for reading in readings:
            number = floor((reading.ts + resolution) / seconds)
            if number != index:  # the first reading of a window (or a late one)
                if number < self.horizon or (index is not None and number < index):
                    self.late += 1
                    continue
                if index is not None:  # it closes the open window (open: a reading in it)
                    self.count, self.mean, self.m2, self.total = count, mean, m2, total
                    self.min, self.max, self.first, self.last = low, high, first, last
                    closed.append(self._aggregate(index, partial=False))
                    count, mean, m2, total = 0, 0.0, 0.0, 0.0
                    low, high = math.inf, -math.inf
                index = self.index = number
                first = reading.value
                if not self.unit:
                    self.unit = reading.unit
            value = reading.value
            count += 1
            delta = value - mean
            mean += delta / count
            m2 += delta * (value - mean)
            total += value
            if value < low:
                low = value
            if value > high:
                high = value
            last = value
        self.count, self.mean, self.m2, self.total = count, mean, m2, total
        self.min, self.max, self.first, self.last = low, high, first, last
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
        self.index = None
        self.horizon = index + 1
        aggregate = self._aggregate(index, partial=partial) if self.count else None
        self._reset()
        return aggregate

    def _aggregate(self, index: int, *, partial: bool) -> Aggregate:
        """The aggregate of window `index` from the running state."""
        count = self.count
        stddev = math.sqrt(self.m2 / (count - 1)) if count > 1 else 0.0
        values = (  # in STATS order: self.picks indexes it
            float(count),
            self.mean,
            self.min,
            self.max,
            self.total,
            stddev,
            self.first,
            self.last,
        )
        stats: dict[str, float] = {}
        for name, i in zip(self.stats, self.picks, strict=True):
            stats[name] = values[i]
        start, end = index * self.seconds, (index + 1) * self.seconds
        self.seq += 1
        partial = partial or start < self.since
        return Aggregate(self.sensor, start, end, count, stats, self.unit, self.seq, partial)
