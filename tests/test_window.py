"""Tumbling windows by event time."""

from __future__ import annotations

import math
import statistics

import pytest

from agent.records import Aggregate, Reading
from agent.window import STATS, TumblingWindow
from tests.helpers import readings


def run(window: TumblingWindow, items: list[Reading]) -> list[Aggregate]:
    return [a for r in items if (a := window.add(r)) is not None]


def test_statistics_of_a_closed_window() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    window = TumblingWindow("t", seconds=10, stats=STATS)  # type: ignore[arg-type]
    [aggregate] = run(window, [*readings(values, step=1.0), *readings([0.0], start=10.0)])
    assert (aggregate.start, aggregate.end, aggregate.count) == (0, 10, 8)
    assert aggregate.stats == pytest.approx(
        {
            "count": 8,
            "mean": statistics.fmean(values),
            "min": 1.0,
            "max": 9.0,
            "sum": sum(values),
            "stddev": statistics.stdev(values),
            "first": 3.0,
            "last": 6.0,
        }
    )
    assert aggregate.unit == "u"
    assert aggregate.seq == 1
    assert not aggregate.partial


def test_only_the_chosen_statistics_are_reported() -> None:
    window = TumblingWindow("t", seconds=1, stats=("max", "count"))
    [aggregate] = run(window, list(readings([1, 2, 3], step=0.5)))
    assert list(aggregate.stats) == ["max", "count"]


def test_windows_are_aligned_to_the_epoch_and_numbered() -> None:
    window = TumblingWindow("t", seconds=5, stats=("count",))
    aggregates = run(window, list(readings(range(16), start=1003.0)))  # ts 1003 .. 1018
    assert [(a.start, a.end, a.count, a.seq) for a in aggregates] == [
        (1000, 1005, 2, 1),
        (1005, 1010, 5, 2),
        (1010, 1015, 5, 3),
    ]


def test_a_window_closes_on_time_when_its_sensor_falls_silent() -> None:
    window = TumblingWindow("t", seconds=1, stats=("count",), grace=0.25)
    assert run(window, list(readings([1, 2], start=100.0, step=0.3))) == []
    assert window.deadline == 101.25
    assert window.advance(101.2) is None  # within grace: a reading may still be in flight
    aggregate = window.advance(101.25)
    assert aggregate is not None
    assert (aggregate.start, aggregate.count) == (100, 2)
    assert window.advance(200.0) is None  # nothing open, nothing emitted
    assert math.isinf(window.deadline)


def test_a_late_reading_is_counted_and_dropped() -> None:
    window = TumblingWindow("t", seconds=1, stats=("count",), grace=0)
    window.add(Reading("t", 100.5, 1.0))
    assert window.advance(101.0) is not None
    assert window.add(Reading("t", 100.9, 1.0)) is None  # its window already closed
    window.add(Reading("t", 101.5, 1.0))
    assert window.add(Reading("t", 100.99, 1.0)) is None  # older than the open window
    assert window.late == 2
    assert window.flush().count == 1  # type: ignore[union-attr]


def test_flush_marks_the_open_window_partial() -> None:
    window = TumblingWindow("t", seconds=60, stats=("count",))
    run(window, list(readings([1, 2, 3])))
    aggregate = window.flush()
    assert aggregate is not None
    assert aggregate.partial
    assert aggregate.count == 3
    assert window.flush() is None


def test_a_window_that_began_before_the_agent_is_partial() -> None:
    window = TumblingWindow("t", seconds=10, stats=("count",), since=105.0)
    aggregates = run(window, list(readings(range(20), start=105.0)))
    assert [(a.start, a.partial) for a in aggregates] == [(100, True), (110, False)]


def test_state_does_not_grow_with_the_number_of_readings() -> None:
    window = TumblingWindow("t", seconds=1e9, stats=STATS)  # type: ignore[arg-type]
    run(window, list(readings(range(100_000))))
    assert not hasattr(window, "__dict__")
    assert window.count == 100_000


def _fields(aggregates: list[Aggregate]) -> list[tuple[object, ...]]:
    return [(a.start, a.end, a.count, a.seq, a.partial, a.stats) for a in aggregates]


@pytest.mark.parametrize("size", [1, 3, 7, 50])
def test_a_batch_gives_what_one_reading_at_a_time_gives(size: int) -> None:
    """extend() keeps its running state in locals: a close in mid-batch, a late reading and a
    gap of empty windows must leave it exactly where add() would."""
    values = [math.sin(i) * 10 for i in range(40)]
    times = [100.0 + i * 0.3 for i in range(40)]
    times[17] = 101.0  # late: its window closed long ago
    times[30:] = [t + 5 for t in times[30:]]  # a gap of empty windows
    items = [Reading("t", ts, v, "u") for ts, v in zip(times, values, strict=True)]
    one = TumblingWindow("t", seconds=1, stats=STATS)  # type: ignore[arg-type]
    many = TumblingWindow("t", seconds=1, stats=STATS)  # type: ignore[arg-type]
    expected = run(one, items)
    got = [a for i in range(0, len(items), size) for a in many.extend(items[i : i + size])]
    assert _fields(got) == _fields(expected)
    assert many.late == one.late == 1
    assert _fields([many.flush()]) == _fields([one.flush()])  # type: ignore[list-item]


def test_the_chosen_statistics_keep_their_configured_order_in_a_batch() -> None:
    window = TumblingWindow("t", seconds=1, stats=("last", "min", "first"))
    [aggregate] = window.extend(list(readings([5, 2, 8, 1, 7], step=0.25)))
    assert aggregate.stats == {"last": 1.0, "min": 1.0, "first": 5.0}
    assert list(aggregate.stats) == ["last", "min", "first"]
