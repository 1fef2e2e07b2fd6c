"""The HC-SR04 and MCP3008 drivers, unchanged, on gpiozero's mock pins.

Each test hands the driver its own MockFactory with the device wired up as it would be on
a board: a trigger pin that echoes, or an ADC answering on the SPI pins.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockTriggerPin

from drivers.gpio import GPIODevice
from drivers.hcsr04 import HCSR04, echo_time
from drivers.mcp3008 import MCP3008
from drivers.mcp3008_twin import SimulatedMCP3008

# gpiozero's advice to use pigpio for timing, and its warning for each missed echo.
pytestmark = [
    pytest.mark.filterwarnings("ignore::gpiozero.PWMSoftwareFallback"),
    pytest.mark.filterwarnings("ignore::gpiozero.DistanceSensorNoEcho"),
]

ECHO, TRIGGER = 27, 17
# An echo is timed from its edges on real threads: it may come out long (a late wake-up, a
# busy GIL), never short. So a test polls, bounded, until the median of a few echoes lands
# within LATE above the truth, and checks that no reading was ever short.
LATE = 0.15  # m, about 0.9 ms


@contextmanager
def opened(driver: GPIODevice) -> Iterator[None]:
    asyncio.run(driver.open())
    try:
        yield
    finally:
        asyncio.run(driver.close())


def wired(distance: float) -> tuple[MockFactory, MockTriggerPin]:
    """A factory whose trigger pin answers with the echo of a target `distance` metres away."""
    factory = MockFactory()
    echo = factory.pin(ECHO)
    trigger = factory.pin(
        TRIGGER, pin_class=MockTriggerPin, echo_pin=echo, echo_time=echo_time(distance)
    )
    return factory, trigger


def hcsr04(factory: MockFactory, max_distance: float = 2.0) -> HCSR04:
    return HCSR04(
        echo=ECHO, trigger=TRIGGER, max_distance=max_distance, queue_len=3, pin_factory=factory
    )


def settle(driver: HCSR04, distance: float) -> list[float]:
    """Read until a reading lands in [distance, distance + LATE), for 2 s at most."""
    got: list[float] = []
    deadline = time.monotonic() + 2.0  # queue_len echoes take ~0.2 s
    while not got or not distance <= got[-1] < distance + LATE:
        assert time.monotonic() < deadline, f"{distance} m never read; got {got}"
        reading = driver.read_blocking()
        assert isinstance(reading, float)
        got.append(reading)
        time.sleep(0.02)
    return got


def test_the_distance_is_half_the_echo_times_the_speed_of_sound() -> None:
    factory, trigger = wired(0.5)
    driver = hcsr04(factory)
    with opened(driver):
        assert min(settle(driver, 0.5)) >= 0.5
        trigger.echo_time = echo_time(1.5)  # the target moves away
        settle(driver, 1.5)


def test_nothing_within_max_distance_is_no_reading() -> None:
    factory, _ = wired(3.0)
    driver = hcsr04(factory, max_distance=1.0)
    with opened(driver):
        assert driver.read_blocking() is None


def test_a_sensor_that_never_echoes_is_an_error() -> None:
    driver = hcsr04(MockFactory())  # TRIG and ECHO not connected
    with opened(driver), pytest.raises(OSError, match="no echo"):
        driver.read_blocking()


def test_a_sensor_that_stops_echoing_is_an_error_not_its_last_distance() -> None:
    factory, trigger = wired(0.5)
    driver = hcsr04(factory)
    with opened(driver):
        settle(driver, 0.5)
        trigger.echo_pin = factory.pin(5)  # ECHO's wire comes off: no more edges on GPIO27
        time.sleep(0.6)  # longer than any gap between two echoes
        with pytest.raises(OSError, match=r"no echo for 0\.5 s"):
            driver.read_blocking()


def test_echo_and_trigger_on_one_pin_is_refused() -> None:
    with pytest.raises(ValueError, match="other than echo"):
        HCSR04(echo=5, trigger=5)


VREF = 3.3
CLOCK_PIN, MISO_PIN = 11, 9  # SPI0's
# The datasheet's conversion, VIN = code × VREF / 1024, at its ends and mid-scale.
DATASHEET = {1023: VREF * 1023 / 1024, 512: VREF / 2, 0: 0.0}
CODES = [1023, 512, 0, 1, 256, 768, 100, 1000]


def volts(code: int, vref: float = VREF) -> float:
    return code * vref / 1024


def test_each_input_reads_its_own_level_converted_as_the_datasheet_says() -> None:
    factory = MockFactory()
    chip = SimulatedMCP3008(factory, vref=VREF)
    driver = MCP3008(inputs=tuple(range(8)), vref=VREF, pin_factory=factory)
    with opened(driver):
        for shift in range(8):  # every code on every input, and no two inputs alike
            codes = CODES[shift:] + CODES[:shift]
            chip.volts = [volts(c) for c in codes]
            got = driver.read_blocking()
            assert isinstance(got, dict)
            assert got == pytest.approx({f"ch{n}": volts(c) for n, c in enumerate(codes)})
            for n, code in enumerate(codes):
                if code in DATASHEET:
                    assert got[f"ch{n}"] == pytest.approx(DATASHEET[code], abs=1e-12)
        chip.volts[4] = VREF  # full scale is the top code, one step below VREF
        assert driver.read_blocking()["ch4"] == pytest.approx(VREF * 1023 / 1024)  # type: ignore[index]


def test_vref_scales_the_reading() -> None:
    factory = MockFactory()
    chip = SimulatedMCP3008(factory, vref=5.0)
    chip.volts[6] = volts(512, 5.0)
    driver = MCP3008(inputs=(6,), vref=5.0, pin_factory=factory)
    with opened(driver):
        assert driver.read_blocking() == pytest.approx({"ch6": 2.5})


def test_differential_reads_an_input_against_its_neighbour() -> None:
    factory = MockFactory()
    chip = SimulatedMCP3008(factory, vref=VREF)
    chip.volts[2], chip.volts[3] = volts(700), volts(200)
    driver = MCP3008(inputs=(2, 3), differential=True, pin_factory=factory)
    with opened(driver):
        # IN+ below IN- reads 0 (datasheet section 4.1)
        assert driver.read_blocking() == pytest.approx({"ch2": volts(500), "ch3": 0.0})


def test_the_chip_select_picks_the_chip() -> None:
    factory = MockFactory()
    for device, code in ((0, 100), (1, 900)):  # two chips on one bus, CE0 and CE1
        SimulatedMCP3008(factory, device=device).volts = [volts(code)] * 8
    driver = MCP3008(inputs=(0, 7), device=1, pin_factory=factory)
    with opened(driver):
        assert driver.read_blocking() == pytest.approx({"ch0": volts(900), "ch7": volts(900)})


@pytest.mark.parametrize(
    ("inputs", "why"), [((8,), "0 to 7"), ((), "got \\[\\]"), ((1, 3, 1), "each once")]
)
def test_bad_inputs_are_refused_at_construction(inputs: tuple[int, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        MCP3008(inputs=inputs)


def test_the_config_names_the_bad_input(tmp_path: Path) -> None:
    from agent.config import ConfigError, parse

    sensors = [{"name": "adc", "driver": "mcp3008", "inputs": [0, 8]}]
    with pytest.raises(ConfigError) as caught:
        parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    assert caught.value.lines() == [
        f"{tmp_path / 't.toml'}: sensors[0].inputs[1]: expected an integer from 0 to 7, got 8"
    ]


async def test_the_simulated_twins_feed_the_agent(tmp_path: Path) -> None:
    from agent.config import parse
    from agent.daemon import Agent
    from tests.test_sampling import Collect

    common = {"pins": "simulated", "interval": 0.1, "timeout": 0.6}
    ranger = {"driver": "hcsr04", "echo": ECHO, "trigger": TRIGGER, "max_distance": 2.0}
    sensors = [
        {"name": "range", **ranger, **common},
        {"name": "adc", "driver": "mcp3008", "inputs": [0, 5], **common},
    ]
    config = parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    sink = Collect()
    await asyncio.wait_for(Agent(config, sinks=[sink]).run(duration=0.8), 5)
    distances = [r.value for r in sink.readings("range")]
    assert distances
    assert all(0.2 * 2.0 <= d < 2.0 for d in distances)  # the twin's target, within range
    assert 1.0 <= statistics.median(distances) < 1.05 + LATE  # 1 m, drifting 5 cm a second
    assert {r.unit for r in sink.readings("range")} == {"m"}
    for channel in ("adc.ch0", "adc.ch5"):
        got = sink.readings(channel)
        assert got
        assert all(0.0 < r.value < VREF and r.unit == "V" for r in got)
    # the twin gives each input its own wave: mid-scale for input 0, below it for input 5
    assert sink.readings("adc.ch0")[0].value == pytest.approx(VREF / 2, abs=0.1)
    assert sink.readings("adc.ch5")[0].value < VREF / 2 - 0.5


async def test_two_simulated_adcs_share_one_board_and_its_spi_bus() -> None:
    # On a Pi, chips on CE0 and CE1 share SPI0's clock and data pins. Each simulated driver
    # on its own mock pins made the second chip read 0 V: gpiozero shares SPI buses by pin.
    first = MCP3008(inputs=(0,), device=0, pins="simulated")
    second = MCP3008(inputs=(0,), device=1, pins="simulated")
    await first.open()
    await second.open()
    try:
        assert first.factory is second.factory
        for driver in (first, second):
            sample = driver.read_blocking()
            assert isinstance(sample, dict)
            assert sample["ch0"] == pytest.approx(VREF / 2, abs=0.1)  # the twin's mid-scale
    finally:
        await first.close()
        await second.close()


async def test_the_simulated_board_is_fresh_once_every_driver_has_closed() -> None:
    # A pin used one way by one run (a plain input) must not stay so for the next (a trigger).
    first = MCP3008(inputs=(0,), pins="simulated")
    await first.open()
    board = first.factory
    await first.close()
    ranger = HCSR04(echo=MISO_PIN, trigger=CLOCK_PIN, pins="simulated")
    await ranger.open()
    try:
        assert ranger.factory is not board
        assert isinstance(ranger.factory.pin(CLOCK_PIN), MockTriggerPin)
    finally:
        await ranger.close()
