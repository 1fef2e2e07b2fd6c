"""HC-SR04 ultrasonic distance sensor on two GPIO pins, via gpiozero's DistanceSensor."""

from __future__ import annotations

import math
import threading
import time
import warnings
from typing import Annotated, Any

from agent.schema import Bounds, Invalid
from drivers.base import Channel, Sample
from drivers.gpio import GPIODevice, Pin, Twin

SPEED_OF_SOUND = 343.26  # m/s, gpiozero's figure, so the twin's echoes read back as sent
NO_ECHO = 0.5  # s: several of gpiozero's echo cycles (a 60 ms pause, then up to 100 ms)


class HCSR04(GPIODevice, name="hcsr04"):
    """HC-SR04 ultrasonic distance sensor: the median of the latest echoes, in metres.

    Nothing within `max_distance` is no reading (None), not a distance: gpiozero reports
    such an echo as `max_distance` itself, which would pass for a target standing there.
    """

    channels = (Channel("distance", "m", "distance"),)

    def __init__(
        self,
        *,
        echo: Annotated[Pin, "ECHO's GPIO (through a 5 V to 3.3 V divider)"],
        trigger: Annotated[Pin, "TRIG's GPIO"],
        max_distance: Annotated[float, Bounds(gt=0, le=4), "m; farther is no reading"] = 4.0,
        queue_len: Annotated[int, Bounds(ge=1, le=50), "echoes (~15/s) in the median"] = 5,
        **gpio: Any,
    ) -> None:
        super().__init__(**gpio)
        if echo == trigger:
            raise Invalid("trigger", f"expected a pin other than echo's, got {trigger} for both")
        self.echo, self.trigger = echo, trigger
        self.max_distance, self.queue_len = max_distance, queue_len
        self.sensor: Any = None
        self._on_echo: Any = None  # gpiozero's own handler of ECHO's edges
        self.echoed = -math.inf  # when ECHO last changed (time.monotonic)

    def attach(self, factory: Any) -> None:
        from gpiozero import DistanceSensor, PWMSoftwareFallback

        # partial: a full queue is never waited for, as it never fills while no echo returns.
        # The threshold only drives events we do not use; gpiozero rejects one beyond the range.
        with warnings.catch_warnings():  # advice to use pigpio, printed raw on stderr
            warnings.simplefilter("ignore", PWMSoftwareFallback)
            self.sensor = DistanceSensor(
                echo=self.echo,
                trigger=self.trigger,
                queue_len=self.queue_len,
                max_distance=self.max_distance,
                threshold_distance=self.max_distance / 2,
                partial=True,
                pin_factory=factory,
            )
        # gpiozero keeps the median of past echoes when no more come (a wire came off): so
        # note when each edge comes, and hand it on.
        self.echoed, self._on_echo = -math.inf, self.sensor.pin.when_changed
        self.sensor.pin.when_changed = self._echo_changed

    def _echo_changed(self, ticks: float, state: int) -> None:
        self.echoed = time.monotonic()
        self._on_echo(ticks, state)

    def detach(self) -> None:
        if self.sensor is not None:
            self.sensor.close()
            self.sensor = None

    def read_blocking(self) -> Sample:
        deadline = time.monotonic() + NO_ECHO
        # A partial queue still empty reads 0.0; a real echo always takes some time.
        while (value := self.sensor.value) == 0.0 or time.monotonic() - self.echoed > NO_ECHO:
            if time.monotonic() > deadline:
                raise OSError(f"HC-SR04 on GPIO{self.echo}: no echo for {NO_ECHO:g} s")
            time.sleep(0.02)
        return None if value >= 1.0 else float(value) * self.max_distance

    def simulate(self, factory: Any) -> Twin:
        from gpiozero.pins.mock import MockTriggerPin

        def target(t: float) -> float:  # wanders between 20 % and 80 % of the range each minute
            return self.max_distance * (0.5 + 0.3 * math.sin(2 * math.pi * t / 60))

        echo = factory.pin(self.echo)
        trigger = factory.pin(
            self.trigger, pin_class=MockTriggerPin, echo_pin=echo, echo_time=echo_time(target(0))
        )

        def drift(stop: threading.Event) -> None:
            start = time.monotonic()
            while not stop.wait(0.1):
                trigger.echo_time = echo_time(target(time.monotonic() - start))

        return drift


def echo_time(distance: float) -> float:
    """How long ECHO stays high for a target `distance` metres away: there and back."""
    return 2 * distance / SPEED_OF_SOUND
