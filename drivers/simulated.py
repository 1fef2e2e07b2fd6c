"""The base of simulated drivers: a signal, made deterministic by a seed, and faults on request.

Faults are drawn from their own random stream, so turning a fault on does not
change the signal a test expects: a dropped sample is still computed, then
withheld.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Annotated

from agent.clock import SYSTEM_CLOCK, Clock
from agent.schema import Injected, Rate
from drivers.base import Driver, Sample


class InjectedFault(RuntimeError):
    """The failure a simulated driver raises when told to fail."""


class Simulated(Driver):
    """A simulated device: the seed, the faults, and the clock it reads time from."""

    def __init__(
        self,
        *,
        seed: Annotated[int | None, "makes the signal and the faults repeatable"] = None,
        dropouts: Annotated[Rate, "share of reads that return nothing"] = 0.0,
        spikes: Annotated[Rate, "share of reads offset by spike_size"] = 0.0,
        spike_size: float = 100.0,
        errors: Annotated[Rate, "share of reads that raise an error"] = 0.0,
        hangs: Annotated[Rate, "share of reads that never return"] = 0.0,
        clock: Annotated[Clock, Injected] = SYSTEM_CLOCK,
    ) -> None:
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(None if seed is None else seed + 1)
        self.dropouts = dropouts
        self.spikes = spikes
        self.spike_size = spike_size
        self.errors = errors
        self.hangs = hangs
        self.clock = clock

    async def faulty(self, value: float) -> float | None:
        """`value` as the faulty device delivers it: maybe never, an error, nothing, or a spike."""
        roll = self.fault_rng.random
        if self.hangs and roll() < self.hangs:
            await asyncio.Event().wait()  # a device that stopped answering
        if self.errors and roll() < self.errors:
            raise InjectedFault(f"{self.name}: injected read error")
        if self.dropouts and roll() < self.dropouts:
            return None
        if self.spikes and roll() < self.spikes:
            return value + self.spike_size
        return value


class Signal(Simulated):
    """A simulated polled device: subclasses compute the next value in `sample()`."""

    @classmethod
    def check_contract(cls) -> None:
        super().check_contract()
        if not callable(getattr(cls, "sample", None)):
            raise TypeError(f"{cls.__qualname__}: a simulated signal needs a sample(self) method")

    if TYPE_CHECKING:  # declared for type checkers; each signal defines its own

        def sample(self) -> float: ...

    async def read(self) -> Sample:
        # The sample is computed even when a fault withholds it, so the signal a
        # seed produces is the same with and without faults.
        return await self.faulty(self.sample())
