"""Backoff delays and the circuit breaker, on a manual clock."""

from __future__ import annotations

from agent.clock import ManualClock
from agent.resilience import BreakerState, CircuitBreaker, backoff


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    lowest = backoff(1.0, 60.0, rng=lambda: 0.0)
    highest = backoff(1.0, 60.0, rng=lambda: 0.999999)
    assert [lowest(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [round(highest(n)) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert lowest(10_000) == 30  # no overflow on a very long outage


def test_breaker_opens_after_n_consecutive_failures() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failures=3, cooldown=1.0, clock=clock, rng=lambda: 1.0)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_open_breaker_probes_once_after_a_cool_down_that_grows() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        failures=1, cooldown=1.0, max_cooldown=4.0, clock=clock, rng=lambda: 1.0
    )
    breaker.failure()
    cooldowns = []
    for _ in range(4):
        opened_at = clock.now
        while not breaker.allow():
            clock.advance(0.25)
        cooldowns.append(clock.now - opened_at)
        assert breaker.state is BreakerState.HALF_OPEN
        assert not breaker.allow()  # one probe at a time
        breaker.failure()  # the probe failed
    assert cooldowns == [1.0, 2.0, 4.0, 4.0]
    assert breaker.opened == 5  # the first opening and four failed probes


def test_a_successful_probe_closes_the_breaker_and_resets_the_cool_down() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failures=1, cooldown=1.0, clock=clock, rng=lambda: 1.0)
    breaker.failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure()
    assert breaker.reopen_at == clock.now + 1.0
