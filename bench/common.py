"""What every benchmark reports: a figure, measured as the median of several runs after a
warm-up, beside its physical anchor measured in the same run, and the goal it must reach.

A speed's ratio is figure / anchor (higher is better); a cost's ratio is figure / anchor too
(lower is better); `better` says which, so the goal reads the same way in the table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Literal, TypedDict


class Figure(TypedDict):
    name: str  # "readings/s through the default pipeline"
    value: float
    unit: str  # "readings/s", "B", "ms", "%"
    anchor: str  # what it is compared with, measured in the same run ("" if none)
    anchor_value: float | None
    ratio: float | None  # value / anchor_value
    goal: str  # "≥ 0.5 × anchor", "≤ 72 B"
    met: bool | None  # None: shown for context, with no goal of its own
    runs: int  # how many measured runs the median is of


def median_of(measure: Callable[[], float], runs: int = 5, warmup: int = 1) -> float:
    """The median of `runs` calls of `measure` after `warmup` unmeasured ones."""
    for _ in range(warmup):
        measure()
    return statistics.median(measure() for _ in range(runs))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes, by the monotonic clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    goal: float | None,
    better: Literal["higher", "lower"],
    anchor: str = "",
    anchor_value: float | None = None,
    runs: int = 5,
) -> Figure:
    """A figure with its goal: against the anchor's ratio when there is an anchor, else
    against the value itself. No goal: a figure shown beside another for context."""
    ratio = value / anchor_value if anchor_value else None
    compared = ratio if ratio is not None else value
    met: bool | None = None
    goal_text = "—"
    if goal is not None:
        met = compared >= goal if better == "higher" else compared <= goal
        sign = "≥" if better == "higher" else "≤"
        goal_text = f"{sign} {goal:g} × anchor" if anchor else f"{sign} {goal:g} {unit}"
    return Figure(
        name=name,
        value=value,
        unit=unit,
        anchor=anchor,
        anchor_value=anchor_value,
        ratio=ratio,
        goal=goal_text,
        met=met,
        runs=runs,
    )
