"""Small builders shared by the tests."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator

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
