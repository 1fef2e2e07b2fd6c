"""The GPIO input drivers on gpiozero's mock pins, driven the way the wiring would drive them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from agent.config import ConfigError, parse
from agent.daemon import Agent
from agent.schema import Invalid
from drivers.base import Sample
from drivers.digital_input import DigitalInput, InputStream
from drivers.gpio import GPIODevice
from drivers.motion import Motion
from drivers.pulse_counter import PulseCounter
from tests.test_sampling import Collect


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


def drive(pin: Any, *levels: int) -> None:
    for level in levels:
        pin.drive_high() if level else pin.drive_low()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """A bounded poll: return as soon as `condition` holds, fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


class Listening:
    """A driver opened, with its stream consumed into `got` by a task, as the agent would."""

    def __init__(self, driver: InputStream) -> None:
        self.driver = driver
        self.got: list[Sample] = []

    async def __aenter__(self) -> Listening:
        await self.driver.open()
        self._task = asyncio.create_task(self._consume())
        await until(lambda: len(self.got) == 1)  # the state when the stream started
        return self

    async def _consume(self) -> None:
        async for sample in self.driver.stream():
            self.got.append(sample)

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.driver.close()


# digital_input


async def test_the_state_comes_first_then_each_change(factory: MockFactory) -> None:
    door = DigitalInput(pin=17, pull_up=False, bounce=0.01, pin_factory=factory)
    async with Listening(door) as listening:
        assert listening.got == [0.0]
        drive(factory.pin(17), 1)
        await until(lambda: len(listening.got) == 2)
        drive(factory.pin(17), 0)
        await until(lambda: len(listening.got) == 3)
        assert listening.got == [0.0, 1.0, 0.0]
        assert door.channels[0].name == "state"


async def test_chatter_that_ends_in_a_new_state_is_one_change(factory: MockFactory) -> None:
    door = DigitalInput(pin=17, pull_up=False, bounce=0.03, pin_factory=factory)
    async with Listening(door) as listening:
        drive(factory.pin(17), 1, 0, 1, 0, 1)
        await until(lambda: len(listening.got) == 2)
        assert listening.got == [0.0, 1.0]
        assert door.edges == 5
        assert door.suppressed == 0


async def test_chatter_that_settles_back_reports_nothing(factory: MockFactory) -> None:
    door = DigitalInput(pin=17, pull_up=False, bounce=0.03, pin_factory=factory)
    async with Listening(door) as listening:
        drive(factory.pin(17), 1, 0, 1, 0)
        await until(lambda: door.suppressed == 1)  # the burst has settled
        assert listening.got == [0.0]
        assert door.edges == 4


async def test_each_edge_restarts_the_quiet_time(factory: MockFactory) -> None:
    door = DigitalInput(pin=17, pull_up=False, bounce=0.2, pin_factory=factory)
    pin = factory.pin(17)

    def bouncing() -> float:  # on a thread of its own, as gpiozero's callbacks come
        for level in (1, 0):
            drive(pin, level)
            time.sleep(0.05)  # well inside `bounce`: the edges are one burst
        drive(pin, 1)
        return time.monotonic()

    async with Listening(door) as listening:
        last_edge = await asyncio.to_thread(bouncing)
        await until(lambda: len(listening.got) == 2)
        settled = time.monotonic()
        assert listening.got == [0.0, 1.0]  # no 0.0 in between: the burst never held still
        assert settled - last_edge >= 0.19


async def test_pull_up_makes_the_input_active_low(factory: MockFactory) -> None:
    door = DigitalInput(pin=22, pull_up=True, bounce=0, pin_factory=factory)
    async with Listening(door) as listening:
        pin = factory.pin(22)
        assert (pin.pull, pin.state) == ("up", True)
        assert listening.got == [0.0]  # pulled high: the contact is open
        drive(pin, 0)  # the contact shorts the pin to ground
        await until(lambda: len(listening.got) == 2)
        assert listening.got == [0.0, 1.0]


async def test_a_floating_pin_takes_its_active_state(factory: MockFactory) -> None:
    door = DigitalInput(pin=23, active_state=False, bounce=0, pin_factory=factory)
    async with Listening(door) as listening:
        pin = factory.pin(23)
        assert (pin.pull, pin.state) == ("floating", False)
        assert listening.got == [1.0]  # active low, and low
        drive(pin, 1)
        await until(lambda: len(listening.got) == 2)
        assert listening.got == [1.0, 0.0]


@pytest.mark.parametrize("driver", [DigitalInput, PulseCounter])
@pytest.mark.parametrize(
    ("wiring", "key", "message"),
    [
        ({}, "pull_up", "expected pull_up = true (pulled up: active low) or false"),
        ({"pull_up": True, "active_state": False}, "active_state", "leave pull_up out"),
        ({"pull_up": False, "active_state": True}, "active_state", "(active high)"),
    ],
)
def test_an_impossible_wiring_fails_at_construction(
    driver: type[DigitalInput | PulseCounter], wiring: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(Invalid, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        driver(pin=17, **wiring)
    assert e.value.key == key


def test_the_config_check_names_the_wiring_problem() -> None:
    import drivers.digital_input  # noqa: F401  # registers it

    sensor = {"name": "door", "driver": "digital_input", "pin": 17}
    with pytest.raises(ConfigError) as e:
        parse({"agent": {"device_id": "t"}, "sensors": [sensor]}, Path("t.toml"))
    [line] = e.value.lines()
    assert line.startswith("t.toml: sensors[0].pull_up: expected pull_up = true (pulled up")


# pulse_counter


def pulses(pin: Any, n: int, *, active_low: bool) -> None:
    for _ in range(n):
        drive(pin, *((0, 1) if active_low else (1, 0)))


@pytest.mark.parametrize(("per", "seconds"), [("second", 1), ("hour", 3600)])
async def test_count_and_rate_since_the_previous_read(
    factory: MockFactory, per: Literal["second", "hour"], seconds: float
) -> None:
    gauge = PulseCounter(pin=5, pull_up=True, bounce=0, scale=0.2794, per=per, pin_factory=factory)
    pin = factory.pin(5)
    before_open = time.monotonic()
    async with gauge:
        opened = time.monotonic()
        pulses(pin, 7, active_low=True)
        await asyncio.sleep(0.02)
        before_read = time.monotonic()
        first = await gauge.read()
        after_read = time.monotonic()
        pulses(pin, 3, active_low=True)
        await asyncio.sleep(0.02)
        before_second = time.monotonic()
        second = await gauge.read()
        after_second = time.monotonic()
    factor = 0.2794 * seconds
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert first["count"] == 7  # since open: the pull-up's own rise at attach is no pulse
    assert 7 * factor / (after_read - before_open) <= first["rate"]
    assert first["rate"] <= 7 * factor / (before_read - opened)
    assert second["count"] == 3
    assert 3 * factor / (after_second - before_read) <= second["rate"]
    assert second["rate"] <= 3 * factor / (before_second - after_read)


async def test_bounce_ignores_pulses_too_close_to_the_last(factory: MockFactory) -> None:
    gauge = PulseCounter(pin=5, pull_up=False, bounce=0.05, pin_factory=factory)
    pin = factory.pin(5)
    async with gauge:
        pulses(pin, 3, active_low=False)  # one tip of the bucket, the reed bouncing
        await asyncio.sleep(0.06)
        pulses(pin, 1, active_low=False)  # the next tip
        reading = await gauge.read()
    assert isinstance(reading, dict)
    assert reading["count"] == 2
    assert gauge.ignored == 2


async def test_the_read_right_after_open_is_no_rate_of_zero(factory: MockFactory) -> None:
    anemometer = PulseCounter(pin=5, pull_up=True, bounce=0, scale=2.4, pin_factory=factory)
    async with anemometer:
        assert await anemometer.read() is None  # as the agent reads: in the same poll as open
        pulses(factory.pin(5), 2, active_low=True)
        await asyncio.sleep(0.02)
        reading = await anemometer.read()
    assert isinstance(reading, dict)
    assert reading["count"] == 2
    assert reading["rate"] > 0


async def test_no_pulse_is_lost_between_reads(factory: MockFactory) -> None:
    """Pulses counted on another thread while the loop takes and resets the count."""
    meter = PulseCounter(pin=6, pull_up=False, bounce=0, pin_factory=factory)
    total = 0.0
    async with meter:
        done = threading.Event()

        def flowing() -> None:
            pulses(factory.pin(6), 20_000, active_low=False)
            done.set()

        worker = threading.Thread(target=flowing)
        worker.start()
        while not done.is_set():
            reading = await meter.read()  # None for a window too short: its pulses carry over
            total += reading["count"] if isinstance(reading, dict) else 0
            await asyncio.sleep(0)
        worker.join()
        await asyncio.sleep(0.002)
        last = await meter.read()
        assert isinstance(last, dict)
        total += last["count"]
    assert total == 20_000


# motion


@pytest.mark.parametrize("pull_up", [False, True])
async def test_motion_starts_and_ends(factory: MockFactory, pull_up: bool) -> None:
    pir = Motion(pin=4, pull_up=pull_up, queue_len=1, sample_rate=200, pin_factory=factory)
    motion, still = (0, 1) if pull_up else (1, 0)
    async with Listening(pir) as listening:
        drive(factory.pin(4), motion)
        await until(lambda: len(listening.got) == 2)
        drive(factory.pin(4), still)
        await until(lambda: len(listening.got) == 3)
        assert listening.got == [0.0, 1.0, 0.0]
    assert pir.channels[0].device_class == "motion"


async def test_motion_already_there_is_the_first_state(factory: MockFactory) -> None:
    pir = Motion(pin=4, queue_len=3, sample_rate=200, pin_factory=factory)
    async with pir:
        drive(factory.pin(4), 1)  # after open: opening sets the pull, which a mock pin obeys
        states = pir.stream()
        assert isinstance(states, AsyncGenerator)
        assert await asyncio.wait_for(anext(states), 2) == 1.0  # once its queue has filled
        await states.aclose()


# contract and agent


def test_a_gpio_driver_without_attach_and_detach_fails_when_defined() -> None:
    with pytest.raises(TypeError, match="needs attach and detach"):

        class Bare(GPIODevice, name="test_bare_gpio"):
            async def read(self) -> Sample:
                return 1.0


async def test_the_agent_runs_every_twin(tmp_path: Path) -> None:
    sensors = [
        {"name": "door", "driver": "digital_input", "pin": 17, "pull_up": True},
        {"name": "rain", "driver": "pulse_counter", "pin": 5, "pull_up": True, "interval": 0.1},
        {"name": "hall", "driver": "motion", "pin": 4},
    ]
    for sensor in sensors:
        sensor["pins"] = "simulated"
    config = parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    sink = Collect()
    agent = Agent(config, sinks=[sink])
    await asyncio.wait_for(agent.run(duration=0.7), 5)
    assert [r.value for r in sink.readings("door")] == [0.0]  # pulled up, contact open
    assert [r.value for r in sink.readings("hall")] == [0.0]
    counts = [r.value for r in sink.readings("rain.count")]
    assert sum(counts) >= 1  # the twin pulses at 5 Hz
    assert sink.readings("rain.rate")
    assert all(r.stats.errors == 0 and r.stats.crashes == 0 for r in agent.runners)
    assert not [t for t in threading.enumerate() if t.name.startswith("twin-")]  # all stopped


async def test_the_twin_comes_back_when_the_driver_is_reopened() -> None:
    # The agent closes and reopens a driver whose stream failed; a simulated device must
    # keep driving its pins after that, or the sensor would go quiet for good.
    counter = PulseCounter(pin=6, pull_up=True, pins="simulated")
    await counter.open()
    await counter.close()
    await counter.open()
    try:
        await until(lambda: counter._pulses > 0)
    finally:
        await counter.close()


class NoEdges(MockPin):
    """A pin whose edge detection fails, as RPi.GPIO's add_event_detect does on newer kernels."""

    def _enable_event_detect(self) -> None:
        raise RuntimeError("Failed to add edge detection")


@pytest.mark.parametrize(
    "driver",
    [
        lambda f: DigitalInput(pin=17, pull_up=True, pin_factory=f),
        lambda f: PulseCounter(pin=17, pull_up=True, pin_factory=f),
    ],
    ids=["digital_input", "pulse_counter"],
)
async def test_a_failed_open_releases_the_pin_for_the_next_try(
    driver: Callable[[MockFactory], GPIODevice],
) -> None:
    sensor = driver(MockFactory(pin_class=NoEdges))
    for _ in range(2):  # the agent's retry meets the same error, not "pin in use"
        with pytest.raises(RuntimeError, match="Failed to add edge detection"):
            await sensor.open()


async def test_a_failed_open_leaves_no_twin_running() -> None:
    # The agent closes only a driver that opened; a twin started by a failed open would
    # otherwise drive its pins for the rest of the process.
    counter = PulseCounter(pin=12, pull_up=True, pins="simulated")

    def refuse(factory: Any) -> None:
        raise RuntimeError("pin in use")

    counter.attach = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="pin in use"):
        await counter.open()
    assert not any(t.name == "twin-pulse_counter" and t.is_alive() for t in threading.enumerate())
