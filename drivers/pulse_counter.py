"""Pulses on a GPIO pin: a tipping-bucket rain gauge, a cup anemometer, a flow meter.

Each read reports `count`, the pulses since the previous read (since open, for the first), and
`rate`: those pulses per `per` (second, minute or hour) times `scale`. Set scale to what one
pulse is worth, per and unit to the rate you want to see:

- rain gauge, 0.2794 mm a tip: scale = 0.2794, per = "hour", unit = "mm/h"
  (device_class "precipitation_intensity"); the rain in a window is its `sum` of count × 0.2794;
- anemometer, 2.4 km/h at one pulse a second: scale = 2.4, unit = "km/h" ("wind_speed");
- flow meter, 450 pulses a litre: scale = 0.002222, per = "minute", unit = "L/min"
  ("volume_flow_rate").
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Literal

from agent.schema import NonNegative, Positive
from drivers.base import Channel, Sample
from drivers.digital_input import ActiveState, PullUp, active_high
from drivers.gpio import GPIODevice, Pin, Twin

SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
SHORTEST = 0.001  # s, the shortest poll interval: a window shorter is the read right after open


class PulseCounter(GPIODevice, name="pulse_counter"):
    """Pulse counter (rain gauge, anemometer, flow meter): pulses and rate since the last read."""

    channels = (Channel("count"), Channel("rate"))

    def __init__(
        self,
        *,
        pin: Pin,
        pull_up: PullUp = None,
        active_state: ActiveState = None,
        bounce: Annotated[NonNegative, "seconds: a pulse sooner after the last is bounce"] = 0.002,
        scale: Annotated[Positive, "rate = pulses per `per` × scale, in unit"] = 1.0,
        per: Annotated[Literal["second", "minute", "hour"], "the rate's time base"] = "second",
        unit: Annotated[str, 'the rate\'s unit: "km/h", "mm/h", "L/min"'] = "",
        device_class: Annotated[str, 'the rate\'s: "wind_speed", "volume_flow_rate"'] = "",
        **gpio: Any,
    ) -> None:
        super().__init__(**gpio)
        self.pin, self.pull_up, self.active_state = pin, pull_up, active_state
        self.active_high = active_high(pull_up, active_state)
        self.bounce, self.scale = bounce, scale * SECONDS[per]
        self.channels = (Channel("count"), Channel("rate", unit, device_class))
        self.device: Any = None
        self.ignored = 0  # pulses closer than `bounce` to the one before
        # The count grows on gpiozero's thread and is taken on the loop's: the lock keeps a
        # pulse from falling between reading and resetting it.
        self._lock = threading.Lock()
        self._pulses, self._since = 0, 0.0
        self._last: float | None = None  # the pin's ticks at the last counted pulse

    def attach(self, factory: Any) -> None:
        from gpiozero import InputDevice

        self.device = InputDevice(
            self.pin, pull_up=self.pull_up, active_state=self.active_state, pin_factory=factory
        )
        with self._lock:
            self._pulses, self._last = 0, None
        self.device.pin.when_changed = self._edge
        self._since = time.monotonic()  # counting starts now

    def detach(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None

    def _edge(self, ticks: float, state: int) -> None:
        if bool(state) != self.active_high:
            return  # a pulse's trailing edge
        with self._lock:
            # The pin's own timestamp of the edge: callbacks can run late, edges cannot.
            last = self._last
            if last is not None and self.factory.ticks_diff(ticks, last) < self.bounce:
                self.ignored += 1
                return
            self._pulses, self._last = self._pulses + 1, ticks

    async def read(self) -> Sample:
        with self._lock:
            now = time.monotonic()
            # The agent reads at once after opening: a window that short has no rate to tell
            # (0 per hour, or a pulse in a few µs: a gale), so its pulses go to the next one.
            if now - self._since < SHORTEST:
                return None
            pulses, self._pulses = self._pulses, 0
        elapsed, self._since = now - self._since, now
        return {"count": float(pulses), "rate": pulses / elapsed * self.scale}

    def simulate(self, factory: Any) -> Twin:
        pin = factory.pin(self.pin)
        on, off = pin.drive_high, pin.drive_low
        if not self.active_high:
            on, off = off, on

        def pulses(stop: threading.Event) -> None:
            while not stop.wait(0.19):  # 5 pulses a second, each 10 ms long
                on()
                stop.wait(0.01)
                off()

        return pulses
