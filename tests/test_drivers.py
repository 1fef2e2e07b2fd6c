"""The simulated drivers: repeatable signals, faults on request, and file replay."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from agent.clock import ManualClock
from drivers import InjectedFault
from drivers.counter import Counter
from drivers.random_walk import RandomWalk
from drivers.replay import Replay
from drivers.sine import Sine


async def reads(driver: Counter | RandomWalk | Sine, n: int) -> list[float | None]:
    return [await driver.read() for _ in range(n)]  # type: ignore[misc]


async def test_a_seed_makes_a_signal_repeatable() -> None:
    first = await reads(RandomWalk(seed=3, step=1.0), 50)
    again = await reads(RandomWalk(seed=3, step=1.0), 50)
    other = await reads(RandomWalk(seed=4, step=1.0), 50)
    assert first == again
    assert first != other


async def test_random_walk_stays_within_its_bounds() -> None:
    values = await reads(RandomWalk(seed=1, start=0.5, step=5.0, low=0, high=1), 200)
    assert all(0 <= v <= 1 for v in values if v is not None)
    assert len(set(values)) > 2


async def test_sine_follows_the_clock() -> None:
    clock = ManualClock(0.0)
    sine = Sine(amplitude=2.0, offset=10.0, period=4.0, clock=clock)
    values = []
    for _ in range(4):
        values.append(await sine.read())
        clock.advance(1.0)
    assert values == pytest.approx([10.0, 12.0, 10.0, 8.0])


async def test_faults_do_not_change_the_signal_they_interrupt() -> None:
    clean = await reads(Counter(seed=5), 200)
    faulty = Counter(seed=5, dropouts=0.2, spikes=0.1, spike_size=1000)
    got = await reads(faulty, 200)
    dropped = [i for i, v in enumerate(got) if v is None]
    spiked = [i for i, v in enumerate(got) if v is not None and v != clean[i]]
    assert 20 < len(dropped) < 60
    assert 5 < len(spiked) < 40
    assert all(got[i] == clean[i] + 1000 for i in spiked)  # type: ignore[operator]


async def test_injected_errors_raise_at_the_requested_rate() -> None:
    driver = Counter(seed=1, errors=0.25)
    failures = 0
    for _ in range(400):
        try:
            await driver.read()
        except InjectedFault:
            failures += 1
    assert 60 < failures < 140


async def test_an_injected_hang_never_returns() -> None:
    driver = Counter(hangs=1.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await driver.read()


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("ts,value\n" + "\n".join(rows) + "\n")
    return path


async def collect(driver: Replay) -> list[float | None]:
    return [v async for v in driver.stream()]  # type: ignore[misc]


async def test_replay_csv_keeps_the_recorded_spacing_scaled_by_speed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["100.0,1", "100.5,2", "101.0,3"])
    started = time.monotonic()
    values = await collect(Replay(path=path, speed=10.0))
    elapsed = time.monotonic() - started
    assert values == [1.0, 2.0, 3.0]
    assert 0.09 <= elapsed < 0.5  # 1 s of recording at 10x


async def test_replay_jsonl_with_iso_timestamps_and_other_field_names(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rows = [
        {"time": "2026-01-01T00:00:00+00:00", "temp": 20.5},
        {"time": "2026-01-01T00:00:00.010000+00:00", "temp": 21.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert await collect(Replay(path=path, time="time", value="temp")) == [20.5, 21.0]


async def test_replay_turns_a_bad_row_into_an_invalid_value(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["0,1", "oops,2", "0.01,x", "0.02,3"])
    values = await collect(Replay(path=path, speed=100.0))
    assert values[0] == 1.0
    assert values[3] == 3.0
    assert all(math.isnan(v) for v in values[1:3])  # type: ignore[arg-type]


async def test_replay_can_loop(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["0,1", "0.001,2"])
    stream = Replay(path=path, loop=True, speed=100.0).stream()
    values = [await anext(stream) for _ in range(5)]
    await stream.aclose()
    assert values == [1.0, 2.0, 1.0, 2.0, 1.0]
