"""`edge-agent profile`: where the pipeline's time goes, on simulated data, under cProfile.

Builds each sensor's pipeline and window as the agent does, feeds N readings per channel
through them in batches (as the consumer drains its queue), and prints the top functions by
cumulative and by own time. Values come from the sensor's own driver when it is a simulated
signal (on a clock that steps through the poll grid), else from a sine.
"""

from __future__ import annotations

import cProfile
import math
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from agent.clock import ManualClock
from agent.config import Config, Sensor
from agent.pipeline import Pipeline
from agent.records import Reading
from agent.window import TumblingWindow

START = 1_795_900_000.0  # a fixed, whole-minute start: the same windows on every run
BATCH = 10  # readings per channel per batch


@dataclass
class _Channel:
    name: str
    unit: str
    pipeline: Pipeline
    window: TumblingWindow | None


def _source(
    sensor: Sensor, clock: ManualClock
) -> tuple[list[tuple[str, str]], Callable[[], float]]:
    """The sensor's channels (name, unit) and a callable giving one value per channel."""
    from drivers.simulated import Signal

    if issubclass(sensor.driver.cls, Signal):
        driver = sensor.driver.build(clock=clock)
        assert isinstance(driver, Signal)
        channels = [
            (sensor.name if len(driver.channels) == 1 else f"{sensor.name}.{c.name}", c.unit)
            for c in driver.channels
        ]
        if len(channels) == 1:
            return channels, driver.sample
    channels = [(sensor.name, "")]
    period = 60.0
    return channels, lambda: 20 + 5 * math.sin(2 * math.pi * clock.time() / period)


def run(config: Config, readings: int, *, top: int = 15, out: TextIO = sys.stdout) -> int:
    """Profile `readings` readings per channel of every sensor of `config`; print the report."""
    import agent.stages  # noqa: F401  # registers the built-in stages
    import drivers  # noqa: F401  # registers the built-in drivers

    clock = ManualClock(START)
    feeds: list[tuple[_Channel, float, Callable[[], float]]] = []
    for sensor in config.sensors:
        names, sample = _source(sensor, clock)
        for name, unit in names:
            window = None
            if sensor.window is not None:
                window = TumblingWindow(
                    name,
                    seconds=sensor.window.seconds,
                    stats=sensor.window.stats,
                    grace=sensor.window.grace,
                    unit=unit,
                )
            channel = _Channel(name, unit, Pipeline([s.build() for s in sensor.pipeline]), window)
            feeds.append((channel, sensor.interval, sample))
    if not feeds:
        print("edge-agent profile: the config has no sensors", file=out)
        return 0

    # The readings are made before profiling: the profile is of the pipeline, not the signal.
    batches: list[list[tuple[_Channel, list[Reading]]]] = []
    for first in range(0, readings, BATCH):
        batch: list[tuple[_Channel, list[Reading]]] = []
        for channel, interval, sample in feeds:
            group: list[Reading] = []
            for i in range(first, min(first + BATCH, readings)):
                ts = round(START + i * interval, 6)
                clock.now = ts
                group.append(Reading(channel.name, ts, sample(), channel.unit))
            batch.append((channel, group))
        batches.append(batch)

    aggregates = passed = 0

    def feed() -> None:
        nonlocal aggregates, passed
        for batch in batches:
            for channel, group in batch:
                window = channel.window
                out = channel.pipeline.run(group)
                passed += len(out)
                if window is not None:
                    aggregates += len(window.extend(out))

    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(feed)
    seconds = time.perf_counter() - started
    total = readings * len(feeds)
    print(
        f"{total:,} readings ({readings:,} for each of {len(feeds)} channels) in "
        f"{seconds:.3f} s under cProfile ({total / seconds:,.0f} readings/s); "
        f"{passed:,} passed the stages, {aggregates:,} aggregates",
        file=out,
    )
    for order, title in (("cumulative", "cumulative time"), ("tottime", "own time")):
        print(f"\ntop {top} functions by {title}:", file=out)
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
    return 0
