"""The agent in-process: drivers on the poll grid, isolation of failing and hung sensors."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, parse
from agent.daemon import Agent
from agent.pipeline import Stage
from agent.queues import DropOldestQueue
from agent.records import Aggregate, Reading
from agent.sinks import Sink
from drivers import Channel, Driver, Sample


class Collect(Sink, name="test_collect"):
    """Keep every record in memory, for assertions."""

    def __init__(self) -> None:
        self.records: list[Reading | Aggregate] = []
        self.closed = False

    def write(self, record: Reading | Aggregate) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True

    def readings(self, sensor: str) -> list[Reading]:
        return [r for r in self.records if isinstance(r, Reading) and r.sensor == sensor]

    def aggregates(self, sensor: str) -> list[Aggregate]:
        return [r for r in self.records if isinstance(r, Aggregate) and r.sensor == sensor]


release = threading.Event()


class StuckDevice(Driver, name="test_stuck_device"):
    """A blocking device whose read never returns (until the test releases it)."""

    calls = 0

    def read_blocking(self) -> Sample:
        StuckDevice.calls += 1
        release.wait(30)
        return 1.0


class Weather(Driver, name="test_weather"):
    """Three channels, one of them sometimes bad."""

    channels = (Channel("temperature", "°C", "temperature"), Channel("humidity", "%", "humidity"))

    def __init__(self) -> None:
        self.n = 0

    async def read(self) -> Sample:
        self.n += 1
        if self.n % 2:
            return {"temperature": 20.0 + self.n, "humidity": 50.0}
        return {"temperature": math.nan, "humidity": 50.0, "wind": 3.0}


class Bursts(Driver, name="test_bursts"):
    """A push device whose stream breaks after every two values."""

    def __init__(self) -> None:
        self.n = 0

    async def stream(self) -> AsyncIterator[Sample]:
        for _ in range(2):
            self.n += 1
            yield float(self.n)
            await asyncio.sleep(0.01)
        raise ConnectionError("device reset")


class Cancels(Driver, name="test_cancels"):
    """A push device whose own code cancels its stream after each value (a library that
    cancels an inner task and lets the CancelledError escape)."""

    def __init__(self) -> None:
        self.n = 0

    async def stream(self) -> AsyncIterator[Sample]:
        self.n += 1
        yield float(self.n)
        raise asyncio.CancelledError


def config(sensors: list[dict[str, Any]], **agent: Any) -> Config:
    document = {"agent": {"device_id": "t", "breaker": {"failures": 2, "cooldown": 0.1}, **agent}}
    return parse({**document, "sensors": sensors}, Path("test.toml"))


async def run_agent(cfg: Config, seconds: float) -> tuple[Agent, Collect]:
    sink = Collect()
    agent = Agent(cfg, sinks=[sink])
    await asyncio.wait_for(agent.run(duration=seconds), seconds + 5)
    return agent, sink


async def test_polled_readings_sit_on_the_interval_grid_without_gaps() -> None:
    cfg = config([{"name": "c", "driver": "counter", "interval": 0.05}])
    _, sink = await run_agent(cfg, 0.6)
    got = sink.readings("c")
    assert len(got) >= 6
    assert [r.value for r in got] == list(range(len(got)))
    for before, after in itertools.pairwise(got):
        assert after.ts - before.ts == pytest.approx(0.05, abs=1e-6)
    assert all(abs(r.ts / 0.05 - round(r.ts / 0.05)) < 1e-3 for r in got)


async def test_a_hung_sensor_is_cut_off_and_isolated_while_another_keeps_exact_counts() -> None:
    cfg = config(
        [
            {"name": "ok", "driver": "counter", "interval": 0.02},
            {"name": "hung", "driver": "counter", "interval": 0.02, "timeout": 0.05, "hangs": 1.0},
        ]
    )
    agent, sink = await run_agent(cfg, 1.0)
    ok = sink.readings("ok")
    assert [r.value for r in ok] == list(range(len(ok)))  # none lost, none repeated
    assert len(ok) >= 25
    assert sink.readings("hung") == []
    hung = next(r for r in agent.runners if r.sensor.name == "hung")
    assert hung.stats.timeouts >= 2
    assert hung.breaker.opened >= 1  # the breaker opened and stopped polling it every tick
    assert hung.stats.skipped > 0
    assert "no answer within 0.05 s" in hung.last_error


async def test_a_failing_sensor_opens_its_breaker_and_recovers() -> None:
    cfg = config([{"name": "f", "driver": "counter", "interval": 0.01, "errors": 0.5, "seed": 7}])
    agent, sink = await run_agent(cfg, 0.8)
    runner = agent.runners[0]
    assert runner.stats.errors > 5
    assert runner.stats.readings == len(sink.readings("f")) >= 3
    assert runner.breaker.opened >= 1


async def test_a_blocking_read_that_hangs_runs_off_the_loop_and_is_never_stacked() -> None:
    StuckDevice.calls = 0
    release.clear()
    cfg = config(
        [
            {"name": "stuck", "driver": "test_stuck_device", "interval": 0.02, "timeout": 0.05},
            {"name": "ok", "driver": "counter", "interval": 0.02},
        ]
    )
    started = time.monotonic()
    try:
        agent, sink = await run_agent(cfg, 0.8)
    finally:
        release.set()
    assert time.monotonic() - started < 3  # the hung thread does not hold up shutdown
    assert StuckDevice.calls == 1  # later polls saw it still busy instead of piling threads
    stuck = next(r for r in agent.runners if r.sensor.name == "stuck")
    assert stuck.stats.timeouts >= 2
    ok = sink.readings("ok")
    assert len(ok) >= 20
    assert [r.value for r in ok] == list(range(len(ok)))


async def test_channels_get_their_own_names_and_bad_values_are_counted() -> None:
    cfg = config([{"name": "w", "driver": "test_weather", "interval": 0.02}])
    agent, sink = await run_agent(cfg, 0.5)
    temperature, humidity = sink.readings("w.temperature"), sink.readings("w.humidity")
    assert temperature
    assert {r.unit for r in temperature} == {"°C"}
    assert {r.unit for r in humidity} == {"%"}
    assert len(humidity) >= len(temperature)
    assert all(math.isfinite(r.value) for r in temperature)
    runner = agent.runners[0]
    assert runner.stats.invalid >= 2  # the NaN and the unknown "wind" channel
    # Every reading of a channel shares one interned name: no string per reading.
    assert len({id(r.sensor) for r in temperature}) == 1


async def test_a_push_stream_that_breaks_is_restarted() -> None:
    cfg = config([{"name": "b", "driver": "test_bursts", "interval": 0.02}])
    agent, sink = await run_agent(cfg, 0.6)
    values = [r.value for r in sink.readings("b")]
    assert values == [float(n) for n in range(1, len(values) + 1)]
    assert len(values) >= 4
    assert agent.runners[0].stats.errors >= 2


async def test_a_stream_cancelled_by_its_own_driver_is_a_failure_not_the_end() -> None:
    cfg = config([{"name": "c", "driver": "test_cancels", "interval": 0.02}])
    agent, sink = await run_agent(cfg, 0.5)
    assert [r.value for r in sink.readings("c")][:3] == [1.0, 2.0, 3.0]
    assert agent.runners[0].stats.errors >= 3


async def test_stopping_flushes_open_windows_as_partial_and_closes_sinks() -> None:
    cfg = config(
        [{"name": "c", "driver": "counter", "interval": 0.02, "window": {"seconds": 3600}}]
    )
    _, sink = await run_agent(cfg, 0.3)
    [aggregate] = sink.aggregates("c")
    assert aggregate.partial
    assert aggregate.count >= 5
    assert sink.closed


async def test_windows_close_on_time_for_a_sensor_that_falls_silent() -> None:
    cfg = config(
        [
            {
                "name": "c",
                "driver": "replay",
                "path": str(Path(__file__).parent / "data" / "short.csv"),
                "speed": 100.0,
                "window": {"seconds": 0.2, "grace": 0.05},
            }
        ]
    )
    sink = Collect()
    agent = Agent(cfg, sinks=[sink])
    task = asyncio.create_task(agent.run())
    # The file is replayed in ~0.05 s, then the sensor falls silent for good.
    for _ in range(60):
        await asyncio.sleep(0.05)
        if sum(a.count for a in sink.aggregates("c")) == 5:
            break
    closed_while_running = list(sink.aggregates("c"))
    agent.stop()
    await task
    assert sum(a.count for a in closed_while_running) == 5, sink.records


def test_the_queue_drops_the_oldest_and_counts_it() -> None:
    queue: DropOldestQueue[int] = DropOldestQueue(3)
    for n in range(5):
        queue.put(n)
    assert queue.take_all() == [2, 3, 4]
    assert queue.dropped == 2
    assert queue.take_all() == []


async def test_a_full_queue_drops_oldest_readings_in_the_running_agent() -> None:
    cfg = config([{"name": "c", "driver": "counter", "interval": 0.001}], queue_size=1)
    sink = Collect()
    agent = Agent(cfg, sinks=[sink])
    # Stall the consumer: readings pile up in a queue of one.
    for _ in range(3):
        agent.queue.put(Reading("c", 0.0, -1.0))
    assert agent.queue.dropped == 2


async def test_the_agent_always_stops_promptly() -> None:
    """Regression: wait_for() around reads swallowed the stop's cancellation when it raced
    with a read finishing (Python 3.11), and the agent ran on forever."""
    cfg = config([{"name": "c", "driver": "counter", "interval": 0.001}])
    for _ in range(30):
        agent = Agent(cfg, sinks=[Collect()])
        await asyncio.wait_for(agent.run(duration=0.03), 2.0)


class Explode(Stage, name="test_explode"):
    """Raise on one value: a bug in a third-party stage."""

    __slots__ = ()

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            if reading.value == 3:
                raise ZeroDivisionError("bad stage")
            yield reading


async def test_a_failing_stage_costs_its_batch_not_the_agent() -> None:
    cfg = config(
        [
            {
                "name": "bad",
                "driver": "counter",
                "interval": 0.02,
                "pipeline": [{"stage": "test_explode"}],
            },
            {"name": "ok", "driver": "counter", "interval": 0.02},
        ]
    )
    agent, sink = await run_agent(cfg, 0.5)
    assert agent.stage_errors == 1
    bad = [r.value for r in sink.readings("bad")]
    assert 3.0 not in bad
    assert max(bad) > 5  # it went on after the failure
    ok = sink.readings("ok")
    assert [r.value for r in ok] == list(range(len(ok)))


def test_a_blocking_read_returning_after_the_agent_stopped_is_harmless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the read's thread used to die with 'Event loop is closed'."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    release.clear()
    cfg = config(
        [{"name": "late", "driver": "test_stuck_device", "interval": 0.02, "timeout": 0.05}]
    )
    asyncio.run(Agent(cfg, sinks=[Collect()]).run(duration=0.2))  # closes its loop on return
    [worker] = [t for t in threading.enumerate() if t.name == "driver-late"]
    release.set()  # the device answers at last, to a loop that is gone
    worker.join(5)
    assert not worker.is_alive()
    assert errors == []


async def test_a_failing_stage_is_logged_once_per_burst_per_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: one shared burst counter made a healthy channel end another's burst."""
    cfg = config(
        [
            {
                "name": "bad",
                "driver": "constant_three",
                "interval": 0.01,
                "pipeline": [{"stage": "test_explode"}],
            },
            {"name": "ok", "driver": "counter", "interval": 0.01},
        ]
    )
    with caplog.at_level("INFO", logger="agent"):
        agent, _ = await run_agent(cfg, 0.4)
    assert agent.stage_errors >= 10
    events = [(r.getMessage(), r.fields.get("channel")) for r in caplog.records]  # type: ignore[attr-defined]
    assert events.count(("stage_failed", "bad")) == 1
    assert ("stage_recovered", "ok") not in events


class ConstantThree(Driver, name="constant_three"):
    """Always 3: the value test_explode cannot take."""

    async def read(self) -> Sample:
        return 3.0
