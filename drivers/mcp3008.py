"""Microchip MCP3008: an 8-input 10-bit ADC on SPI0, via gpiozero's MCP3008."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated, Any, Literal

from agent.schema import Bounds, Invalid
from drivers.base import Channel, Sample
from drivers.gpio import GPIODevice, Twin

CODES = 1024  # VIN = code × VREF / 1024 (datasheet, equation 4-1)
CLOCK, MOSI, MISO, SELECT = 11, 10, 9, (8, 7)  # SPI0's GPIOs; CE0 and CE1 pick the chip
Input = Annotated[int, Bounds(ge=0, le=7)]


class MCP3008(GPIODevice, name="mcp3008"):
    """Microchip MCP3008 10-bit ADC on SPI0: each listed input, in volts (ch0..ch7)."""

    channels: tuple[Channel, ...] = ()  # one per listed input, set by the constructor

    def __init__(
        self,
        *,
        inputs: Annotated[tuple[Input, ...], "inputs to read, each once"] = (0,),
        vref: Annotated[float, Bounds(gt=0, le=5.5), "volts on VREF: the full scale"] = 3.3,
        differential: Annotated[bool, "input n minus its pair n xor 1: 0-1, 1-0, 2-3…"] = False,
        device: Annotated[Literal[0, 1], "SPI0 chip select: CE0 (GPIO8) or CE1 (GPIO7)"] = 0,
        **gpio: Any,
    ) -> None:
        super().__init__(**gpio)
        inputs = tuple(inputs)
        if not inputs or len(set(inputs)) < len(inputs) or not all(0 <= i <= 7 for i in inputs):
            raise Invalid("inputs", f"expected inputs from 0 to 7, each once, got {list(inputs)}")
        self.inputs, self.vref, self.differential, self.device = inputs, vref, differential, device
        self.channels = tuple(Channel(f"ch{i}", "V", "voltage") for i in inputs)
        self.adcs: list[Any] = []

    def attach(self, factory: Any) -> None:
        from gpiozero import MCP3008 as ADC

        try:  # one gpiozero device per input, all sharing one SPI interface
            for i in self.inputs:
                self.adcs.append(ADC(i, self.differential, device=self.device, pin_factory=factory))
        except Exception:
            self.detach()
            raise

    def detach(self) -> None:
        while self.adcs:
            self.adcs.pop().close()

    def read_blocking(self) -> Sample:
        # The datasheet's scale, code × VREF / 1024: gpiozero's `voltage` is (2 code + 1) / 2047
        # of max_voltage, half a step to a whole step higher.
        return {
            f"ch{i}": adc.raw_value * self.vref / CODES
            for i, adc in zip(self.inputs, self.adcs, strict=True)
        }

    def simulate(self, factory: Any) -> Twin:
        from drivers.mcp3008_twin import SimulatedMCP3008

        chip = SimulatedMCP3008(factory, device=self.device, vref=self.vref)

        def levels(t: float) -> None:  # each input its own slow wave about mid-scale
            for n in range(8):
                phase = 2 * math.pi * t / 60 + n * math.pi / 4
                chip.volts[n] = self.vref * (0.5 + 0.4 * math.sin(phase))

        def drift(stop: threading.Event) -> None:
            start = time.monotonic()
            while not stop.wait(0.1):
                levels(time.monotonic() - start)
            chip.close()  # off the bus: a reopened driver wires a new one

        levels(0.0)
        return drift
