"""Plantower PMS5003 particulate matter sensor on a serial port: 32-byte frames, each checked
by its sum, the stream resynchronised on the start bytes after garbage or a broken frame."""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import AsyncIterator

from drivers.base import Channel, Garbled, Sample
from drivers.serial_port import SerialDevice, Write

START = b"BM"  # 0x42 0x4D
SIZE = 32
UG = "µg/m³"
# The 13 data words after the start bytes and the length, in order (the 13th is reserved).
FIELDS = (
    *("pm1_0", "pm2_5", "pm10"),  # CF=1, "standard particle"
    *("pm1_0_atm", "pm2_5_atm", "pm10_atm"),  # under atmospheric environment
    *("n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10"),  # particles beyond d µm in 0.1 L of air
)


class PMS5003(SerialDevice, name="pms5003"):
    """Plantower PMS5003 particulate matter sensor (PM1.0, PM2.5, PM10, particle counts)."""

    channels = (
        *(Channel(n, UG, c) for n, c in zip(FIELDS[:3], ("pm1", "pm25", "pm10"), strict=True)),
        *(Channel(n, UG) for n in FIELDS[3:6]),
        *(Channel(n, "/0.1L") for n in FIELDS[6:]),
    )

    async def stream(self) -> AsyncIterator[Sample]:
        pending, resyncing = b"", False
        async for data in self.chunks():
            pending += data
            while True:
                start = pending.find(START)
                if start < 0:  # no frame starts here; a last "B" may be half of one
                    start = len(pending) - pending.endswith(START[:1])
                if start and not resyncing:  # the rest of a broken frame was counted with it
                    yield Garbled(f"{start} bytes out of frame")
                pending = pending[start:]
                if len(pending) < SIZE:
                    break
                sample = parse(pending[:SIZE])
                # After a broken frame, search for the next start inside it: its length
                # and sum were wrong, so its end is not known.
                resyncing = isinstance(sample, Garbled)
                pending = pending[1:] if resyncing else pending[SIZE:]
                yield sample

    def simulate(self, write: Write, stop: threading.Event) -> None:
        """A sensor in active mode: a frame a second, city air with a slow daily-like swing."""
        while not stop.wait(1.0):
            pm = 12 + 6 * math.sin(time.time() / 600)
            std = (round(pm * 0.6), round(pm), round(pm * 1.4))
            counts = (round(pm * 180), round(pm * 50), round(pm * 8), 2, 1, 0)
            write(frame(std + std + counts))


def parse(data: bytes) -> Sample:
    """A 32-byte frame as a sample; Garbled if its length field or sum is wrong."""
    length, *words, check = struct.unpack(">2xH13HH", data)
    if length != SIZE - 4:
        return Garbled(f"frame length {length}, expected {SIZE - 4}")
    if sum(data[:-2]) != check:
        return Garbled(f"checksum {check:#06x} does not match {sum(data[:-2]):#06x}")
    return dict(zip(FIELDS, map(float, words[:12]), strict=True))


def frame(values: tuple[int, ...]) -> bytes:
    """The frame a PMS5003 sends for 12 data values (the reserved word is 0)."""
    body = START + struct.pack(">H13H", SIZE - 4, *values, 0)
    return body + struct.pack(">H", sum(body))
