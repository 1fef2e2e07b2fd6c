"""The SHT31 driver, unchanged, on a simulated I2C bus that answers its commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.base import Garbled
from drivers.i2c import SimulatedBus
from drivers.sht31 import SHT31, crc8

MAP = Path(__file__).resolve().parent.parent / "config" / "i2c" / "sht31.toml"


def test_the_checksum_matches_the_datasheet_example() -> None:
    assert crc8(bytes([0xBE, 0xEF])) == 0x92  # SHT3x datasheet, section 4.12


def read(driver: SHT31) -> dict[str, float]:
    asyncio.run(driver.open())
    sample = driver.read_blocking()
    assert isinstance(sample, dict)
    return dict(sample)


def test_a_single_shot_measurement_is_converted() -> None:
    driver = SHT31(bus=MAP)
    got = read(driver)
    assert got["temperature"] == pytest.approx(-45 + 175 * 0x6666 / 65535)  # 25.00 °C
    assert got["humidity"] == pytest.approx(100 * 0x8000 / 65535)  # 50.00 %RH
    assert isinstance(driver.bus, SimulatedBus)
    # First the break that stops a periodic mode left running, then the single shot.
    assert driver.bus.writes == [(0x44, 0x3093, 2), (0x44, 0x2400, 2)]


@pytest.mark.parametrize(("repeatability", "command"), [("medium", 0x240B), ("low", 0x2416)])
def test_repeatability_picks_the_command(repeatability: str, command: int) -> None:
    driver = SHT31(bus=MAP, repeatability=repeatability)  # type: ignore[arg-type]
    read(driver)
    assert driver.bus.writes == [(0x44, 0x3093, 2), (0x44, command, 2)]  # type: ignore[union-attr]


def test_a_garbled_transfer_is_garbled_not_a_value(tmp_path: Path) -> None:
    garbled = tmp_path / "sht31.toml"
    garbled.write_text('["0x44"]\n"0x2400" = [0x66, 0x67, 0x93, 0x80, 0x00, 0xA2]\n')
    driver = SHT31(bus=garbled)
    asyncio.run(driver.open())
    sample = driver.read_blocking()
    assert isinstance(sample, Garbled)
    assert "CRC mismatch in 666793" in sample.reason


def test_normal_mode_starts_periodic_measurements_once_then_fetches() -> None:
    driver = SHT31(bus=MAP, mode="normal", repeatability="low")
    first = read(driver)
    second = driver.read_blocking()
    assert (
        first
        == second
        == {"temperature": pytest.approx(25.0, abs=0.01), "humidity": pytest.approx(50.0, abs=0.01)}
    )
    # break, then 1 measurement a second at low repeatability, then a fetch per read
    assert driver.bus.writes == [  # type: ignore[union-attr]
        (0x44, 0x3093, 2),
        (0x44, 0x212D, 2),
        (0x44, 0xE000, 2),
        (0x44, 0xE000, 2),
    ]


async def test_the_agent_counts_garbled_reads_and_keeps_the_good_ones(tmp_path: Path) -> None:
    from agent.config import parse
    from agent.daemon import Agent
    from tests.test_sampling import Collect

    garbled = tmp_path / "sht31.toml"
    garbled.write_text('["0x44"]\n"0x2400" = [0x66, 0x67, 0x93, 0x80, 0x00, 0xA2]\n')
    sensors = [
        {"name": "good", "driver": "sht31", "bus": str(MAP), "interval": 0.05},
        {"name": "bad", "driver": "sht31", "bus": str(garbled), "interval": 0.05},
    ]
    config = parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    sink = Collect()
    agent = Agent(config, sinks=[sink])
    await asyncio.wait_for(agent.run(duration=0.4), 5)
    assert sink.readings("good.temperature")
    assert sink.readings("bad.temperature") == []
    bad = next(r for r in agent.runners if r.sensor.name == "bad")
    # A garbled transfer is input the chip sent: counted as garbled, and no breaker trips.
    assert bad.stats.garbled >= 2
    assert bad.stats.errors == 0
