"""A counter: 0, 1, 2, ... - every gap or duplicate downstream is visible at a glance."""

from __future__ import annotations

from typing import Any

from drivers.base import Channel
from drivers.simulated import Signal


class Counter(Signal, name="counter"):
    """Simulated counter: start, start + step, start + 2 × step, ..."""

    def __init__(
        self, *, start: float = 0.0, step: float = 1.0, unit: str = "", **faults: Any
    ) -> None:
        super().__init__(**faults)
        self.next_value, self.step = start, step
        self.channels = (Channel("value", unit),)

    def sample(self) -> float:
        value, self.next_value = self.next_value, self.next_value + self.step
        return value
