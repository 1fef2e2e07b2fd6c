"""TI ADS1115 16-bit ADC on I2C: single-ended voltages of inputs A0..A3 against GND."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from agent.schema import Invalid
from drivers.base import Channel, Sample
from drivers.i2c import I2CDevice

CONVERSION, CONFIG = 0x00, 0x01  # register pointers; both registers are 16 bits
FULL_SCALE = {6144: 0b000, 4096: 0b001, 2048: 0b010, 1024: 0b011, 512: 0b100, 256: 0b101}
DATA_RATE = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}  # SPS -> DR bits


class ADS1115(I2CDevice, name="ads1115"):
    """TI ADS1115 16-bit ADC on I2C: each listed input against GND, in volts.

    Mode "forced" converts each input once per read (single-shot; the chip sleeps in between);
    "normal" converts continuously, which the chip does for one input only."""

    channels: tuple[Channel, ...] = ()  # a0..a3: one per input read, set by __init__

    def __init__(
        self,
        *,
        address: Literal[0x48, 0x49, 0x4A, 0x4B] = 0x48,
        inputs: Annotated[tuple[Literal[0, 1, 2, 3], ...], "single-ended inputs to read"] = (0,),
        full_scale_mv: Annotated[
            Literal[6144, 4096, 2048, 1024, 512, 256], "± input range of the amplifier, mV"
        ] = 4096,
        data_rate: Annotated[Literal[8, 16, 32, 64, 128, 250, 475, 860], "samples/s"] = 128,
        mode: Annotated[Literal["forced", "normal"], "forced: convert on each read"] = "forced",
        **bus: int | Path,
    ) -> None:
        super().__init__(**bus)
        if not inputs or len(set(inputs)) < len(inputs):
            raise Invalid("inputs", f"expected 1 to 4 different inputs, got {list(inputs)}")
        if mode == "normal" and len(inputs) > 1:
            raise Invalid("inputs", f'expected one input in "normal" mode, got {list(inputs)}')
        self.address, self.inputs, self.measuring = address, inputs, mode
        self.channels = tuple(Channel(f"a{i}", "V", "voltage") for i in inputs)
        self.volts_per_count, self.period = full_scale_mv / 1000 / 32768, 1 / data_rate
        pga, dr, single_shot = FULL_SCALE[full_scale_mv], DATA_RATE[data_rate], mode == "forced"
        self.settings = pga << 9 | single_shot << 8 | dr << 5 | 0b11  # 0b11: comparator off
        self.started = False

    def config(self, ain: int) -> int:
        """The config word that starts a conversion of input `ain` against GND (MUX 0b1xx)."""
        return 1 << 15 | (0b100 | ain) << 12 | self.settings

    def read_blocking(self) -> Sample:
        sample = {}
        for ain in self.inputs:
            if self.measuring == "forced" or not self.started:
                self._convert(ain)
            raw = bytes(self.bus.read_i2c_block_data(self.address, CONVERSION, 2))
            sample[f"a{ain}"] = int.from_bytes(raw, "big", signed=True) * self.volts_per_count
        return sample

    def _convert(self, ain: int) -> None:
        word = self.config(ain).to_bytes(2, "big")
        self.bus.write_i2c_block_data(self.address, CONFIG, list(word))
        self.started = True
        time.sleep(self.period * 1.1)  # a conversion takes 1/rate; the oscillator may be 10% slow
        if self.measuring == "normal":
            return  # never idle, so OS tells nothing; one period brings the first result
        for _ in range(10):  # bounded: a chip stuck converting is an error, not a hang
            if self.bus.read_i2c_block_data(self.address, CONFIG, 1)[0] & 0x80:  # OS: idle again
                return
            time.sleep(self.period / 4)
        raise OSError(f"ADS1115 at 0x{self.address:02x}: the conversion of a{ain} never ended")
