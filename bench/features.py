"""A CPU-heavy feature off the event loop: band power of 16,384-sample blocks (a pure Python FFT,
tens of milliseconds a block), computed in line and in the pool of worker processes.

- blocks/s: 8 blocks handed to the stage at once, until the last result is out; the pool's
  rate against in line's (the anchor), measured in the same run on this machine's cores.
- event-loop lag: a loop feeds the stage a 1 kHz vibration sensor's readings in batches of 256
  (faster than real time, so the run is short), while the agent's own lag probe
  (agent.health.LoopLag, waking every 5 ms) records how late the loop wakes; the worst lag with
  the pool against the worst in line, where each block holds the loop for its whole FFT.
The pool is started before anything is timed, as the agent starts it before its sensors.
Run: .venv/bin/python bench/run.py --only features
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time

from agent.features import BandPower, Executor, start_workers
from agent.health import LoopLag
from agent.pipeline import Pipeline
from agent.records import Reading
from bench.common import Figure, figure

SIZE = 16384
RATE = 1000.0  # Hz
BLOCKS = 8
BATCH = 256


def vibration(blocks: int) -> list[Reading]:
    """A 120 Hz hum with noise, sampled at RATE."""
    rng = random.Random(7)
    return [
        Reading(
            "pump.vibration",
            i / RATE,
            math.sin(2 * math.pi * 120 * i / RATE) + rng.gauss(0, 0.2),
            "g",
        )
        for i in range(blocks * SIZE)
    ]


def stage(executor: Executor) -> BandPower:
    return BandPower(low=100, high=140, size=SIZE, executor=executor, max_pending=BLOCKS)


def blocks_per_second(executor: Executor, blocks: int) -> float:
    pipeline = Pipeline([stage(executor)])
    data = vibration(blocks)
    started = time.perf_counter()
    out = pipeline.run(data)
    while len(out) < blocks:
        time.sleep(0.001)
        out += pipeline.run([])
    seconds = time.perf_counter() - started
    assert all(0.4 < r.value < 0.6 for r in out), "a 120 Hz sine of amplitude 1 has power 0.5"
    return blocks / seconds


async def worst_lag_ms(executor: Executor, blocks: int) -> float:
    pipeline = Pipeline([stage(executor)])
    data = vibration(blocks)
    probe = LoopLag(period=0.005)
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(0.02)
    probe.take()  # from here on
    out: list[Reading] = []
    for i in range(0, len(data), BATCH):
        out += pipeline.run(data[i : i + BATCH])
        await asyncio.sleep(0.001)
    while len(out) < blocks:
        await asyncio.sleep(0.005)
        out += pipeline.run([])
    lag = probe.take()["max_ms"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return lag


def figures(quick: bool = False) -> list[Figure]:
    blocks, runs = (2, 1) if quick else (BLOCKS, 5)
    start_workers([stage("process")])
    speed: dict[Executor, list[float]] = {"inline": [], "process": []}
    lag: dict[Executor, list[float]] = {"inline": [], "process": []}
    for _ in range(runs):  # interleaved, so a machine that drifts slows both alike
        for executor in ("inline", "process"):
            speed[executor].append(blocks_per_second(executor, blocks))
            lag[executor].append(asyncio.run(worst_lag_ms(executor, blocks)))
    return [
        figure(
            f'band power of {SIZE}-sample blocks, process pool (executor = "process")',
            statistics.median(speed["process"]),
            "blocks/s",
            goal=1.5,
            better="higher",
            anchor="the same blocks in line",
            anchor_value=statistics.median(speed["inline"]),
            runs=runs,
        ),
        figure(
            "worst event-loop lag while the blocks compute, process pool",
            statistics.median(lag["process"]),
            "ms",
            goal=0.2,
            better="lower",
            anchor="the same blocks in line",
            anchor_value=statistics.median(lag["inline"]),
            runs=runs,
        ),
    ]
