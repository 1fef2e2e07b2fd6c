"""The pins a GPIO driver uses: the board's, or gpiozero's mock pins driven by a simulated twin.

A driver's `pins` parameter picks them. With `pins = "board"` gpiozero chooses the board's
pin library (lgpio on a Raspberry Pi); with `pins = "simulated"` the driver runs unchanged on
gpiozero's `MockFactory`, and its twin (the `simulate()` method) drives those mock pins the
way the device would. Tests hand in their own `MockFactory` and drive the pins themselves.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

from agent.schema import Injected
from drivers.base import Driver

Twin = Callable[[threading.Event], None]  # the twin's loop, until the event is set
Pin = Annotated[int | str, 'the BCM number (17) or a gpiozero pin name ("GPIO17", "BOARD11")']


class GPIODevice(Driver):
    """The base of GPIO drivers: choosing the pin factory, and the simulated twin's thread.

    A subclass builds its gpiozero devices in `attach(factory)`, passing `pin_factory=factory`
    to each, and closes them in `detach()`. Its twin is `simulate(factory)`: it prepares the
    mock pins (before `attach`, as some mock pins must exist first) and may return a loop that
    runs on a daemon thread until the driver closes.
    """

    def __init__(
        self,
        *,
        pins: Annotated[
            Literal["board", "simulated"], "simulated: mock pins driven by the driver's twin"
        ] = "board",
        pin_factory: Annotated[Any, Injected] = None,
    ) -> None:
        self.pins = pins
        self.factory: Any = pin_factory
        self.twin = pin_factory is None and pins == "simulated"  # a test's pins are its own
        self._stop = threading.Event()
        self._twin: threading.Thread | None = None

    async def open(self) -> None:
        if self.twin:
            self.factory = MockBoard.acquire()
        elif self.factory is None:
            self.factory = _board_factory()
        if self.twin and (loop := self.simulate(self.factory)) is not None:
            self._stop = threading.Event()  # a fresh one: the last twin may still be stopping
            self._twin = threading.Thread(
                target=loop, args=(self._stop,), name=f"twin-{type(self).name}", daemon=True
            )
            self._twin.start()
        from gpiozero import Device

        # gpiozero 2.0's software SPI (all SPI on mock pins) asks for the default factory
        # whatever it is handed; off a board none loads, so ours stands in while we build.
        default = Device.pin_factory
        Device.pin_factory = default or self.factory
        try:
            self.attach(self.factory)
        except BaseException:
            # close() follows only an open() that succeeded: release here what attach() got
            # before it failed, or each retry would find the pin still held by this driver.
            self._stop_twin()
            self.detach()
            self._release()
            raise
        finally:
            Device.pin_factory = default

    async def close(self) -> None:
        self._stop.set()
        if self._twin is not None:  # joined off the loop: a twin may be mid-way in a pulse
            await asyncio.to_thread(self._twin.join, 1.0)
            self._twin = None
        self.detach()
        self._release()

    def _release(self) -> None:
        if self.twin and self.factory is not None:
            MockBoard.release()
            self.factory = None

    def _stop_twin(self) -> None:
        self._stop.set()
        if self._twin is not None:
            self._twin.join(timeout=1.0)
            self._twin = None

    @classmethod
    def check_contract(cls) -> None:
        super().check_contract()
        missing = [m for m in ("attach", "detach") if getattr(cls, m) is getattr(GPIODevice, m)]
        if missing:
            raise TypeError(f"{cls.__qualname__}: a GPIO driver needs {' and '.join(missing)}()")

    def attach(self, factory: Any) -> None:
        """Build the gpiozero devices on `factory`."""

    def detach(self) -> None:
        """Close the gpiozero devices (their pins are released for the next open)."""

    def simulate(self, factory: Any) -> Twin | None:
        """Prepare the mock pins as the device would wire them; return the twin's loop, if any."""
        return None


def _board_factory() -> Any:
    from gpiozero import Device

    if Device.pin_factory is None:
        Device.pin_factory = Device._default_pin_factory()
    return Device.pin_factory


class MockBoard:
    """The mock pins simulated drivers share while any of them is open, as the devices wired
    to one board share its pins: a pin used twice clashes as on the board, SPI devices share
    their bus. When the last one closes the board goes, so the next run starts on fresh pins."""

    factory: Any = None
    users = 0
    lock = threading.Lock()

    @classmethod
    def acquire(cls) -> Any:
        from gpiozero.pins.mock import MockFactory

        with cls.lock:
            if cls.factory is None:
                cls.factory = MockFactory()
            cls.users += 1
            return cls.factory

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                cls.factory = None
