"""Sensirion SHT31 on I2C: temperature and humidity, each word checked by its CRC-8."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from drivers.base import Channel, Garbled, Sample
from drivers.i2c import I2CDevice

# Single-shot measurement without clock stretching: (command, longest wait in seconds).
MEASURE = {"high": (0x2400, 0.016), "medium": (0x240B, 0.007), "low": (0x2416, 0.005)}
PERIODIC = {"high": 0x2130, "medium": 0x2126, "low": 0x212D}  # one measurement a second
FETCH, BREAK = 0xE000, 0x3093  # the latest periodic result; back to single shots


class SHT31(I2CDevice, name="sht31"):
    """Sensirion SHT31 temperature and humidity sensor on I2C, CRC-checked."""

    channels = (Channel("temperature", "°C", "temperature"), Channel("humidity", "%", "humidity"))

    def __init__(
        self,
        *,
        address: Literal[0x44, 0x45] = 0x44,
        repeatability: Literal["high", "medium", "low"] = "high",
        mode: Annotated[
            Literal["forced", "normal"], "forced: measure on each read; normal: once a second"
        ] = "forced",
        **bus: int | Path,
    ) -> None:
        super().__init__(**bus)
        self.address, self.periodic = address, mode == "normal"
        self.command, self.wait = MEASURE[repeatability]
        self.start = PERIODIC[repeatability]
        self.started = False

    def read_blocking(self) -> Sample:
        if not self.started:
            # A chip left measuring periodically (by an earlier program) ignores single shots.
            self._send(BREAK)
            time.sleep(0.001)
            if self.periodic:
                self._send(self.start)
                time.sleep(self.wait)
            self.started = True
        if self.periodic:
            self._send(FETCH)  # answered with a NACK (an OSError) until the first result
        else:
            self._send(self.command)
            time.sleep(self.wait)
        data = self._receive(6)
        for word in (data[0:3], data[3:6]):
            if crc8(word[:2]) != word[2]:  # a garbled transfer: counted, never a value
                return Garbled(f"SHT31 at 0x{self.address:02x}: CRC mismatch in {data.hex()}")
        raw_t, raw_h = int.from_bytes(data[0:2], "big"), int.from_bytes(data[3:5], "big")
        return {"temperature": -45 + 175 * raw_t / 65535, "humidity": 100 * raw_h / 65535}

    def _send(self, command: int) -> None:
        from smbus2 import i2c_msg

        self.bus.i2c_rdwr(i2c_msg.write(self.address, list(command.to_bytes(2, "big"))))

    def _receive(self, length: int) -> bytes:
        from smbus2 import i2c_msg

        reply = i2c_msg.read(self.address, length)
        self.bus.i2c_rdwr(reply)
        return bytes(reply)


def crc8(data: bytes) -> int:
    """The SHT3x checksum: CRC-8, polynomial 0x31, initial value 0xFF."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1 ^ 0x31) & 0xFF if crc & 0x80 else crc << 1 & 0xFF
    return crc
