"""An NMEA 0183 GPS receiver on a serial port: position and fix from GGA, speed, course and
UTC time from RMC, each sentence's checksum verified."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import reduce

from drivers.base import Channel, Garbled, Sample
from drivers.serial_port import SerialDevice, Write

KNOT = 1.852  # km/h


class NMEA(SerialDevice, name="nmea"):
    """NMEA 0183 GPS receiver (GGA and RMC sentences) on a serial port."""

    channels = (
        Channel("latitude", "°"),
        Channel("longitude", "°"),
        Channel("altitude", "m", "distance"),
        Channel("fix_quality"),
        Channel("satellites"),
        Channel("speed", "km/h", "speed"),
        Channel("course", "°"),
        Channel("time", "s", "timestamp"),
    )

    async def stream(self) -> AsyncIterator[Sample]:
        async for line in self.lines(b"\n", 120):  # a sentence is at most 82 characters
            # A line without its "$" is the tail of a sentence (the port opened, or bytes were
            # lost, mid-way): its type is unknown, but it is damaged input all the same.
            partial = line is not None and line.strip() != b"" and not line.startswith((b"$", b"!"))
            if line is None or partial or b"GGA," in line or b"RMC," in line:
                yield parse(line)

    def simulate(self, write: Write, stop: threading.Event) -> None:
        """A receiver with a fix, walking a small circle: GGA, RMC and GSV once a second."""
        while not stop.wait(1.0):
            now = datetime.now(UTC)
            angle = time.time() / 300
            lat, lon = 52.2 + 0.001 * math.sin(angle), 0.12 + 0.0016 * math.cos(angle)
            hms = now.strftime("%H%M%S.00")
            where = f"{_ddmm(lat, 2)},N,{_ddmm(lon, 3)},E"
            for body in (
                f"GPGGA,{hms},{where},1,08,0.9,{12 + math.sin(angle):.1f},M,47.0,M,,",
                f"GPRMC,{hms},A,{where},2.6,{math.degrees(angle) % 360:.1f},{now:%d%m%y},,,A",
                "GPGSV,1,1,02,05,40,083,46,12,77,156,45",  # ignored: not a sentence we read
            ):
                write(f"${body}*{checksum(body.encode()):02X}\r\n".encode())


def parse(line: bytes | None) -> Sample:
    """A GGA or RMC sentence as a sample; Garbled for a damaged one."""
    if line is None:
        return Garbled("a sentence longer than NMEA allows")
    if not line.startswith(b"$"):
        return Garbled(f"a partial sentence: {line[:90]!r}")
    body, star, check = line.rstrip(b"\r")[1:].partition(b"*")
    if not star or len(check) != 2 or check.upper() != b"%02X" % checksum(body):
        return Garbled(f"bad or missing checksum: {line[:90]!r}")
    f = body.decode("ascii", "replace").split(",")
    try:
        if f[0].endswith("GGA"):
            sample = {"fix_quality": float(f[6]), "satellites": float(f[7] or 0)}
            if f[6] != "0":
                sample.update(_position(f[2:6]), altitude=float(f[9]))
            return sample
        if not f[0].endswith("RMC") or f[2] != "A":  # status V: no valid fix
            return None
        when = datetime.strptime(f[9] + f[1][:6], "%d%m%y%H%M%S").replace(tzinfo=UTC)
        return {
            **_position(f[3:7]),
            "speed": float(f[7] or 0) * KNOT,
            "course": float(f[8] or 0),
            "time": when.timestamp() + float(f[1][6:] or 0),
        }
    except (IndexError, ValueError) as e:
        return Garbled(f"{type(e).__name__} in {line[:90]!r}")


def checksum(body: bytes) -> int:
    """The XOR of every byte between '$' and '*'."""
    return reduce(lambda a, b: a ^ b, body, 0)


def _position(f: list[str]) -> dict[str, float]:
    """Degrees from NMEA's ddmm.mmmm and dddmm.mmmm, negative south and west."""
    lat = int(f[0][:2]) + float(f[0][2:]) / 60
    lon = int(f[2][:3]) + float(f[2][3:]) / 60
    return {"latitude": -lat if f[1] == "S" else lat, "longitude": -lon if f[3] == "W" else lon}


def _ddmm(degrees: float, width: int) -> str:
    whole = int(degrees)
    return f"{whole:0{width}d}{(degrees - whole) * 60:07.4f}"
