"""Sensirion SHT31 on I2C: temperature and humidity, each word checked by its CRC-8."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from drivers.base import Channel, Sample
from drivers.i2c import I2CDevice

# Single-shot measurement without clock stretching: (command, longest wait in seconds).
MEASURE = {"high": (0x2400, 0.016), "medium": (0x240B, 0.007), "low": (0x2416, 0.005)}


class SHT31(I2CDevice, name="sht31"):
    """Sensirion SHT31 temperature and humidity sensor on I2C, CRC-checked."""

    channels = (Channel("temperature", "°C", "temperature"), Channel("humidity", "%", "humidity"))

    def __init__(
        self,
        *,
        address: Literal[0x44, 0x45] = 0x44,
        repeatability: Literal["high", "medium", "low"] = "high",
        **bus: int | Path,
    ) -> None:
        super().__init__(**bus)
        self.address = address
        self.command, self.wait = MEASURE[repeatability]

    def read_blocking(self) -> Sample:
        from smbus2 import i2c_msg

        self.bus.i2c_rdwr(i2c_msg.write(self.address, list(self.command.to_bytes(2, "big"))))
        time.sleep(self.wait)
        reply = i2c_msg.read(self.address, 6)
        self.bus.i2c_rdwr(reply)
        data = bytes(reply)
        for word in (data[0:3], data[3:6]):
            if crc8(word[:2]) != word[2]:  # a garbled transfer: counted as a failed read
                raise OSError(f"SHT31 at 0x{self.address:02x}: CRC mismatch in {data.hex()}")
        raw_t, raw_h = int.from_bytes(data[0:2], "big"), int.from_bytes(data[3:5], "big")
        return {"temperature": -45 + 175 * raw_t / 65535, "humidity": 100 * raw_h / 65535}


def crc8(data: bytes) -> int:
    """The SHT3x checksum: CRC-8, polynomial 0x31, initial value 0xFF."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1 ^ 0x31) & 0xFF if crc & 0x80 else crc << 1 & 0xFF
    return crc
