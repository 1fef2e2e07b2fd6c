"""A sine wave over wall time: a smooth signal whose window means are known in advance."""

from __future__ import annotations

import math
from typing import Any

from agent.schema import Positive
from drivers.base import Channel
from drivers.simulated import Signal


class Sine(Signal, name="sine"):
    """Simulated sine wave: offset + amplitude × sin(2π t / period), plus optional noise."""

    def __init__(
        self,
        *,
        amplitude: float = 1.0,
        offset: float = 0.0,
        period: Positive = 60.0,
        noise: float = 0.0,
        unit: str = "",
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        self.amplitude, self.offset, self.period, self.noise = amplitude, offset, period, noise
        self.channels = (Channel("value", unit),)

    def sample(self) -> float:
        phase = 2 * math.pi * self.clock.time() / self.period
        jitter = self.rng.gauss(0, self.noise) if self.noise else 0.0
        return self.offset + self.amplitude * math.sin(phase) + jitter
