"""What a driver is: a named class that produces samples, polled or pushed.

A driver implements exactly one of:

- `async def read(self)`: polled every `interval` seconds;
- `def read_blocking(self)`: polled too, run in a worker thread because it blocks;
- `async def stream(self)`: an async generator that yields samples as the device pushes them.

A sample is a number for a driver with one channel, a mapping from channel
name to number for a driver with several, None when there is nothing to
report this time, or `Garbled` for input that arrived but could not be used.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from agent.registry import Component, Registry


@dataclass(frozen=True, slots=True)
class Garbled:
    """Input the device sent but the driver could not use: a bad checksum, a partial frame,
    a line that does not parse. The agent counts it and logs it once per burst."""

    reason: str


Sample = float | Mapping[str, float] | Garbled | None


@dataclass(frozen=True)
class Channel:
    """One quantity a driver reports, with the unit and device class consumers label it by."""

    name: str
    unit: str = ""
    device_class: str = ""


Mode = Literal["poll", "blocking", "push"]

_KINDS: dict[str, tuple[Mode, str]] = {
    "read": ("poll", "an async def read(self)"),
    "read_blocking": ("blocking", "a plain def read_blocking(self)"),
    "stream": ("push", "an async generator stream(self)"),
}


class Driver(Component):
    """Base class of drivers; subclass with `name=` to register one."""

    registry: ClassVar[Registry[Driver]] = Registry("driver", "edge_agent.drivers")
    channels: tuple[Channel, ...] = (Channel("value"),)
    mode: ClassVar[Mode]

    @classmethod
    def check_contract(cls) -> None:
        super().check_contract()
        defined = [m for m in _KINDS if callable(getattr(cls, m, None))]
        if len(defined) != 1:
            wanted = ", ".join(text for _, text in _KINDS.values())
            have = f" (it has {' and '.join(defined)})" if defined else ""
            raise TypeError(f"{cls.__qualname__}: a driver needs exactly one of {wanted}{have}")
        method = defined[0]
        fn = getattr(cls, method)
        ok = {
            "read": inspect.iscoroutinefunction,
            "read_blocking": lambda f: (
                not inspect.iscoroutinefunction(f) and not inspect.isasyncgenfunction(f)
            ),
            "stream": inspect.isasyncgenfunction,
        }[method](fn)
        if not ok:
            raise TypeError(f"{cls.__qualname__}: {method} must be {_KINDS[method][1]}")
        cls.mode = _KINDS[method][0]

    async def open(self) -> None:
        """Acquire the device (port, bus, pins). Constructors only check their arguments:
        `edge-agent check` builds every driver without touching hardware."""

    async def close(self) -> None:
        """Release the device; called once, when the agent stops or the driver's stream ends."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Declared for type checkers only; a subclass defines exactly one of them.
    if TYPE_CHECKING:

        async def read(self) -> Sample: ...

        def read_blocking(self) -> Sample: ...

        def stream(self) -> AsyncIterator[Sample]: ...
