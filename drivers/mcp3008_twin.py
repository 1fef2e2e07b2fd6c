"""The MCP3008's simulated twin, apart from the driver so that gpiozero (3.6 MiB) loads only
when a GPIO driver runs, not in every agent that registers the drivers."""

from __future__ import annotations

from typing import Any

from gpiozero.pins.mock import MockSPIDevice

from drivers.mcp3008 import CLOCK, CODES, MISO, MOSI, SELECT


class SimulatedMCP3008(MockSPIDevice):  # type: ignore[misc]  # gpiozero is untyped
    """The chip's side of SPI (datasheet figure 6-1), converting the analog levels in `volts`.

    Leading zeros, then a start bit, SGL/DIFF and D2 D1 D0 in; one more clock ends the
    sample, then out come a null bit and the code (the nearest of 0..1023), MSB first.
    """

    def __init__(self, factory: Any, *, device: int = 0, vref: float = 3.3) -> None:
        super().__init__(CLOCK, MOSI, MISO, SELECT[device], pin_factory=factory)
        self.vref = vref
        self.volts = [0.0] * 8
        self.start: int | None = None

    def on_start(self) -> None:
        super().on_start()
        self.start = None

    def on_bit(self) -> None:
        if self.start is None:
            if self.rx_buf[-1]:
                self.start = self.rx_bit
        elif self.rx_bit == self.start + 4:
            single, d2, d1, d0 = (int(b) for b in self.rx_buf[-4:])
            n = d2 << 2 | d1 << 1 | d0
            # Differential: IN+ is input n, IN- its neighbour n xor 1 (datasheet table 5-2).
            vin = self.volts[n] - (0.0 if single else self.volts[n ^ 1])
            code = min(CODES - 1, max(0, round(vin / self.vref * CODES)))
            self.tx_buf += [0, 0] + [code >> b & 1 for b in range(9, -1, -1)]
