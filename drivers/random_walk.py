"""A random walk: a seeded, wandering signal like a slowly drifting temperature."""

from __future__ import annotations

from typing import Any

from agent.schema import Invalid, NonNegative
from drivers.base import Channel
from drivers.simulated import Signal


class RandomWalk(Signal, name="random_walk"):
    """Simulated random walk: each sample moves by a normal step, kept within [low, high]."""

    def __init__(
        self,
        *,
        start: float = 20.0,
        step: NonNegative = 0.1,
        low: float = -1e9,
        high: float = 1e9,
        unit: str = "",
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        if low > high:
            raise Invalid("low", f"expected low ≤ high, got low = {low:g}, high = {high:g}")
        self.value, self.step, self.low, self.high = start, step, low, high
        self.channels = (Channel("value", unit),)

    def sample(self) -> float:
        self.value = min(self.high, max(self.low, self.value + self.rng.gauss(0, self.step)))
        return self.value
