"""What the readings cost in memory: bytes per in-flight Reading, and the peak memory of the
default pipeline and window at 1 M and at 10 M readings (which must be the same: the state is
bounded, whatever the stream's length).

Peak memory is tracemalloc's peak over the whole run, readings made lazily a batch at a time as
the queue would hand them over, aggregates counted and let go as the uplink would. The peak is
measured once per size (the 10 M run takes about a minute under tracemalloc); it counts
allocations, so it does not drift with the machine's load.
Run: .venv/bin/python bench/run.py --only memory
"""

from __future__ import annotations

import math
import sys
import tracemalloc
from collections.abc import Iterator

from agent.pipeline import Pipeline
from agent.records import Reading
from agent.stages import Calibrate, MovingAverage, Range
from agent.window import TumblingWindow
from bench.common import Figure, figure, timed

SENSORS = 100
HZ = 10
BATCH = 1_000  # readings per batch: 1 s of 100 sensors at 10 Hz
START = 1_795_900_000.0
MiB = 1 << 20


def stream(total: int) -> Iterator[list[Reading]]:
    """`total` readings of 100 channels in batches, made as they are needed."""
    names = [sys.intern(f"greenhouse{i}.temperature") for i in range(SENSORS)]
    unit = sys.intern("°C")
    sin = math.sin
    made = 0
    tick = 0
    while made < total:
        ts = START + tick / HZ
        batch = [
            Reading(name, ts, 21.0 + 3.0 * sin(tick / 50 + i), unit) for i, name in enumerate(names)
        ]
        made += len(batch)
        tick += 1
        yield batch


def run(total: int) -> int:
    """Feed `total` readings through the default pipeline and window; the aggregates made."""
    routes = {
        f"greenhouse{i}.temperature": (
            Pipeline([Calibrate(offset=-0.4), Range(min=-40, max=85), MovingAverage(size=5)]),
            TumblingWindow(
                f"greenhouse{i}.temperature", seconds=1.0, stats=("count", "mean", "min", "max")
            ),
        )
        for i in range(SENSORS)
    }
    aggregates = 0
    pending: list[Reading] = []
    for readings in stream(total):
        pending.extend(readings)
        if len(pending) < BATCH:
            continue
        by_channel: dict[str, list[Reading]] = {}
        for reading in pending:
            by_channel.setdefault(reading.sensor, []).append(reading)
        pending = []
        for channel, group in by_channel.items():
            pipeline, window = routes[channel]
            aggregates += len(window.extend(pipeline.run(group)))
    return aggregates


def peak(total: int) -> tuple[int, float]:
    """tracemalloc's peak in bytes while `total` readings go through, and the seconds it took."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        seconds = timed(lambda: run(total))
        return tracemalloc.get_traced_memory()[1], seconds
    finally:
        tracemalloc.stop()


def figures(quick: bool = False) -> list[Figure]:
    reading = Reading("greenhouse.temperature", START, 21.5, "°C")
    assert not hasattr(reading, "__dict__"), "a Reading has a __dict__"
    size = sys.getsizeof(reading)

    small, large = (100_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    peak(small // 10)  # warm-up: imports, interned names, first allocations
    small_peak, small_s = peak(small)
    large_peak, large_s = peak(large)
    print(
        f"memory: peak {small_peak / MiB:.2f} MiB at {small:,} readings ({small_s:.1f} s), "
        f"{large_peak / MiB:.2f} MiB at {large:,} ({large_s:.1f} s)",
        file=sys.stderr,
    )
    growth = large_peak - small_peak
    return [
        figure(
            "bytes per in-flight Reading (sys.getsizeof, no `__dict__`)",
            size,
            "B",
            goal=72,
            better="lower",
            runs=1,
        ),
        figure(
            f"peak memory growth, {small:,} → {large:,} readings (tracemalloc)",
            abs(growth) / MiB,
            "MiB",
            goal=1,
            better="lower",
            runs=1,
        ),
    ]
