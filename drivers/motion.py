"""A PIR motion sensor through gpiozero's MotionSensor: 1.0 when motion starts, 0.0 when it ends.

MotionSensor samples the pin `sample_rate` times a second on its own thread and calls it motion
while the mean of the last `queue_len` samples is above `threshold`. That averaging is the
filter, so the stream adds no debounce of its own.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Any

from agent.schema import Bounds, Count, Positive
from drivers.base import Channel
from drivers.digital_input import InputStream
from drivers.gpio import Pin, Twin


class Motion(InputStream, name="motion"):
    """PIR motion sensor (HC-SR501, AM312): 1.0 when motion starts, 0.0 when it ends."""

    channels = (Channel("motion", "", "motion"),)

    def __init__(
        self,
        *,
        pin: Pin,
        pull_up: Annotated[bool, "true for a sensor that pulls the line low on motion"] = False,
        queue_len: Annotated[Count, "samples averaged: raise it for a twitchy sensor"] = 1,
        sample_rate: Annotated[Positive, "samples a second"] = 10.0,
        threshold: Annotated[
            float, Bounds(gt=0, lt=1), "the share of samples that is motion"
        ] = 0.5,
        **gpio: Any,
    ) -> None:
        super().__init__(**gpio)
        self.pin, self.pull_up = pin, pull_up
        self.queue_len, self.sample_rate, self.threshold = queue_len, sample_rate, threshold

    def attach(self, factory: Any) -> None:
        from gpiozero import MotionSensor

        self.device = MotionSensor(
            self.pin,
            pull_up=self.pull_up,
            queue_len=self.queue_len,
            sample_rate=self.sample_rate,
            threshold=self.threshold,
            pin_factory=factory,
        )
        self.device.when_motion = self.device.when_no_motion = self.edge

    async def ready(self) -> None:
        # Until its queue has filled, the sensor's reads would block the loop. Each of these
        # checks the flag the first full queue sets, without waiting.
        while not (self.device.wait_for_active(0) or self.device.wait_for_inactive(0)):
            await asyncio.sleep(1 / self.sample_rate)

    def simulate(self, factory: Any) -> Twin:
        pin = factory.pin(self.pin)
        on, off = pin.drive_high, pin.drive_low
        if self.pull_up:  # an open-collector sensor pulls the line low on motion
            on, off = off, on

        def visits(stop: threading.Event) -> None:
            while not stop.wait(8.0):  # someone walks past every 10 s and stays 2 s
                on()
                stop.wait(2.0)
                off()

        return visits
