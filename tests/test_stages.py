"""Each built-in stage on its own: what it passes, what it changes, what it drops."""

from __future__ import annotations

import itertools
import math

import pytest

from agent.pipeline import Pipeline
from agent.stages import (
    Calibrate,
    Delta,
    ExponentialMovingAverage,
    Median,
    MovingAverage,
    Range,
    Throttle,
)
from tests.helpers import forever, readings


def values(stage: object, inputs: list[float], *, step: float = 1.0) -> list[float]:
    return [r.value for r in stage.transform(readings(inputs, step=step))]  # type: ignore[attr-defined]


def test_calibrate_offset_and_scale() -> None:
    assert values(Calibrate(offset=-0.5, scale=2.0), [1, 2, 3]) == [1.5, 3.5, 5.5]


def test_calibrate_two_points_fits_a_line() -> None:
    # Raw 10 reads as 0 °C, raw 110 as 100 °C: a sensor off by 10.
    stage = Calibrate(points=[[10, 0], [110, 100]])
    assert values(stage, [10, 60, 110]) == pytest.approx([0, 50, 100])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [[1, 2]]}, "exactly two"),
        ({"points": [[1, 2], [1, 3]]}, "different raw values"),
        ({"points": [[1, 2], [2, 3]], "offset": 1.0}, "either points or offset/scale"),
    ],
)
def test_calibrate_rejects_bad_points(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibrate(**kwargs)  # type: ignore[arg-type]


def test_range_drops_outside_and_counts_the_drops() -> None:
    pipeline = Pipeline([Range(min=0, max=10)])
    out = [r.value for r in pipeline.feed(readings([-1, 0, 5, 10, 11, 3]))]
    assert out == [0, 5, 10, 3]
    assert pipeline.stats()[0]["dropped"] == 2


def test_range_clamps_and_counts_clamps() -> None:
    stage = Range(min=0, max=10, mode="clamp")
    assert values(stage, [-1, 5, 11]) == [0, 5, 10]
    assert stage.counters() == {"clamped": 2}


def test_range_with_one_bound() -> None:
    assert values(Range(max=1), [-100, 0, 2]) == [-100, 0]
    with pytest.raises(ValueError, match="min, max or both"):
        Range()
    with pytest.raises(ValueError, match="expected min ≤ max"):
        Range(min=2, max=1)


def test_delta_passes_changes_only() -> None:
    assert values(Delta(change=1.0), [0, 0.5, 0.9, 1.0, 1.4, 2.1, 0.5]) == [0, 1.0, 2.1, 0.5]


def test_delta_heartbeat_resends_after_silence() -> None:
    # Constant value, one reading a second, heartbeat 5 s: the first and every 5th pass.
    out = list(Delta(change=1.0, heartbeat=5).transform(readings([7.0] * 12)))
    assert [r.ts for r in out] == [0, 5, 10]


def test_throttle_passes_one_per_period_by_event_time() -> None:
    out = list(Throttle(seconds=1.0).transform(readings(range(10), step=0.25)))
    assert [r.ts for r in out] == [0.0, 1.0, 2.0]


def test_moving_average_over_a_sliding_window() -> None:
    assert values(MovingAverage(size=3), [3, 6, 9, 12]) == [3, 4.5, 6, 9]


def test_median_removes_a_spike_and_keeps_a_step() -> None:
    assert values(Median(size=3), [1, 1, 100, 1, 5, 5, 5]) == [1, 1, 1, 1, 5, 5, 5]


def test_median_of_even_count_is_the_mean_of_the_middle_two() -> None:
    assert values(Median(size=4), [1, 3]) == [1, 2]


def test_ema_moves_alpha_of_the_way() -> None:
    assert values(ExponentialMovingAverage(alpha=0.5), [0, 10, 10]) == [0, 5, 7.5]


STAGES = [
    Calibrate(offset=1),
    Range(min=-1e12, max=1e12),
    Delta(change=0.5, heartbeat=10),
    Throttle(seconds=0.5),
    MovingAverage(size=4),
    Median(size=5),
    ExponentialMovingAverage(alpha=0.2),
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_is_lazy_on_an_infinite_stream(stage: object) -> None:
    out = list(itertools.islice(stage.transform(forever()), 1000))  # type: ignore[attr-defined]
    assert len(out) == 1000
    assert all(math.isfinite(r.value) for r in out)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_stage_state_survives_between_batches(stage: object) -> None:
    """feed() is called once per drained batch: splitting a stream must not change the output."""
    whole = [r.value for r in type(stage)(**_args(stage)).transform(readings(range(50)))]  # type: ignore[attr-defined]
    split_stage = type(stage)(**_args(stage))  # type: ignore[call-arg]
    split = [
        r.value
        for chunk in (range(17), range(17, 30), range(30, 50))
        for r in split_stage.transform(readings(chunk, start=chunk.start))  # type: ignore[attr-defined]
    ]
    assert split == whole


def _args(stage: object) -> dict[str, object]:
    return {
        "calibrate": {"offset": 1},
        "range": {"min": 10, "max": 40},
        "delta": {"change": 2.0, "heartbeat": 3},
        "throttle": {"seconds": 2.5},
        "moving_average": {"size": 4},
        "median": {"size": 5},
        "ema": {"alpha": 0.2},
    }[stage.name]  # type: ignore[attr-defined]


def test_stage_state_is_fixed_size() -> None:
    for stage in STAGES:
        assert not hasattr(stage, "__dict__"), stage.name
    average = MovingAverage(size=4)
    list(average.transform(readings(range(10_000))))
    assert len(average.values) == 4
