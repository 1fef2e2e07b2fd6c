"""A simulated tide gauge: the water level of a semidiurnal tide, with a little wave chop."""

from __future__ import annotations

import math
from typing import Annotated, Any

from agent.schema import NonNegative, Positive
from drivers import Channel, Signal

__all__ = ["Tide"]

SECONDS_PER_HOUR = 3600.0


class Tide(Signal, name="tide"):
    """Simulated tide gauge: water level rising and falling twice a day, plus wave chop."""

    channels = (Channel("level", unit="m", device_class="distance"),)

    def __init__(
        self,
        *,
        mean_level: Annotated[float, "mean water level above the gauge's zero, in metres"] = 2.0,
        amplitude: Annotated[NonNegative, "half the range from low to high water, in metres"] = 1.5,
        period: Annotated[Positive, "hours from one high water to the next"] = 12.42,
        chop: Annotated[NonNegative, "standard deviation of the waves, in metres"] = 0.05,
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        self.mean_level, self.amplitude, self.chop = mean_level, amplitude, chop
        self.period = period * SECONDS_PER_HOUR

    def sample(self) -> float:
        # Phase from wall time, so high water comes at the same moment after a restart.
        phase = 2 * math.pi * self.clock.time() / self.period
        waves = self.rng.gauss(0, self.chop) if self.chop else 0.0
        return self.mean_level + self.amplitude * math.cos(phase) + waves
