"""Small builders, and a bounded wait, shared by the tests."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from agent.records import Reading

SENSOR = sys.intern("test")


def readings(
    values: Iterable[float], *, start: float = 0.0, step: float = 1.0
) -> Iterator[Reading]:
    """Readings of `values`, one every `step` seconds from `start`."""
    for i, value in enumerate(values):
        yield Reading(SENSOR, start + i * step, float(value), "u")


def forever(start: float = 0.0) -> Iterator[Reading]:
    """An endless stream of readings 0, 1, 2, ... one a second."""
    return readings(itertools.count(), start=start)


async def eventually(
    condition: Callable[[], object], state: Callable[[], object], timeout: float = 10.0
) -> None:
    """Wait until `condition()` holds. After `timeout` seconds, fail with `state()`: what never
    comes is a failure that says where things stood, not a run that hangs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g} s: {state()}")
        await asyncio.sleep(0.01)
