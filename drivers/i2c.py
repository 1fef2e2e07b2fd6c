"""The I2C bus an I2C driver talks to: the board's (smbus2), or a simulated one.

A driver's `bus` parameter is a bus number (`1` is /dev/i2c-1 on a Raspberry Pi) or the
path of a register-map file; then the driver runs unchanged against `SimulatedBus`,
which answers from that map. The driver's code path is the same either way.
"""

from __future__ import annotations

import ctypes
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Protocol

from agent.schema import Invalid
from drivers.base import Driver

I2C_M_RD = 1  # the read flag of an i2c_msg (linux/i2c.h)


class Bus(Protocol):
    """The part of smbus2's SMBus the drivers use."""

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...

    def i2c_rdwr(self, *messages: Any) -> None: ...

    def close(self) -> None: ...


class SimulatedBus:
    """Devices as register maps, read and written like a chip's.

    A map file (TOML or JSON) has a table per device address; each key is a register, each
    value a byte or a list of bytes for consecutive registers:

        ["0x76"]
        "0xD0" = 0x60               # chip id
        "0x88" = [0x70, 0x6B, 0x43]  # registers 0x88, 0x89, 0x8A

    A chip driven by commands instead (an SHT31: write 0x2400, then read 6 bytes) is a map
    too: the command is the register its answer starts at ("0x2400" = [...]).

    A chip whose registers are wider than a byte says so with `register_bytes`: each value is
    then one whole register, sent most significant byte first. An ADS1115's 16-bit registers
    sit at pointers 0x00 and 0x01, which bytes at consecutive registers could not hold apart
    (nor a BH1750's 16-bit answers to its commands 0x20 and 0x21):

        ["0x48"]
        register_bytes = 2
        "0x00" = 0x7FFF  # conversion
        "0x01" = 0x8583  # config

    `writes` records every write as (address, register, value), for tests: the byte of a
    `write_byte_data`; the bytes of a `write_i2c_block_data` as one big-endian number
    (0x8583 for [0x85, 0x83]); for a command sent by `i2c_rdwr`, how many bytes it had.
    """

    def __init__(
        self,
        devices: dict[int, dict[int, int | list[int]]],
        *,
        register_bytes: dict[int, int] | None = None,
    ) -> None:
        self.registers: dict[int, dict[int, int]] = {}
        self.register_bytes = dict(register_bytes or {})  # per device; 1 unless given
        self.pointer: dict[int, int] = {}  # per device: where a plain read starts
        self.writes: list[tuple[int, int, int]] = []
        for address, registers in devices.items():
            memory = self.registers.setdefault(address, {})
            limit = 256 ** self.register_bytes.get(address, 1)
            for register, value in registers.items():
                for offset, word in enumerate(value if isinstance(value, list) else [value]):
                    if not 0 <= word < limit:  # a typo in a map file, caught at load
                        where = f"0x{address:02x} register 0x{register + offset:02x}"
                        raise ValueError(f"{where}: {word:#x} does not fit the register")
                    memory[register + offset] = word

    @classmethod
    def load(cls, path: Path) -> SimulatedBus:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        devices = {int(a, 0): dict(regs) for a, regs in raw.items()}
        widths = {a: regs.pop("register_bytes", 1) for a, regs in devices.items()}
        registers = {a: {int(r, 0): v for r, v in regs.items()} for a, regs in devices.items()}
        return cls(registers, register_bytes=widths)

    def _device(self, address: int) -> dict[int, int]:
        try:
            return self.registers[address]
        except KeyError:
            raise OSError(121, f"no device at 0x{address:02x} (remote I/O error)") from None

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        memory, width = self._device(i2c_addr), self.register_bytes.get(i2c_addr, 1)
        words = (memory.get(register + i, 0) for i in range(-(-length // width)))
        return list(b"".join(word.to_bytes(width, "big") for word in words)[:length])

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._device(i2c_addr)[register] = value
        self.writes.append((i2c_addr, register, value))

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None:
        memory, width = self._device(i2c_addr), self.register_bytes.get(i2c_addr, 1)
        sent = bytes(data)
        for i in range(0, len(sent), width):
            memory[register + i // width] = int.from_bytes(sent[i : i + width], "big")
        self.writes.append((i2c_addr, register, int.from_bytes(sent, "big")))

    def i2c_rdwr(self, *messages: Any) -> None:
        """smbus2's combined transfers: a write sets where the next read starts (a register or
        a command); a read fills the message's buffer from there."""
        for message in messages:
            self._device(message.addr)
            if message.flags & I2C_M_RD:
                data = self.read_i2c_block_data(
                    message.addr, self.pointer.get(message.addr, 0), message.len
                )
                ctypes.memmove(message.buf, bytes(data), message.len)
            else:
                written = list(message)
                self.pointer[message.addr] = int.from_bytes(bytes(written), "big")
                self.writes.append((message.addr, self.pointer[message.addr], len(written)))

    def close(self) -> None:
        pass


def open_bus(bus: int | Path) -> Bus:
    """The bus a driver's `bus` parameter names."""
    if isinstance(bus, Path):
        return SimulatedBus.load(bus)
    from smbus2 import SMBus  # imported here: a laptop without I2C never needs it

    smbus: Bus = SMBus(bus)
    return smbus


class I2CDevice(Driver):
    """The base of I2C drivers: the `bus` parameter, and opening and closing that bus.

    A subclass adds its own parameters (its `address` among them) and reads `self.bus`
    from `read_blocking()`, which the agent runs on the driver's own thread.
    """

    def __init__(
        self,
        *,
        bus: Annotated[int | Path, "I2C bus number, or a register-map file to simulate"] = 1,
    ) -> None:
        if isinstance(bus, Path) and bus.suffix not in (".toml", ".json"):  # "/dev/i2c-1"
            wanted = "a bus number (1 for /dev/i2c-1) or a register map (.toml or .json)"
            raise Invalid("bus", f'expected {wanted}, got "{bus}"')
        self.bus_name = bus
        self._bus: Bus | None = None

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "the bus is opened by the agent before the first read"
        return self._bus

    async def open(self) -> None:
        self._bus = open_bus(self.bus_name)

    async def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
