"""The serial port a serial driver reads: a device such as /dev/ttyUSB0, or a pseudo-terminal
fed by the driver's simulated twin.

With `port = "simulated"` the driver opens the slave side of a fresh pseudo-terminal through
pyserial like any port, and its twin (the `simulate()` method) writes what the device would
send into the master side. Tests feed a `Pty` of their own: garbage, partial frames, unplug.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import tty
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

from drivers.base import Driver

Write = Callable[[bytes], None]
PARITY = {"none": "N", "even": "E", "odd": "O"}


class Pty:
    """A pseudo-terminal pair: `path` is the port a driver opens, `write()` the device speaking.
    `close()` is the device unplugged: the port's reads fail and the path is gone."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: bytes pass as the device sent them
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.overruns = 0

    def write(self, data: bytes) -> None:
        """Send `data` as the device; bytes that nobody reads in time are lost, as a UART's are."""
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        self.overruns += written < len(data)

    def close(self) -> None:
        if self.path:
            os.close(self.master)
            os.close(self.slave)
            self.path = ""

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialDevice(Driver):
    """The base of serial drivers: the port and its settings, opening and reading it.

    A subclass's `stream()` reads `self.chunks()` (or `self.lines()`); a port that fails or
    closes raises, and the agent closes the driver and reopens the port, spacing its attempts
    with the sensor's circuit breaker until the device is back.
    """

    def __init__(
        self,
        *,
        port: Annotated[str, 'the device, such as /dev/ttyUSB0, or "simulated" for the twin'],
        baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400] = 9600,
        parity: Literal["none", "even", "odd"] = "none",
        bytesize: Literal[7, 8] = 8,
        stopbits: Literal[1, 2] = 1,
    ) -> None:
        self.port = port
        self.settings = {
            "baudrate": baudrate,
            "parity": PARITY[parity],
            "bytesize": bytesize,
            "stopbits": stopbits,
        }
        self.reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pty: Pty | None = None
        self._twin: threading.Thread | None = None
        self._stop = threading.Event()
        if port == "simulated" and type(self).simulate is SerialDevice.simulate:
            raise ValueError(
                f'{type(self).__qualname__} has no simulated twin for port "simulated"'
            )

    async def open(self) -> None:
        import serial_asyncio  # imported here: `check` and `describe` never need it

        if self.port == "simulated":
            self._pty = Pty()
        try:
            self.reader, self._writer = await serial_asyncio.open_serial_connection(
                url=self._pty.path if self._pty else self.port, **self.settings
            )
        except BaseException:
            await self.close()  # the agent closes only a driver that opened
            raise
        if self._pty is not None:
            # Started once the port is open: pyserial discards what arrived before.
            self._stop = threading.Event()  # a fresh one: the last twin may still be stopping
            self._twin = threading.Thread(
                target=self._simulate,
                args=(self._pty, self._stop),
                name=f"twin-{self.name}",
                daemon=True,
            )
            self._twin.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self.reader = None, None
        self._stop.set()
        if self._twin is not None:  # joined first, so it never writes to a closed descriptor
            await asyncio.to_thread(self._twin.join, 2.0)
            self._twin = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    def _simulate(self, pty: Pty, stop: threading.Event) -> None:
        with contextlib.suppress(OSError):  # the pseudo-terminal closed under the twin
            self.simulate(pty.write, stop)

    def simulate(self, write: Write, stop: threading.Event) -> None:
        """The simulated twin: write what the device sends, until `stop` is set."""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes as they arrive, until the port fails or closes (raised as an error)."""
        assert self.reader is not None, "the agent opens the port before streaming"
        while data := await self.reader.read(4096):
            yield data
        raise ConnectionError(f"{self.port}: the device closed the port")

    async def lines(self, separator: bytes, limit: int) -> AsyncIterator[bytes | None]:
        """Complete lines without their separator; None once for each line dropped as longer
        than `limit` bytes (a line that never ends is garbage, and memory stays bounded)."""
        pending, dropping = b"", False
        async for data in self.chunks():
            *complete, pending = (pending + data).split(separator)
            for line in complete:
                if dropping:  # the tail of a line already dropped: not a line of its own
                    dropping = False
                else:
                    yield line if len(line) <= limit else None
            if len(pending) > limit:
                if not dropping:
                    yield None
                pending, dropping = b"", True
