"""Readings/s through the default pipeline, beside a hand-fused loop computing the same aggregates.

The default pipeline is the one `config/simulated.toml` gives its air sensor: calibration, a range
filter, a moving average of 5, then a 1 s tumbling window of count, mean, min and max; 100 sensors
at 10 Hz, with the per-stage counters the agent always keeps. It runs as the agent runs it: the
readings of a batch grouped by channel, each group through that channel's Pipeline.run and its
TumblingWindow.extend (agent.daemon.Agent._process).

Two batch sizes, because the consumer takes whatever the queue holds when it comes round:
- at capacity, the figure the goal is about (a throughput is the rate of an agent that is
  behind): each batch is a full queue (the default queue_size, 10,000 readings: 100 per
  channel);
- light load, for context and with no goal: one second of readings a batch (10 per channel),
  where what a batch costs (a generator and a list per stage, a meter reading, the window's
  state in and out) weighs more; it hovers about 0.5 × on this project's machine.

The anchor is one loop over the same readings doing the same arithmetic inline, with the state of
each channel in a list. Both must produce the same aggregates; the bench checks they do.
Run: .venv/bin/python bench/run.py --only pipeline
"""

from __future__ import annotations

import gc
import math
import statistics
from collections import deque
from collections.abc import Callable

from agent.config import AgentSettings
from agent.pipeline import Pipeline
from agent.records import Reading
from agent.stages import Calibrate, MovingAverage, Range
from agent.window import Stat, TumblingWindow, window_number
from bench.common import Figure, figure, timed

SENSORS = 100
HZ = 10
# Ticks of the 100 sensors a batch holds: a full default queue, and one second.
AT_CAPACITY = AgentSettings(device_id="bench").queue_size // SENSORS
LIGHT_LOAD = HZ
OFFSET, LOW, HIGH, SIZE = -0.4, -40.0, 85.0, 5
STATS: tuple[Stat, ...] = ("count", "mean", "min", "max")
START = 1_795_900_000.0
Result = list[tuple[str, float, int, dict[str, float]]]


def channels() -> list[str]:
    return [f"greenhouse{i}.temperature" for i in range(SENSORS)]


def batches(readings_per_sensor: int, ticks: int = LIGHT_LOAD) -> list[list[Reading]]:
    """Fresh readings (the pipeline changes values in place), in batches as the queue gives
    them: interleaved by sensor, in time order. One in 200 is out of range, to be dropped."""
    names = channels()
    out: list[list[Reading]] = []
    batch: list[Reading] = []
    for tick in range(readings_per_sensor):
        ts = START + tick / HZ
        for i, name in enumerate(names):
            value = 21.0 + 3.0 * math.sin(tick / 50 + i) + (i % 7) * 0.013
            if (tick * SENSORS + i) % 200 == 0:
                value = 999.0
            batch.append(Reading(name, ts, value, "°C"))
        if (tick + 1) % ticks == 0:
            out.append(batch)
            batch = []
    if batch:
        out.append(batch)
    return out


def run_pipeline(data: list[list[Reading]]) -> Result:
    routes = {
        name: (
            Pipeline(
                [Calibrate(offset=OFFSET), Range(min=LOW, max=HIGH), MovingAverage(size=SIZE)]
            ),
            TumblingWindow(name, seconds=1.0, stats=STATS, unit="°C"),
        )
        for name in channels()
    }
    result: Result = []
    for batch in data:
        by_channel: dict[str, list[Reading]] = {}
        for reading in batch:
            by_channel.setdefault(reading.sensor, []).append(reading)
        for channel, readings in by_channel.items():
            pipeline, window = routes[channel]
            for aggregate in window.extend(pipeline.run(readings)):
                result.append((aggregate.sensor, aggregate.start, aggregate.count, aggregate.stats))
    for _, window in routes.values():
        if last := window.flush():
            result.append((last.sensor, last.start, last.count, last.stats))
    return result


class _Fused:
    __slots__ = ("count", "index", "m2", "max", "mean", "min", "values")

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=SIZE)
        self.index: int | None = None
        self.count = 0
        self.mean = self.m2 = 0.0
        self.min, self.max = math.inf, -math.inf


def run_fused(data: list[list[Reading]]) -> Result:
    """The same aggregates in one loop: no generators, no meters, no window objects."""
    state = {name: _Fused() for name in channels()}
    result: Result = []
    fsum = math.fsum

    def close(name: str, s: _Fused) -> None:
        assert s.index is not None
        stats = {"count": float(s.count), "mean": s.mean, "min": s.min, "max": s.max}
        result.append((name, s.index * 1.0, s.count, stats))
        s.count = 0
        s.mean = s.m2 = 0.0
        s.min, s.max = math.inf, -math.inf

    for batch in data:
        for reading in batch:
            value = reading.value + OFFSET
            if not LOW <= value <= HIGH:
                continue
            s = state[reading.sensor]
            values = s.values
            values.append(value)
            value = fsum(values) / len(values)
            index = window_number(reading.ts, 1.0)
            if s.index is None:
                s.index = index
            elif index > s.index:
                close(reading.sensor, s)
                s.index = index
            s.count += 1
            delta = value - s.mean
            s.mean += delta / s.count
            s.m2 += delta * (value - s.mean)
            if value < s.min:
                s.min = value
            if value > s.max:
                s.max = value
    for name, s in state.items():
        if s.index is not None and s.count:
            close(name, s)
    return result


def _same(a: Result, b: Result) -> None:
    assert len(a) == len(b), f"{len(a)} aggregates from the pipeline, {len(b)} fused"
    key = lambda r: (r[0], r[1])  # noqa: E731
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        assert x == y, f"the pipeline gave {x}, the fused loop {y}"


def figures(quick: bool = False) -> list[Figure]:
    per_sensor = 200 if quick else 2_000
    runs = 5
    return [
        _figure("at capacity (full queue batches)", per_sensor, AT_CAPACITY, runs, goal=0.5),
        # For context: the goal is the throughput, which is the agent at capacity.
        _figure("light load (1 s batches)", per_sensor, LIGHT_LOAD, runs, goal=None),
    ]


def _figure(load: str, per_sensor: int, ticks: int, runs: int, goal: float | None) -> Figure:
    total = per_sensor * SENSORS
    _same(run_pipeline(batches(per_sensor, ticks)), run_fused(batches(per_sensor, ticks)))

    def rate_of(fn: Callable[[list[list[Reading]]], Result]) -> float:
        data = batches(per_sensor, ticks)  # fresh readings, made outside the timed part
        gc.collect()  # the last run's garbage is not this run's cost
        return total / timed(lambda: fn(data))

    # Interleaved, so a machine that drifts slows both alike.
    pipeline, fused = [], []
    for run in range(runs + 1):  # the first is a warm-up
        a, b = rate_of(run_pipeline), rate_of(run_fused)
        if run:
            pipeline.append(a)
            fused.append(b)
    return figure(
        f"readings/s through the default pipeline, {load} (100 sensors, counters on)",
        statistics.median(pipeline),
        "readings/s",
        goal=goal,
        better="higher",
        anchor="hand-fused loop, same aggregates",
        anchor_value=statistics.median(fused),
        runs=runs,
    )
