"""The BH1750 driver, unchanged, on a simulated I2C bus that answers its commands."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from drivers.bh1750 import BH1750
from drivers.i2c import SimulatedBus

MAP = Path(__file__).resolve().parent.parent / "config" / "i2c" / "bh1750.toml"
DATASHEET_LUX = 33680 / 1.2  # "1000_0011_1001_0000" = 33680 counts ≈ 28067 lx (I2C Bus Access)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The driver's waits, recorded instead of slept: the test also runs in no time."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def opened(driver: BH1750) -> BH1750:
    asyncio.run(driver.open())
    return driver


def read(driver: BH1750) -> float:
    sample = driver.read_blocking()
    assert isinstance(sample, dict)
    assert set(sample) == {"illuminance"}
    return sample["illuminance"]


def commands(driver: BH1750) -> list[int]:
    bus = driver.bus
    assert isinstance(bus, SimulatedBus)
    assert all(address == driver.address and size == 1 for address, _, size in bus.writes)
    return [command for _, command, _ in bus.writes]


def test_the_datasheet_example_reads_28067_lux(waits: list[float]) -> None:
    driver = opened(BH1750(bus=MAP))
    assert read(driver) == pytest.approx(DATASHEET_LUX)
    assert round(read(driver)) == 28067
    # Power on, MTreg 69 = 0b010_00101 in two halves, one-time high resolution; each read.
    assert commands(driver) == [0x01, 0x42, 0x65, 0x20] * 2
    assert waits == [0.180] * 2  # the datasheet's longest high-resolution measurement


@pytest.mark.parametrize(
    ("resolution", "command", "lux", "wait"),
    [("high2", 0x21, DATASHEET_LUX / 2, 0.180), ("low", 0x23, DATASHEET_LUX, 0.024)],
)
def test_resolution_picks_the_command_the_scale_and_the_wait(
    waits: list[float], resolution: str, command: int, lux: float, wait: float
) -> None:
    driver = opened(BH1750(bus=MAP, resolution=resolution))  # type: ignore[arg-type]
    assert read(driver) == pytest.approx(lux)
    assert commands(driver)[-1] == command
    assert waits == [pytest.approx(wait)]


@pytest.mark.parametrize(
    ("mtreg", "high", "low"),
    [
        (31, 0x40, 0x7F),
        (138, 0x44, 0x6A),
        (254, 0x47, 0x7E),
    ],  # datasheet: 31 and 254 are the limits
)
def test_the_measurement_time_register_trades_time_for_sensitivity(
    waits: list[float], mtreg: int, high: int, low: int
) -> None:
    driver = opened(BH1750(bus=MAP, mtreg=mtreg))
    assert read(driver) == pytest.approx(DATASHEET_LUX * 69 / mtreg)
    assert commands(driver) == [0x01, high, low, 0x20]
    assert waits == [pytest.approx(0.180 * mtreg / 69)]


def test_normal_mode_starts_continuous_measurement_once(waits: list[float]) -> None:
    driver = opened(BH1750(bus=MAP, mode="normal", resolution="low"))
    assert read(driver) == pytest.approx(DATASHEET_LUX)
    assert read(driver) == pytest.approx(DATASHEET_LUX)
    assert commands(driver) == [0x01, 0x42, 0x65, 0x13]  # continuous low resolution
    assert waits == [0.024]  # only the first read waits for a result


def test_a_missing_device_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="no device at 0x5c"):
        read(opened(BH1750(bus=MAP, address=0x5C)))


async def test_the_agent_reads_lux_from_it(tmp_path: Path) -> None:
    from agent.config import parse
    from agent.daemon import Agent
    from agent.records import Reading
    from tests.test_sampling import Collect

    sensor = {"name": "light", "driver": "bh1750", "bus": str(MAP), "resolution": "low"}
    config = parse(
        {"agent": {"device_id": "t"}, "sensors": [{**sensor, "interval": 0.05}]},
        tmp_path / "t.toml",
    )
    sink = Collect()
    await asyncio.wait_for(Agent(config, sinks=[sink]).run(duration=0.4), 5)
    readings = [r for r in sink.records if isinstance(r, Reading)]
    assert len(readings) >= 3
    assert {(r.sensor, r.unit) for r in readings} == {("light", "lx")}
    assert all(r.value == pytest.approx(DATASHEET_LUX) for r in readings)
