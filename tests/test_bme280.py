"""The BME280 driver, unchanged, on a simulated I2C bus serving the chip's registers."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest

from agent.config import parse
from drivers.bme280 import BME280, calibration, compensate
from drivers.i2c import SimulatedBus

MAP = Path(__file__).resolve().parent.parent / "config" / "i2c" / "bme280.toml"

# The worked example of Bosch's BMP280 datasheet (section 3.12): the BME280 compensates
# temperature and pressure with the same formulas.
DATASHEET_TP = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
HUMIDITY = (75, 362, 0, 313, 50, 30)  # dig_H1..H6 of a typical chip


def test_temperature_and_pressure_match_the_datasheet_example() -> None:
    temperature, pressure, _ = compensate((*DATASHEET_TP, *HUMIDITY), 519888, 415148, 0)
    assert temperature == pytest.approx(25.08, abs=0.005)  # datasheet: 25.08 °C
    assert pressure == pytest.approx(100653.27, abs=0.01)  # datasheet: 100653.27 Pa


def reference_humidity(raw_t: int, raw_h: int) -> float:
    """The datasheet's 32-bit integer formulas: an independent check of the float ones."""
    t1, t2, t3 = DATASHEET_TP[:3]
    h1, h2, h3, h4, h5, h6 = HUMIDITY
    var1 = (((raw_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((raw_t >> 4) - t1) * ((raw_t >> 4) - t1)) >> 12) * t3) >> 14
    v = var1 + var2 - 76800
    v = (((raw_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15
    v = v * (
        (
            (
                (
                    (((var1 + var2 - 76800) * h6) >> 10)
                    * ((((var1 + var2 - 76800) * h3) >> 11) + 32768)
                )
                >> 10
            )
            + 2097152
        )
        * h2
        + 8192
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024


@pytest.mark.parametrize("raw_h", [20000, 30000, 40000])
def test_humidity_agrees_with_the_integer_formula(raw_h: int) -> None:
    _, _, humidity = compensate((*DATASHEET_TP, *HUMIDITY), 519888, 0, raw_h)
    assert humidity == pytest.approx(reference_humidity(519888, raw_h), abs=0.05)


def test_calibration_registers_are_unpacked_including_the_split_12_bit_values() -> None:
    h1, h2, h3, h4, h5, h6 = 75, -362, 7, -313, -50, -30  # negative H4/H5 straddle a nibble
    block_88 = struct.pack("<HhhHhhhhhhhh", *DATASHEET_TP) + bytes([0, h1])
    e4, e5, e6 = (h4 >> 4) & 0xFF, (h4 & 0x0F) | (h5 & 0x0F) << 4, (h5 >> 4) & 0xFF
    block_e1 = struct.pack("<hBBBBb", h2, h3, e4, e5, e6, h6)
    assert calibration(block_88, block_e1) == (*DATASHEET_TP, h1, h2, h3, h4, h5, h6)


def read(driver: BME280) -> dict[str, float]:
    asyncio.run(driver.open())
    sample = driver.read_blocking()
    assert isinstance(sample, dict)
    return dict(sample)


def test_the_driver_reads_a_simulated_chip_like_a_real_one() -> None:
    driver = BME280(bus=MAP)
    first = read(driver)
    assert first["temperature"] == pytest.approx(25.08, abs=0.005)
    assert first["pressure"] == pytest.approx(1006.5327, abs=0.0001)  # hPa
    assert 0 < first["humidity"] < 100
    bus = driver.bus
    assert isinstance(bus, SimulatedBus)
    # Forced mode: oversampling x1 for humidity, then one measurement per read.
    assert bus.writes == [(0x76, 0xF2, 0b001), (0x76, 0xF4, 0b001_001_01)]
    driver.read_blocking()
    assert bus.writes[-1] == (0x76, 0xF4, 0b001_001_01)


def test_normal_mode_and_oversampling_are_written_once() -> None:
    driver = BME280(bus=MAP, mode="normal", oversampling=16)
    read(driver)
    driver.read_blocking()
    assert driver.bus.writes == [(0x76, 0xF2, 0b101), (0x76, 0xF4, 0b101_101_11)]  # type: ignore[union-attr]


RESET = [0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00]  # 0xF7-0xFE before any measurement


def test_normal_mode_waits_for_its_first_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]  # the driver's sleeps advance this clock instead of passing
    monkeypatch.setattr(time, "sleep", lambda s: now.__setitem__(0, now[0] + s))

    class Chip(SimulatedBus):
        """Its data registers keep their reset values until a measurement could have ended."""

        started = float("inf")

        def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
            super().write_byte_data(i2c_addr, register, value)
            if register == 0xF4 and value & 0b11:
                self.started = now[0]

        def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
            if register == 0xF7 and now[0] - self.started < 0.0093:  # datasheet 9.1, at 1x
                return RESET[:length]
            return super().read_i2c_block_data(i2c_addr, register, length)

    driver = BME280(bus=MAP, mode="normal")
    driver._bus = Chip.load(MAP)  # what open() would have set
    first = driver.read_blocking()
    assert isinstance(first, dict)
    assert first["temperature"] == pytest.approx(25.08, abs=0.005)  # not the reset values'


def test_a_setup_interrupted_by_a_bus_error_is_done_again() -> None:
    class Flaky(SimulatedBus):
        """A bus that loses the first write to ctrl_hum, as a long cable now and then does."""

        lost = False

        def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
            if register == 0xF2 and not self.lost:
                self.lost = True
                raise OSError(121, "Remote I/O error")
            super().write_byte_data(i2c_addr, register, value)

    driver = BME280(bus=MAP, mode="normal")
    driver._bus = bus = Flaky.load(MAP)
    with pytest.raises(OSError, match="Remote I/O"):
        driver.read_blocking()
    driver.read_blocking()
    # Else the chip would stay asleep, its registers at their reset values, for good.
    assert bus.writes == [(0x76, 0xF2, 0b001), (0x76, 0xF4, 0b001_001_11)]


def test_a_measurement_that_never_finishes_is_an_error_not_the_last_values() -> None:
    driver = BME280(bus=MAP)
    read(driver)
    bus = driver.bus
    assert isinstance(bus, SimulatedBus)
    bus.registers[0x76][0xF3] = 0x08  # status: measuring, and it stays so
    with pytest.raises(OSError, match="measurement never finished"):
        driver.read_blocking()


def test_a_missing_or_wrong_chip_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no device at 0x77"):
        read(BME280(bus=MAP, address=0x77))
    other = tmp_path / "bmp280.toml"
    other.write_text('["0x76"]\n"0xD0" = 0x58\n')
    with pytest.raises(OSError, match="no BME280 at 0x76: chip id 0x58"):
        read(BME280(bus=other))


def test_a_config_names_the_bus_by_number_or_by_map_file(tmp_path: Path) -> None:
    sensors = [
        {"name": "sim", "driver": "bme280", "bus": str(MAP)},
        {"name": "pi", "driver": "bme280", "bus": 1, "address": 0x77},
    ]
    config = parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    assert config.sensors[0].driver.kwargs["bus"] == MAP
    assert config.sensors[1].driver.kwargs == {"bus": 1, "address": 0x77}


def test_a_device_path_for_a_bus_is_refused_not_read_as_a_register_map(tmp_path: Path) -> None:
    from agent.config import ConfigError

    sensors = [{"name": "pi", "driver": "bme280", "bus": "/dev/i2c-1"}]
    with pytest.raises(ConfigError) as caught:
        parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    assert caught.value.lines() == [
        f"{tmp_path / 't.toml'}: sensors[0].bus: expected a bus number (1 for /dev/i2c-1)"
        ' or a register map (.toml or .json), got "/dev/i2c-1"'
    ]


async def test_the_agent_runs_it_off_the_event_loop_with_three_channels(tmp_path: Path) -> None:
    from agent.daemon import Agent
    from agent.records import Reading
    from tests.test_sampling import Collect

    sensors = [{"name": "climate", "driver": "bme280", "bus": str(MAP), "interval": 0.05}]
    config = parse({"agent": {"device_id": "t"}, "sensors": sensors}, tmp_path / "t.toml")
    sink = Collect()
    await asyncio.wait_for(Agent(config, sinks=[sink]).run(duration=0.4), 5)
    readings = [r for r in sink.records if isinstance(r, Reading)]
    names = {r.sensor: r.unit for r in readings}
    assert names == {
        "climate.temperature": "°C",
        "climate.humidity": "%",
        "climate.pressure": "hPa",
    }
    assert len(readings) >= 9
