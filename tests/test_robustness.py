"""Edge cases found in review; each test failed before its fix."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ConfigError, parse
from agent.daemon import Agent
from agent.pipeline import Pipeline, Stage
from agent.records import Aggregate, Reading
from agent.sinks import JsonLines, Sink
from agent.stages import Calibrate, MovingAverage
from agent.window import TumblingWindow
from drivers import Driver, Sample
from tests.helpers import readings

ROOT = Path(__file__).resolve().parent.parent


class Keep(Sink, name="test_robustness_keep"):
    def __init__(self) -> None:
        self.records: list[Reading | Aggregate] = []

    def write(self, record: Reading | Aggregate) -> None:
        self.records.append(record)

    def values(self, sensor: str) -> list[float]:
        return [r.value for r in self.records if isinstance(r, Reading) and r.sensor == sensor]


def config(sensors: list[dict[str, Any]], **agent: Any) -> Config:
    document = {"agent": {"device_id": "t", **agent}, "sensors": sensors}
    return parse(document, Path("test.toml"))


# --- 1. window.py: float window boundaries ---------------------------------------------------


def test_window_of_a_10hz_style_grid_holds_every_reading_once() -> None:
    """A 0.05 s sensor and a 0.2 s window: every window should hold exactly 4 readings.

    `floor(ts / seconds) * seconds` puts grid readings that sit on a boundary into the
    previous window, and `k*s + s` (the closed window's end, kept as `horizon`) can be one
    ulp above `(k+1)*s` (the next window's start), so every reading after the first of
    that next window is counted `late` and dropped.
    """
    interval, seconds = 0.05, 0.2
    window = TumblingWindow("x", seconds=seconds, stats=("count",), grace=0.5)
    tick = math.ceil(1_700_000_000.0 / interval)  # an aligned start: the first window is whole
    aggregates = []
    for i in range(400):
        ts = round((tick + i) * interval, 6)  # exactly how SensorRunner._poll stamps readings
        if (aggregate := window.add(Reading("x", ts, 1.0))) is not None:
            aggregates.append(aggregate)
    counts = [a.count for a in aggregates]
    assert window.late == 0, f"{window.late} on-time readings dropped as late"
    assert counts == [4] * len(counts), f"window counts {sorted(set(counts))}"


# --- 2. pipeline.py: a stage that yields None ------------------------------------------------


class YieldsNone(Stage, name="test_robustness_yields_none"):
    """A buggy third-party stage: yields None instead of skipping one reading."""

    __slots__ = ()

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            yield None if reading.value == 3 else reading  # type: ignore[misc]


def test_a_stage_yielding_none_does_not_silently_swallow_the_rest_of_the_batch() -> None:
    pipeline = Pipeline([YieldsNone(), Calibrate()])
    try:
        out = [r.value for r in pipeline.feed(readings(range(10)))]
    except Exception:
        return  # raising is fine: the agent counts it as a stage error and logs it
    # _metered() treats None as "the stage is exhausted": readings 4..9 are never pulled,
    # never counted (received == 4), and nothing is logged or counted as an error.
    assert pipeline.received == 10, f"received={pipeline.received}, out={out}"


# --- 3. stages.py: moving_average keeps a running sum ----------------------------------------


def test_moving_average_recovers_after_one_huge_value_leaves_the_window() -> None:
    """One glitch (FLT_MAX, a common 'no data' sentinel) corrupts the running total for good."""
    stage = MovingAverage(size=5)
    values = [21.5] * 5 + [3.4028234663852886e38] + [21.5] * 50
    out = [r.value for r in Pipeline([stage]).feed(readings(values))]
    assert out[-1] == pytest.approx(21.5), f"mean of five 21.5 values reported as {out[-1]}"


# --- 4. sampling.py: a runner task that dies is never noticed --------------------------------


class CancelledInside(Driver, name="test_robustness_cancelled_inside"):
    """The client library cancels its pending request once (say on a reconnect)."""

    def __init__(self) -> None:
        self.n = 0

    async def read(self) -> Sample:
        self.n += 1
        if self.n == 3:
            raise asyncio.CancelledError
        return float(self.n)


class HugeInt(Driver, name="test_robustness_huge_int"):
    """Returns an int too large for a float once: `math.isfinite` raises OverflowError."""

    def __init__(self) -> None:
        self.n = 0

    async def read(self) -> Sample:
        self.n += 1
        return 10**400 if self.n == 3 else float(self.n)


@pytest.mark.parametrize("driver", ["test_robustness_cancelled_inside", "test_robustness_huge_int"])
async def test_one_bad_read_does_not_kill_the_sensor_for_good(
    driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Keep()
    agent = Agent(config([{"name": "s", "driver": driver, "interval": 0.02}]), sinks=[sink])
    await asyncio.wait_for(agent.run(duration=0.6), 5)
    got = sink.values("s")
    logged = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert max(got, default=0) > 5, (
        f"the sensor stopped for good after read 3: values={got}, "
        f"counters={agent.counters()['sensors']['s']}, warnings/errors logged={logged}"
    )


# --- 5. sampling.py: the poll grid sleeps on wall time ---------------------------------------


class SteppedClock:
    """The system clock, whose wall time can be stepped (NTP, a fake-hwclock board at boot)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


async def test_polling_survives_the_wall_clock_stepping_back() -> None:
    clock = SteppedClock()
    sink = Keep()
    agent = Agent(
        config([{"name": "c", "driver": "counter", "interval": 0.05}]), clock=clock, sinks=[sink]
    )
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.3)
    before = len(sink.values("c"))
    clock.offset = -60.0  # the wall clock steps back a minute
    await asyncio.sleep(1.0)
    after = len(sink.values("c"))
    agent.stop()
    await asyncio.wait_for(task, 5)
    assert before > 0
    # _poll computes `late = clock.time() - due` once and sleeps -late seconds: 60 s of silence.
    assert after - before >= 10, f"{after - before} readings in the second after the step"


# --- 6./7. a loop that never awaits wedges the whole agent (run in a subprocess) -------------


def _run_script(script: str, seconds: float = 5.0) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds,  # on expiry the child is SIGKILLed (SIGTERM would not stop it)
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent was still running {seconds:g} s after a 0.5 s --duration")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


_PRELUDE = """
    import asyncio, sys, time
    from pathlib import Path
    import agent.stages, drivers
    from agent.config import parse
    from agent.daemon import Agent
    from drivers import Driver

    class SyncRead(Driver, name="sync_read"):
        async def read(self):
            time.sleep(0.03)  # a sysfs / smbus call made directly in an async driver
            return 1.0

    def run(sensors):
        cfg = parse({"agent": {"device_id": "t"}, "sensors": sensors}, Path("t.toml"))
        asyncio.run(Agent(cfg, sinks=[]).run(duration=0.5))
        print("stopped")
"""


@pytest.mark.parametrize(
    "sensors",
    [
        # a built-in driver at an interval shorter than one turn of the poll loop
        '[{"name": "fast", "driver": "counter", "interval": 0.001}]',
        # a read that takes longer than the interval without awaiting
        '[{"name": "slow", "driver": "sync_read", "interval": 0.02},'
        ' {"name": "ok", "driver": "counter", "interval": 0.02}]',
    ],
    ids=["tiny-interval", "sync-read-slower-than-interval"],
)
def test_a_poll_loop_that_falls_behind_still_lets_the_agent_stop(sensors: str) -> None:
    assert "stopped" in _run_script(_PRELUDE + f"\n    run({sensors})\n")


@pytest.mark.parametrize("content", ["ts,value\n0,1\n", "ts,value\n"], ids=["one-row", "empty"])
def test_a_looping_replay_of_a_short_file_lets_the_agent_stop(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rec.csv"
    path.write_text(content)
    sensor = f'[{{"name": "r", "driver": "replay", "path": "{path}", "loop": True}}]'
    assert "stopped" in _run_script(_PRELUDE + f"\n    run({sensor})\n")


# --- 8. replay.py: one malformed JSON line restarts the replay from the top forever ----------


async def test_replay_skips_a_malformed_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    rows = [json.dumps({"ts": t, "value": t + 1}) for t in range(3)]
    path.write_text("\n".join([*rows, "{not json", json.dumps({"ts": 3, "value": 4})]) + "\n")
    sink = Keep()
    cfg = config(
        [{"name": "r", "driver": "replay", "path": str(path), "speed": 100.0, "interval": 0.05}]
    )
    agent = Agent(cfg, sinks=[sink])
    await asyncio.wait_for(agent.run(duration=1.0), 5)
    # The README's bad-row rule ("counted as invalid") holds for CSV, but json.loads raises
    # inside rows(): the stream fails, is restarted from the first row, and never gets past.
    assert sink.values("r") == [1.0, 2.0, 3.0, 4.0]


# --- 9. sinks.py: a rotation whose reopen fails ----------------------------------------------


def _write_until_it_fails(sink: JsonLines, record: Aggregate) -> None:
    for _ in range(100):
        try:
            sink.write(record)
        except OSError:
            return
    pytest.fail("no write failed")


def test_a_failed_rotation_does_not_eat_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    record = Aggregate("air", 0.0, 60.0, 10, {"mean": 21.5, "pad": 1.0}, "C", 1)
    sink = JsonLines(path=path, max_bytes=1024, backups=3)
    with sink:
        while not path.with_name("out.jsonl.3").exists():
            sink.write(record)
        backups_before = sorted(p.name for p in tmp_path.iterdir())
        opened = sink.open

        def fails() -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        sink.open = fails  # type: ignore[method-assign]  # a transient failure to reopen
        for _ in range(4):  # four records the agent would count as sink errors
            _write_until_it_fails(sink, record)
        sink.open = opened  # type: ignore[method-assign]
    left = sorted(p.name for p in tmp_path.iterdir())
    # Every failed write re-runs the rename chain on a file that is gone: .2 and .3 shift
    # out and are deleted, one per failed write.
    assert len(left) >= len(backups_before) - 1, f"before {backups_before}, after {left}"


# --- 10. config: values that pass, or crash, the checks ---------------------------------------


@pytest.mark.parametrize(
    ("where", "value"),
    [("interval", 10**400), ("moving_average", 10**20)],
    ids=["interval-1e400", "moving-average-size-1e20"],
)
def test_huge_numbers_are_config_problems_not_tracebacks(where: str, value: int) -> None:
    sensor: dict[str, Any] = {"name": "a", "driver": "counter"}
    if where == "interval":
        sensor["interval"] = value
    else:
        sensor["pipeline"] = [{"stage": "moving_average", "size": value}]
    with pytest.raises(ConfigError):
        config([sensor])


def test_a_queue_size_that_passes_the_checks_also_runs() -> None:
    with pytest.raises(ConfigError):  # once accepted, then Agent() raised OverflowError
        config([{"name": "a", "driver": "counter"}], queue_size=10**20)
    cfg = config([{"name": "a", "driver": "counter"}], queue_size=1_000_000)
    assert Agent(cfg, sinks=[]).queue.maxsize == 1_000_000


# --- 11. a timed-out blocking read that later raises -----------------------------------------


class SlowFailing(Driver, name="test_robustness_slow_failing"):
    def read_blocking(self) -> Sample:
        time.sleep(0.15)
        raise OSError("i2c bus error")


async def test_an_abandoned_blocking_read_leaves_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["message"]))
    cfg = config([{"name": "s", "driver": "test_robustness_slow_failing", "interval": 0.05}])
    await asyncio.wait_for(Agent(cfg, sinks=[]).run(duration=0.6), 5)
    await asyncio.sleep(0.3)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert reported == [], reported


# --- 12. pipeline.py: the time of a pull that raised is never metered ------------------------


class Slow(Stage, name="test_robustness_slow"):
    __slots__ = ()

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            time.sleep(0.02)
            yield reading


class WorksAfterOneError(Stage, name="test_robustness_works_after_one_error"):
    """Raises on the first reading it ever sees, then takes 2 ms per reading."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = 0

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            self.seen += 1
            if self.seen == 1:
                raise RuntimeError("one bad reading")
            time.sleep(0.002)
            yield reading


def test_stage_time_stays_right_after_a_stage_raised() -> None:
    pipeline = Pipeline([Slow(), WorksAfterOneError()])
    with pytest.raises(RuntimeError):
        list(pipeline.feed(readings([0.0])))
    for _ in range(10):
        list(pipeline.feed(readings([1.0])))
    slow, works = pipeline.stats()
    assert slow["seconds"] >= 0.2
    # 10 readings x 2 ms = 20 ms of its own; the 20 ms the upstream stage spent inside the
    # pull that raised were added to the upstream meter but never to this one, so they are
    # subtracted from this stage's time for good.
    assert works["seconds"] >= 0.018, f"reported {works['seconds'] * 1000:.1f} ms"


# --- 13. sampling.py: close() runs while the reader thread is still inside read_blocking() ---


class Bus(Driver, name="test_robustness_bus"):
    """A bus whose handle must not be closed under a read in progress."""

    def __init__(self) -> None:
        self.reading = False
        self.closed_during_read = False

    def read_blocking(self) -> Sample:
        self.reading = True
        time.sleep(0.3)
        self.reading = False
        return 1.0

    async def close(self) -> None:
        self.closed_during_read = self.reading


async def test_close_waits_for_the_read_in_progress() -> None:
    cfg = config([{"name": "s", "driver": "test_robustness_bus", "interval": 0.5, "timeout": 1.0}])
    agent = Agent(cfg, sinks=[])
    driver = agent.runners[0].driver
    assert isinstance(driver, Bus)
    task = asyncio.create_task(agent.run())
    while not driver.reading:  # stop the agent in the middle of an ordinary read
        await asyncio.sleep(0.005)
    agent.stop()
    await asyncio.wait_for(task, 5)
    assert not driver.closed_during_read, "close() ran on the loop while the thread was reading"


# --- 14. daemon.py: a stage counter named like a field of the `stage_counters` log line ------


class Dedupe(Stage, name="test_robustness_dedupe"):
    """Drops repeated values and counts them under a natural name."""

    __slots__ = ("last", "repeats")

    def __init__(self) -> None:
        self.last: float | None = None
        self.repeats = 0

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            if reading.value == self.last:
                self.repeats += 1
                continue
            self.last = reading.value
            yield reading

    def counters(self) -> dict[str, int]:
        return {"dropped": self.repeats}


async def test_stopping_survives_any_stage_counter_name() -> None:
    cfg = config(
        [
            {
                "name": "c",
                "driver": "counter",
                "interval": 0.02,
                "pipeline": [{"stage": "test_robustness_dedupe"}],
            }
        ]
    )
    # _log_counters() passes **counters() next to received=, passed=, dropped=, ms=:
    # TypeError "got multiple values for keyword argument 'dropped'" at every shutdown.
    await asyncio.wait_for(Agent(cfg, sinks=[]).run(duration=0.2), 5)
