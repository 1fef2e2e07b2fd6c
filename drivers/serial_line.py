"""Text lines from a serial device, one sample per line: CSV columns, key=value pairs, or the
named groups of a regular expression."""

from __future__ import annotations

import codecs
import math
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from agent.schema import Bounds, Invalid, found
from drivers.base import Channel, Garbled, Sample
from drivers.serial_port import SerialDevice, Write

ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
PAIR = re.compile(r"([A-Za-z_][\w.-]*)\s*[=:]\s*([^\s,;]+)")


class SerialLine(SerialDevice, name="serial_line"):
    """Text lines from a serial port, parsed as CSV, key=value pairs or a regular expression."""

    channels: tuple[Channel, ...] = ()  # named by the fields or the pattern

    def __init__(
        self,
        *,
        format: Literal["csv", "kv", "regex"] = "csv",
        fields: Annotated[tuple[str, ...], 'csv: column names ("" skips one); kv: keys'] = (),
        pattern: Annotated[str, "regex: its named groups are the channels"] = "",
        delimiter: str = ",",
        units: Annotated[dict[str, str] | None, "unit per channel"] = None,
        device_classes: Annotated[dict[str, str] | None, "device class per channel"] = None,
        line_ending: Literal["lf", "crlf", "cr"] = "lf",
        encoding: str = "utf-8",
        max_line: Annotated[int, Bounds(ge=16, le=65536)] = 1024,
        **port: Any,
    ) -> None:
        super().__init__(**port)
        self.format, self.fields, self.delimiter = format, fields, delimiter
        try:
            self.regex = re.compile(pattern) if format == "regex" else None
        except re.error as e:  # not a ValueError: the config check would crash on it
            why = f"expected a regular expression, got {found(pattern)}: {e}"
            raise Invalid("pattern", why) from None
        names = list(self.regex.groupindex) if self.regex else [f for f in fields if f]
        if not names:
            key, what = ("pattern", "named groups") if self.regex else ("fields", "field names")
            raise Invalid(key, f"expected {what}, one per channel; got none")
        for key, table in (("units", units or {}), ("device_classes", device_classes or {})):
            if unknown := sorted(set(table) - set(names)):
                raise Invalid(key, f"expected channels among {names}, got {unknown}")
        units, classes = units or {}, device_classes or {}
        self.channels = tuple(Channel(n, units.get(n, ""), classes.get(n, "")) for n in names)
        self.ending, self.encoding, self.max_line = ENDINGS[line_ending], encoding, max_line
        try:
            codecs.lookup(encoding)
        except LookupError:
            why = f'expected a codec such as "utf-8", got {found(encoding)}'
            raise Invalid("encoding", why) from None
        if format == "csv" and not delimiter:
            raise Invalid("delimiter", 'expected a character such as ",", got ""')
        if self.regex is not None and self.port == "simulated":
            raise Invalid("port", "expected a device: the twin cannot guess lines for a pattern")

    async def stream(self) -> AsyncIterator[Sample]:
        async for line in self.lines(self.ending, self.max_line):
            if line is None:
                yield Garbled(f"a line longer than {self.max_line} bytes")
            elif line := line.rstrip(b"\r"):
                yield self.parse(line)

    def parse(self, raw: bytes) -> Sample:
        try:
            text = raw.decode(self.encoding)
            if self.regex is not None:
                match = self.regex.search(text)
                # An optional group that did not take part is None: no value this time.
                groups = match.groupdict() if match else {}
                found = {name: value for name, value in groups.items() if value is not None}
            elif self.format == "kv":
                found = {k: v for k, v in PAIR.findall(text) if k in self.fields}
            else:
                columns = text.split(self.delimiter)
                if len(columns) != len(self.fields):
                    return Garbled(f"{len(columns)} columns, expected {len(self.fields)}")
                found = {
                    name: value for name, value in zip(self.fields, columns, strict=True) if name
                }
            if not found:
                return Garbled(f"nothing to read in {text[:40]!r}")
            return {name: float(value) for name, value in found.items()}
        except (UnicodeDecodeError, ValueError) as e:
            return Garbled(f"{e} in {raw[:40]!r}")

    def simulate(self, write: Write, stop: threading.Event) -> None:
        """A device printing a slowly changing value per channel, once a second."""
        names = [c.name for c in self.channels]
        while not stop.wait(1.0):
            values = [20 + 5 * math.sin(time.time() / 60 + i) for i in range(len(names))]
            if self.format == "kv":
                text = " ".join(f"{n}={v:.2f}" for n, v in zip(names, values, strict=True))
            else:
                it = iter(values)
                text = self.delimiter.join(f"{next(it):.2f}" if f else "x" for f in self.fields)
            write(text.encode(self.encoding) + self.ending)
