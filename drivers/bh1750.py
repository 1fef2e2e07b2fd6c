"""ROHM BH1750 ambient light sensor on I2C. It has no registers: each step is a one-byte
command, and a measurement is read back as two bytes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from agent.schema import Bounds
from drivers.base import Channel, Sample
from drivers.i2c import I2CDevice

POWER_ON = 0x01
# Continuous-measurement command, and the datasheet's longest measurement time at MTreg 69.
# The one-time command is the continuous one + 0x10.
RESOLUTION = {"high": (0x10, 0.180), "high2": (0x11, 0.180), "low": (0x13, 0.024)}


class BH1750(I2CDevice, name="bh1750"):
    """ROHM BH1750 ambient light sensor on I2C, in lux."""

    channels = (Channel("illuminance", "lx", "illuminance"),)

    def __init__(
        self,
        *,
        address: Literal[0x23, 0x5C] = 0x23,
        resolution: Annotated[Literal["high", "high2", "low"], "1, 0.5 or 4 lx steps"] = "high",
        mode: Annotated[
            Literal["forced", "normal"], "forced: measure on each read, then power down"
        ] = "forced",
        mtreg: Annotated[int, Bounds(ge=31, le=254), "measurement time; 69 is 1.2 counts/lx"] = 69,
        **bus: int | Path,
    ) -> None:
        super().__init__(**bus)
        self.address, self.measuring = address, mode
        command, wait = RESOLUTION[resolution]
        # All of it before each forced read: a one-time measurement powers the chip down, and
        # a chip that lost power in between would be back at MTreg 69. MTreg goes in two halves.
        measure = command + 0x10 if mode == "forced" else command
        self.commands = (POWER_ON, 0x40 | mtreg >> 5, 0x60 | mtreg & 0x1F, measure)
        self.wait = wait * mtreg / 69  # a longer integration buys sensitivity with time
        self.lux_per_count = 69 / mtreg / 1.2 / (2 if resolution == "high2" else 1)
        self.started = False

    def read_blocking(self) -> Sample:
        from smbus2 import i2c_msg

        if self.measuring == "forced" or not self.started:
            for command in self.commands:  # one per transfer: the chip wants a stop after each
                self.bus.i2c_rdwr(i2c_msg.write(self.address, [command]))
            time.sleep(self.wait)
            self.started = True
        reply = i2c_msg.read(self.address, 2)
        self.bus.i2c_rdwr(reply)
        return {"illuminance": int.from_bytes(bytes(reply), "big") * self.lux_per_count}
