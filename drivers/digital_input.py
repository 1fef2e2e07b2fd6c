"""A digital input pushed on change: a door or window contact, a float switch, a leak probe.

Contacts bounce: for a few milliseconds after a door shuts the input flips back and forth.
gpiozero's bounce_time only drops edges that follow too closely (and mock pins ignore it), so a
burst may end on a dropped edge and leave a stale state. Here a change counts once the input
has held still for `bounce` seconds: chatter that settles back reports nothing, chatter that
ends in a new state reports one change.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from agent.schema import Invalid, NonNegative
from drivers.base import Channel, Sample
from drivers.gpio import GPIODevice, Pin, Twin

PullUp = Annotated[
    bool | None,
    "true: pulled up, active when shorted to ground; false: pulled down, active when high; "
    "leave out for a pin with its own resistor, and set active_state",
]
ActiveState = Annotated[bool | None, "only with pull_up left out: true if high means active"]


def active_high(pull_up: bool | None, active_state: bool | None) -> bool:
    """Whether high means active, by gpiozero's rules, checked before any pin is touched."""
    if pull_up is None and active_state is None:
        raise Invalid(
            "pull_up",
            "expected pull_up = true (pulled up: active low) or false (pulled down: active high),"
            " or active_state for a pin with its own resistor; got neither",
        )
    if pull_up is not None and active_state is not None:
        level = "low" if pull_up else "high"
        raise Invalid(
            "active_state",
            f"expected no active_state with pull_up = {str(pull_up).lower()} (active {level});"
            " active_state is for a floating pin: leave pull_up out",
        )
    return active_state if active_state is not None else not pull_up


class InputStream(GPIODevice):
    """A GPIO input pushed as 1.0 (active) or 0.0: its state first, then each change that holds
    for `bounce` seconds. A subclass builds `device` in attach() and hands its edges to edge()."""

    def __init__(self, **gpio: Any) -> None:
        super().__init__(**gpio)
        self.device: Any = None
        self.bounce = 0.0
        self.edges = 0  # every edge, chatter included (one writer: gpiozero's thread)
        self.suppressed = 0  # bursts that settled back to the state last reported
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        self._pending = threading.Event()

    def edge(self, *_: object) -> None:
        """Called on gpiozero's thread. At most one wake-up waits for the loop, however fast the
        edges come: the stream reads the pin itself, so a coalesced edge loses nothing."""
        self.edges += 1
        loop = self._loop
        if loop is None or self._pending.is_set():
            return
        self._pending.set()
        with contextlib.suppress(RuntimeError):  # a closed loop: the agent stopped meanwhile
            loop.call_soon_threadsafe(self._wake)

    async def ready(self) -> None:
        """Return once the device can tell its state (at once, for a plain input)."""

    def _wake(self) -> None:
        self._pending.clear()
        self._woken.set()

    async def stream(self) -> AsyncIterator[Sample]:
        self._woken, self._loop = asyncio.Event(), asyncio.get_running_loop()
        self._pending.clear()
        await self.ready()
        reported = bool(self.device.is_active)
        yield float(reported)
        while True:
            await self._woken.wait()
            while True:  # until no edge has come for `bounce` seconds
                self._woken.clear()
                try:
                    async with asyncio.timeout(self.bounce):
                        await self._woken.wait()
                except TimeoutError:
                    break
            state = bool(self.device.is_active)
            if state == reported:
                self.suppressed += 1
                continue
            reported = state
            yield float(state)

    def detach(self) -> None:
        self._loop = None
        if self.device is not None:
            self.device.close()
            self.device = None


class DigitalInput(InputStream, name="digital_input"):
    """Digital input (door or window contact, float switch): 1.0 when active, on each change."""

    channels = (Channel("state"),)

    def __init__(
        self,
        *,
        pin: Pin,
        pull_up: PullUp = None,
        active_state: ActiveState = None,
        bounce: Annotated[NonNegative, "seconds the input must hold still to count"] = 0.05,
        device_class: Annotated[str, 'what active means: "door", "window", "moisture"'] = "",
        **gpio: Any,
    ) -> None:
        super().__init__(**gpio)
        self.pin, self.pull_up, self.active_state = pin, pull_up, active_state
        self.active_high = active_high(pull_up, active_state)
        self.bounce = bounce
        self.channels = (Channel("state", "", device_class),)

    def attach(self, factory: Any) -> None:
        from gpiozero import InputDevice

        self.device = InputDevice(
            self.pin, pull_up=self.pull_up, active_state=self.active_state, pin_factory=factory
        )
        self.device.pin.when_changed = self.edge

    def simulate(self, factory: Any) -> Twin:
        pin = factory.pin(self.pin)

        def flip(stop: threading.Event) -> None:
            while not stop.wait(3.0):
                level = not pin.state
                for n in range(5):  # the contact bounces before it settles on `level`
                    high = level if n % 2 == 0 else not level
                    (pin.drive_high if high else pin.drive_low)()
                    stop.wait(0.002)

        return flip
