"""Backoff and circuit breakers: how the agent stops hammering what is failing.

A breaker wraps one dependency (a sensor now, the broker later). After
`failures` consecutive failures it opens and refuses calls; after a cool-down
it lets one probe through (half-open). A failed probe opens it again with a
longer cool-down, growing exponentially up to a cap, with jitter so a fleet of
boards does not retry in lockstep.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from agent.clock import SYSTEM_CLOCK, Clock


def backoff(
    base: float, cap: float, *, rng: Callable[[], float] = random.random
) -> Callable[[int], float]:
    """A delay function: attempt n waits between half and all of min(cap, base × 2ⁿ).

    Half the delay is kept so the growth is real; the other half is jitter.
    """

    def delay(attempt: int) -> float:
        ceiling = min(cap, base * 2.0 ** min(attempt, 64))
        return ceiling / 2 + rng() * ceiling / 2

    return delay


def jittered(base: float, cap: float, failures: int) -> float:
    """Full jitter between `base` and an exponential ceiling (capped, however long the outage)."""
    ceiling = min(cap, base * 2.0 ** min(failures, 64))
    return random.uniform(base, max(base, ceiling))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = (
        "_delay",
        "clock",
        "failures",
        "opened",
        "reopen_at",
        "state",
        "threshold",
        "trips",
    )

    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.threshold = failures
        self._delay = backoff(cooldown, max_cooldown, rng=rng)
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive
        self.trips = 0  # consecutive openings without a success between them
        self.opened = 0  # all openings, for the counters
        self.reopen_at = 0.0

    def allow(self) -> bool:
        """May a call go through now? An open breaker lets one probe through after its cool-down."""
        if self.state is BreakerState.OPEN and self.clock.monotonic() >= self.reopen_at:
            self.state = BreakerState.HALF_OPEN
            return True
        return self.state is BreakerState.CLOSED

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.trips = 0

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.reopen_at = self.clock.monotonic() + self._delay(self.trips)
            self.trips += 1
            self.opened += 1
