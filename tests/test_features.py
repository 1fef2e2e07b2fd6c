"""Band power over blocks of samples, in line and in a pool of worker processes."""

from __future__ import annotations

import cmath
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest

from agent import features
from agent.config import parse
from agent.daemon import Agent
from agent.features import BandPower, band_power, fft
from agent.pipeline import Pipeline
from agent.records import Reading
from agent.schema import Invalid
from tests.test_sampling import Collect


def sine(n: int, rate: float, hz: float, amplitude: float = 1.0) -> list[float]:
    return [amplitude * math.sin(2 * math.pi * hz * i / rate) for i in range(n)]


def block_readings(values: list[float], rate: float, start: float = 0.0) -> list[Reading]:
    return [Reading("v", start + i / rate, v, "g") for i, v in enumerate(values)]


def test_the_fft_is_the_discrete_fourier_transform() -> None:
    rng = random.Random(3)
    values = [rng.uniform(-5, 5) for _ in range(64)]
    direct = [
        sum(v * cmath.exp(-2j * math.pi * k * i / 64) for i, v in enumerate(values))
        for k in range(64)
    ]
    assert all(abs(a - b) < 1e-9 for a, b in zip(fft(values), direct, strict=True))


def test_a_sine_in_the_band_has_half_its_amplitude_squared_and_none_outside() -> None:
    values = sine(1024, rate=1024.0, hz=64.0, amplitude=3.0)
    assert band_power(values, 1024.0, 60.0, 70.0) == pytest.approx(4.5, rel=1e-9)
    assert band_power(values, 1024.0, 100.0, 200.0) == pytest.approx(0.0, abs=1e-12)


def test_the_whole_spectrum_holds_the_mean_square() -> None:
    rng = random.Random(5)
    values = [rng.gauss(1.0, 2.0) for _ in range(256)]
    mean_square = sum(v * v for v in values) / len(values)
    assert band_power(values, 100.0, 0.0, 1000.0) == pytest.approx(mean_square, rel=1e-9)


def test_a_block_size_that_is_not_a_power_of_two_is_refused() -> None:
    with pytest.raises(Invalid, match="power of two"):
        BandPower(low=1, high=2, size=1000)
    with pytest.raises(Invalid, match="low < high"):
        BandPower(low=5, high=5)


def test_inline_one_value_per_block_with_blocks_spanning_batches() -> None:
    rate = 256.0
    values = sine(3 * 64 + 10, rate, hz=32.0, amplitude=2.0)
    pipeline = Pipeline([BandPower(low=30, high=34, size=64)])
    readings = block_readings(values, rate)
    out = [r for i in range(0, len(readings), 50) for r in pipeline.run(readings[i : i + 50])]
    assert [r.ts for r in out] == [readings[k * 64 + 63].ts for k in range(3)]
    assert [r.value for r in out] == pytest.approx([2.0] * 3, rel=1e-9)
    [stats] = pipeline.stats()
    assert (stats["received"], stats["passed"], stats["counters"]) == (
        202,
        3,
        {"blocks": 3, "dropped_blocks": 0},
    )


def drain(pipeline: Pipeline, timeout: float = 30.0) -> list[Reading]:
    """What the pool owes the pipeline, as the agent collects it: runs of no readings."""
    out: list[Reading] = []
    deadline = time.monotonic() + timeout
    while pipeline.pending() and time.monotonic() < deadline:
        out += pipeline.run([])
        time.sleep(0.01)
    assert not pipeline.pending(), "the pool never delivered"
    return out


def test_the_pool_gives_what_inline_gives_in_block_order() -> None:
    rate = 512.0
    values = sine(4 * 512, rate, hz=50.0) + [0.0] * 3
    values = [v + 0.1 * math.sin(i) for i, v in enumerate(values)]
    inline = Pipeline([BandPower(low=40, high=60, size=512)])
    pooled = Pipeline([BandPower(low=40, high=60, size=512, executor="process", max_pending=8)])
    expected = inline.run(block_readings(values, rate))
    got = pooled.run(block_readings(values, rate))
    got += drain(pooled)
    assert [(r.ts, r.value) for r in got] == [(r.ts, r.value) for r in expected]
    assert len(got) == 4


def test_a_block_finding_the_pool_owing_max_pending_is_dropped_and_counted() -> None:
    rate = 1024.0
    stage = BandPower(low=1, high=100, size=4096, executor="process", max_pending=1)
    pipeline = Pipeline([stage])
    # Three blocks in one run: the first is still computing (an FFT of 4096 points takes
    # milliseconds) when the next two come.
    out = pipeline.run(block_readings(sine(3 * 4096, rate, hz=10.0), rate))
    out += drain(pipeline)
    assert len(out) == 1
    assert stage.counters() == {"blocks": 3, "dropped_blocks": 2}


def test_a_killed_worker_costs_its_block_and_a_fresh_pool_takes_the_next() -> None:
    rate = 1024.0
    pipeline = Pipeline([BandPower(low=1, high=100, size=4096, executor="process")])
    assert not pipeline.run(block_readings(sine(4096, rate, hz=10.0), rate))
    for pid in list(features.workers()._processes):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception, match="terminated abruptly"):
        drain(pipeline)
    assert not pipeline.pending()
    pipeline.run(block_readings(sine(4096, rate, hz=10.0), rate, start=10.0))
    [result] = drain(pipeline)
    assert result.value == pytest.approx(0.5, rel=1e-6)


async def test_the_agent_collects_what_the_pool_owes_even_at_stop(tmp_path: Path) -> None:
    """A counter at 200 Hz in blocks of 16 through the pool: every block the stage took
    comes out (the last ones after the stop began), each the power of its own 16 values."""
    document = {
        "agent": {"device_id": "t", "data_dir": str(tmp_path)},
        "sensors": [
            {
                "name": "c",
                "driver": "counter",
                "interval": 0.005,
                "pipeline": [
                    {
                        "stage": "band_power",
                        "low": 0,
                        "high": 1e6,  # the whole spectrum, whatever rate the timestamps give
                        "size": 16,
                        "executor": "process",
                    }
                ],
            }
        ],
    }
    sink = Collect()
    agent = Agent(parse(document, Path("test.toml")), sinks=[sink])
    await agent.run(duration=0.6)
    [stage] = agent.routes["c"].pipeline.stages
    assert isinstance(stage, BandPower)
    got = sink.readings("c")
    assert len(got) == stage.blocks >= 3
    assert stage.dropped == 0
    for k, reading in enumerate(got):  # the counter counts from 0: block k holds 16k .. 16k+15
        values = [float(v) for v in range(16 * k, 16 * k + 16)]
        assert reading.value == pytest.approx(sum(v * v for v in values) / 16, rel=1e-9)
