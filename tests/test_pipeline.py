"""The metered chain of stages, and its memory bound."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest

from agent.pipeline import Pipeline, Stage
from agent.records import Reading
from agent.stages import Calibrate, Median, MovingAverage, Range
from agent.window import STATS, TumblingWindow
from tests.helpers import forever, readings


def test_stages_run_in_order_and_are_metered() -> None:
    pipeline = Pipeline([Calibrate(scale=10), Range(max=50), MovingAverage(size=2)])
    out = [r.value for r in pipeline.feed(readings(range(10)))]
    assert out == [0, 5, 15, 25, 35, 45]
    calibrate, range_, average = pipeline.stats()
    assert (calibrate["received"], calibrate["passed"], calibrate["dropped"]) == (10, 10, 0)
    assert (range_["received"], range_["passed"], range_["dropped"]) == (10, 6, 4)
    assert (average["received"], average["passed"]) == (6, 6)
    assert all(s["seconds"] >= 0 for s in pipeline.stats())


def test_a_stage_gets_metered_without_writing_any_metering_code() -> None:
    class EveryOther(Stage, name="test_every_other"):
        """Pass every other reading."""

        __slots__ = ("odd",)

        def __init__(self) -> None:
            self.odd = False

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
            for reading in readings:
                self.odd = not self.odd
                if self.odd:
                    yield reading

    pipeline = Pipeline([EveryOther()])
    assert len(list(pipeline.feed(readings(range(7))))) == 4
    [stats] = pipeline.stats()
    assert (stats["stage"], stats["received"], stats["passed"], stats["dropped"]) == (
        "test_every_other",
        7,
        4,
        3,
    )


def test_meters_add_up_across_batches() -> None:
    pipeline = Pipeline([Range(min=0, max=4)])
    for chunk in (range(3), range(3, 8)):
        list(pipeline.feed(readings(chunk)))
    assert pipeline.received == 8
    assert pipeline.stats()[0]["passed"] == 5


def test_pipeline_is_lazy() -> None:
    out = Pipeline([Calibrate(offset=1)]).feed(forever())
    assert [r.value for r in itertools.islice(out, 3)] == [1, 2, 3]


def _traced_peak(n: int) -> int:
    """Peak traced memory while `n` readings flow through a full pipeline into a window."""
    pipeline = Pipeline(
        [Calibrate(offset=-0.4), Range(min=-1e9, max=1e9), MovingAverage(size=16), Median(size=9)]
    )
    window = TumblingWindow("t", seconds=1.0, stats=STATS)  # type: ignore[arg-type]
    source = readings(itertools.islice(itertools.count(), n), step=0.01)
    gc.collect()
    tracemalloc.start()
    try:
        closed = 0
        for reading in pipeline.feed(source):
            if window.add(reading) is not None:
                closed += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert closed == n // 100 - 1 + (1 if n % 100 else 0)
    return peak


def test_memory_is_bounded_whatever_the_number_of_readings() -> None:
    small = _traced_peak(100_000)
    large = _traced_peak(1_000_000)
    # Bounded by design: ten times the readings, the same few kilobytes of state.
    assert large < 64 * 1024
    assert abs(large - small) < 8 * 1024


def test_run_takes_a_batch_whole_and_meters_it_as_feed_does() -> None:
    def pipeline() -> Pipeline:
        return Pipeline([Calibrate(scale=10), Range(max=50), MovingAverage(size=2)])

    def batches() -> list[list[Reading]]:  # fresh ones for each: stages change values in place
        return [list(readings(range(i, i + 4), start=i)) for i in range(0, 12, 4)]

    by_run, by_feed = pipeline(), pipeline()
    out = [r.value for b in batches() for r in by_run.run(b)]
    assert out == [r.value for b in batches() for r in by_feed.feed(b)]
    assert out == [0, 5, 15, 25, 35, 45]
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in by_run.stats()]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in by_feed.stats()]


class Junk(Stage, name="test_junk"):
    """Yield a number instead of the reading."""

    __slots__ = ()

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            yield reading.value  # type: ignore[misc]


def test_a_stage_that_yields_no_reading_is_named() -> None:
    pipeline = Pipeline([Calibrate(), Junk()])
    with pytest.raises(TypeError, match=r"stage test_junk yielded 1\.0, not a Reading"):
        list(pipeline.feed(readings([1.0])))


def test_a_stage_that_fails_on_junk_fed_to_it_names_the_stage_upstream() -> None:
    pipeline = Pipeline([Junk(), Calibrate(offset=1)])
    with pytest.raises(TypeError, match=r"stage test_junk yielded 1\.0, not a Reading"):
        pipeline.run(list(readings([1.0])))
