"""The two values that travel through the agent: a reading and an aggregate.

Both are slotted: an agent holds thousands of readings in flight, and a
per-instance `__dict__` would triple their size. Channel names and units are
interned once when a sensor is set up, so every reading shares them.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class Reading:
    """One value from one sensor channel at one moment (seconds since the epoch).

    A reading belongs to the one pipeline it flows through, so a stage may
    change its value in place instead of allocating a new one per stage.
    """

    __slots__ = ("sensor", "ts", "unit", "value")

    def __init__(self, sensor: str, ts: float, value: float, unit: str = "") -> None:
        self.sensor = sensor
        self.ts = ts
        self.value = value
        self.unit = unit

    def __repr__(self) -> str:
        return f"Reading({self.sensor!r}, ts={self.ts!r}, value={self.value!r}, unit={self.unit!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reading):
            return NotImplemented
        return (self.sensor, self.ts, self.value, self.unit) == (
            other.sensor,
            other.ts,
            other.value,
            other.unit,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable value object


class Aggregate:
    """The statistics of one sensor channel over one closed window [start, end)."""

    __slots__ = ("count", "end", "partial", "sensor", "seq", "start", "stats", "unit")

    def __init__(
        self,
        sensor: str,
        start: float,
        end: float,
        count: int,
        stats: dict[str, float],
        unit: str,
        seq: int,
        partial: bool = False,
    ) -> None:
        self.sensor = sensor
        self.start = start
        self.end = end
        self.count = count
        self.stats = stats
        self.unit = unit
        self.seq = seq
        self.partial = partial

    def __repr__(self) -> str:
        return (
            f"Aggregate({self.sensor!r}, [{self.start}, {self.end}), count={self.count}, "
            f"seq={self.seq}, stats={self.stats!r}{', partial' if self.partial else ''})"
        )


class ReadingDict(TypedDict):
    type: Literal["reading"]
    sensor: str
    ts: float
    value: float
    unit: str


class AggregateDict(TypedDict):
    type: Literal["aggregate"]
    sensor: str
    start: float
    end: float
    count: int
    stats: dict[str, float]
    unit: str
    seq: int
    partial: bool


def as_dict(item: Reading | Aggregate) -> ReadingDict | AggregateDict:
    """The plain form of a record, for JSON lines and, later, the wire."""
    if isinstance(item, Reading):
        return ReadingDict(
            type="reading", sensor=item.sensor, ts=item.ts, value=item.value, unit=item.unit
        )
    return AggregateDict(
        type="aggregate",
        sensor=item.sensor,
        start=item.start,
        end=item.end,
        count=item.count,
        stats=item.stats,
        unit=item.unit,
        seq=item.seq,
        partial=item.partial,
    )
