"""The ADS1115 driver, unchanged, on a simulated I2C bus holding its 16-bit registers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, parse
from drivers.ads1115 import ADS1115
from drivers.i2c import SimulatedBus

MAP = Path(__file__).resolve().parent.parent / "config" / "i2c" / "ads1115.toml"
RESET_CONFIG = 0x8583  # datasheet default: AIN0-AIN1, ±2.048 V, single-shot, 128 SPS, comp. off


class Chip(SimulatedBus):
    """The one thing an ADS1115 does that a register map cannot: a conversion started on an
    input leaves that input's code in the conversion register. A stuck chip never ends one."""

    def __init__(self, codes: dict[int, int], *, stuck: bool = False) -> None:
        super().__init__({0x48: {0x00: 0, 0x01: RESET_CONFIG}}, register_bytes={0x48: 2})
        self.codes, self.stuck = codes, stuck

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None:
        super().write_i2c_block_data(i2c_addr, register, data)
        config = self.registers[i2c_addr][0x01]
        if register == 0x01 and config >> 12 & 0b0100:  # MUX 0b1xx: input xx against GND
            self.registers[i2c_addr][0x00] = self.codes[config >> 12 & 0b11]
        if self.stuck:
            self.registers[i2c_addr][0x01] = config & 0x7FFF  # OS 0: "converting"


def read(driver: ADS1115, chip: SimulatedBus | None = None) -> dict[str, float]:
    if chip is None:
        asyncio.run(driver.open())
    else:
        driver._bus = chip  # what the agent's open() would have set: the bus to talk to
    sample = driver.read_blocking()
    assert isinstance(sample, dict)
    return dict(sample)


@pytest.mark.parametrize(
    ("code", "full_scale_mv", "volts"),
    [
        (0x7FFF, 4096, 4.096 * 32767 / 32768),  # +FS (2^15 - 1) / 2^15
        (0x8000, 4096, -4.096),  # -FS
        (0x0001, 4096, 125e-6),  # one LSB at ±4.096 V: 125 µV
        (0xFFFF, 4096, -125e-6),  # minus one LSB
        (0x0001, 6144, 187.5e-6),  # the LSB at the other ends of the range table
        (0x0001, 256, 7.8125e-6),
    ],
)
def test_codes_convert_as_in_the_datasheet(code: int, full_scale_mv: int, volts: float) -> None:
    driver = ADS1115(full_scale_mv=full_scale_mv)  # type: ignore[arg-type]
    assert read(driver, Chip({0: code})) == {"a0": pytest.approx(volts, abs=1e-12)}


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({}, 0xC383),  # OS 1, AIN0, ±4.096 V, single-shot, 128 SPS, comparator off
        ({"inputs": (2,), "full_scale_mv": 2048, "data_rate": 860}, 0xE5E3),
        ({"inputs": (3,), "full_scale_mv": 6144, "data_rate": 8}, 0xF103),
        ({"inputs": (1,), "full_scale_mv": 256, "data_rate": 250}, 0xDBA3),
    ],
)
def test_each_read_writes_the_config_word_that_starts_a_conversion(
    options: dict[str, object], word: int
) -> None:
    driver = ADS1115(**options)  # type: ignore[arg-type]
    chip = Chip(dict.fromkeys(range(4), 0x4000))
    read(driver, chip)
    read(driver, chip)
    assert chip.writes == [(0x48, 0x01, word)] * 2


def test_the_config_word_differs_from_the_reset_default_only_where_it_must() -> None:
    # At the default's range and rate, only MUX changes: from AIN0-AIN1 to AIN0 against GND.
    assert ADS1115(full_scale_mv=2048).config(0) == RESET_CONFIG | 0b100 << 12


def test_several_inputs_are_converted_one_after_the_other() -> None:
    chip = Chip({0: 0x7FFF, 1: 0x4000, 2: 0x0001, 3: 0x8000})
    got = read(ADS1115(inputs=(3, 0, 2, 1)), chip)
    assert got == pytest.approx(
        {"a3": -4.096, "a0": 4.096 * 32767 / 32768, "a2": 125e-6, "a1": 2.048}
    )
    assert [word >> 12 for _, _, word in chip.writes] == [0b1111, 0b1100, 0b1110, 0b1101]


def test_normal_mode_starts_continuous_conversion_once() -> None:
    driver = ADS1115(inputs=(1,), mode="normal", data_rate=860)
    chip = Chip({1: 0x4000})
    assert read(driver, chip) == {"a1": pytest.approx(2.048)}
    chip.registers[0x48][0x00] = 0x2000  # the chip's next conversion
    assert read(driver, chip) == {"a1": pytest.approx(1.024)}
    assert chip.writes == [(0x48, 0x01, 0xD2E3)]  # MODE (bit 8) 0: continuous


def test_a_conversion_that_never_ends_is_an_error_not_a_hang() -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="ADS1115 at 0x48: the conversion of a0 never ended"):
        read(ADS1115(data_rate=860), Chip({0: 0x4000}, stuck=True))
    assert time.monotonic() - started < 0.5


def test_a_missing_device_is_a_clear_error() -> None:
    with pytest.raises(OSError, match="no device at 0x49"):
        read(ADS1115(bus=MAP, address=0x49))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"inputs": []}, "sensors[0].inputs: expected 1 to 4 different inputs, got []"),
        ({"inputs": [1, 1]}, "sensors[0].inputs: expected 1 to 4 different inputs, got [1, 1]"),
        ({"inputs": [4]}, "sensors[0].inputs[0]: expected one of 0, 1, 2, 3, got 4"),
        (
            {"inputs": [0, 1], "mode": "normal"},
            'sensors[0].inputs: expected one input in "normal" mode, got [0, 1]',
        ),
    ],
)
def test_a_config_asking_the_impossible_is_refused(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    sensor = {"name": "adc", "driver": "ads1115", "bus": str(MAP), **options}
    with pytest.raises(ConfigError) as caught:
        parse({"agent": {"device_id": "t"}, "sensors": [sensor]}, tmp_path / "t.toml")
    assert caught.value.lines() == [f"{tmp_path / 't.toml'}: {message}"]


def test_a_register_map_value_wider_than_its_register_is_refused() -> None:
    with pytest.raises(ValueError, match="0x48 register 0x00: 0x10000 does not fit"):
        SimulatedBus({0x48: {0x00: 0x1_0000}}, register_bytes={0x48: 2})


async def test_the_agent_reads_one_channel_per_input(tmp_path: Path) -> None:
    from agent.daemon import Agent
    from agent.records import Reading
    from tests.test_sampling import Collect

    sensor = {"name": "adc", "driver": "ads1115", "bus": str(MAP), "inputs": [0, 1]}
    config = parse(
        {"agent": {"device_id": "t"}, "sensors": [{**sensor, "interval": 0.05}]},
        tmp_path / "t.toml",
    )
    sink = Collect()
    await asyncio.wait_for(Agent(config, sinks=[sink]).run(duration=0.4), 5)
    readings = [r for r in sink.records if isinstance(r, Reading)]
    assert {(r.sensor, r.unit) for r in readings} == {("adc.a0", "V"), ("adc.a1", "V")}
    assert len(readings) >= 6
    assert all(r.value == pytest.approx(2.048) for r in readings)  # the map's 0x4000 at ±4.096 V
