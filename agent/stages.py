"""The built-in stages, after the filters people reach for on ESPHome sensors.

Each stage's parameters are its constructor's keyword arguments: the config
schema, the checks and `edge-agent describe` all read them from here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal

from agent.pipeline import Stage
from agent.records import Reading
from agent.schema import Bounds, Invalid, NonNegative, Positive
from agent.tunable import Tunable

# Sliding windows are kept whole in memory: bounded, and small enough to sort per reading.
Size = Annotated[int, Bounds(ge=1, le=10_000)]


class Calibrate(Stage, name="calibrate"):
    """Correct values linearly: value × scale + offset, or fitted through two reference points."""

    __slots__ = ("_offset", "_scale")
    offset = Tunable(float)
    scale = Tunable(float)

    def __init__(
        self,
        *,
        offset: float = 0.0,
        scale: float = 1.0,
        points: Annotated[
            list[list[float]] | None, "two [raw, true] pairs; replaces offset and scale"
        ] = None,
    ) -> None:
        if points is not None:
            if offset != 0.0 or scale != 1.0:
                raise Invalid("points", "expected either points or offset/scale, got both")
            if len(points) != 2 or any(len(p) != 2 for p in points):
                raise Invalid("points", "expected exactly two [raw, true] pairs")
            (raw1, true1), (raw2, true2) = points
            if raw1 == raw2:
                raise Invalid("points", "the two points need different raw values")
            scale = (true2 - true1) / (raw2 - raw1)
            offset = true1 - scale * raw1
        self.offset = offset
        self.scale = scale

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        offset, scale = self.offset, self.scale
        for reading in readings:
            reading.value = reading.value * scale + offset
            yield reading


class Range(Stage, name="range"):
    """Keep values within [min, max]: drop the others, or clamp them to the nearest bound."""

    __slots__ = ("_max", "_min", "clamped", "mode")
    min = Tunable(float | None)
    max = Tunable(float | None)

    def __init__(
        self,
        *,
        min: float | None = None,
        max: float | None = None,
        mode: Literal["drop", "clamp"] = "drop",
    ) -> None:
        self.min, self.max = min, max
        self.check()
        self.mode = mode
        self.clamped = 0

    def check(self) -> None:
        low, high = self.min, self.max
        if low is None and high is None:
            raise Invalid("", "expected min, max or both, got neither")
        if low is not None and high is not None and low > high:
            raise Invalid("min", f"expected min ≤ max, got min = {low:g}, max = {high:g}")

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        low, high = self.min, self.max
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        clamp = self.mode == "clamp"
        for reading in readings:
            value = reading.value
            if low <= value <= high:
                yield reading
            elif clamp:
                self.clamped += 1
                reading.value = low if value < low else high
                yield reading

    def counters(self) -> dict[str, int]:
        return {"clamped": self.clamped} if self.mode == "clamp" else {}


class Delta(Stage, name="delta"):
    """Pass a value only when it moved by `change` or more, or after `heartbeat` s of silence."""

    __slots__ = ("_change", "_heartbeat", "last_ts", "last_value")
    change = Tunable(NonNegative)
    heartbeat = Tunable(Annotated[Positive | None, "re-send the value after this many seconds"])

    def __init__(
        self,
        *,
        change: NonNegative,
        heartbeat: Annotated[Positive | None, "re-send the value after this many seconds"] = None,
    ) -> None:
        self.change = change
        self.heartbeat = heartbeat
        self.last_value: float | None = None
        self.last_ts = 0.0

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        change, heartbeat = self.change, self.heartbeat
        for reading in readings:
            last = self.last_value
            if (
                last is None
                or abs(reading.value - last) >= change
                or (heartbeat is not None and reading.ts - self.last_ts >= heartbeat)
            ):
                self.last_value = reading.value
                self.last_ts = reading.ts
                yield reading


class Throttle(Stage, name="throttle"):
    """Pass at most one value every `seconds` (by the readings' own timestamps)."""

    __slots__ = ("_seconds", "next_ts")
    seconds = Tunable(Positive)

    def __init__(self, *, seconds: Positive) -> None:
        self.seconds = seconds
        self.next_ts = -float("inf")

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        seconds = self.seconds
        for reading in readings:
            if reading.ts >= self.next_ts:
                self.next_ts = reading.ts + seconds
                yield reading


class MovingAverage(Stage, name="moving_average"):
    """Replace each value by the mean of the last `size` values (a sliding window)."""

    __slots__ = ("values",)

    def __init__(self, *, size: Size = 5) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        values, fsum = self.values, math.fsum
        for reading in readings:
            values.append(reading.value)
            # A fresh exact sum, not a running total: one huge glitch value would
            # leave a running total wrong long after the glitch left the window.
            reading.value = fsum(values) / len(values)
            yield reading


class Median(Stage, name="median"):
    """Replace each value by the median of the last `size` values: removes spikes, keeps steps."""

    __slots__ = ("values",)

    def __init__(self, *, size: Size = 5) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        values = self.values
        for reading in readings:
            values.append(reading.value)
            ordered = sorted(values)
            middle = len(ordered) // 2
            reading.value = (
                ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
            )
            yield reading


class ExponentialMovingAverage(Stage, name="ema"):
    """Smooth values exponentially: each output moves `alpha` of the way to the new value."""

    __slots__ = ("_alpha", "state")
    alpha = Tunable(Annotated[float, Bounds(gt=0, le=1)])

    def __init__(self, *, alpha: Annotated[float, Bounds(gt=0, le=1)] = 0.1) -> None:
        self.alpha = alpha
        self.state: float | None = None

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        alpha = self.alpha
        for reading in readings:
            state = self.state
            state = reading.value if state is None else state + alpha * (reading.value - state)
            self.state = reading.value = state
            yield reading


# Built in too, in a module of its own: it brings an FFT and a process pool.
from agent.features import BandPower  # noqa: E402, F401
