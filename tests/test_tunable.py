"""Tunable stage parameters and the tuner that changes them at run time, with its refusals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Annotated

import pytest

from agent.clock import ManualClock
from agent.pipeline import Pipeline, Stage
from agent.records import Reading
from agent.schema import Bounds, Invalid
from agent.stages import Calibrate, Delta, ExponentialMovingAverage, MovingAverage, Range
from agent.tunable import Tunable, tunables
from agent.tuning import MAX_PAYLOAD, Refused, Tuner


def test_a_tunable_checks_every_value_as_the_config_would() -> None:
    ema = ExponentialMovingAverage(alpha=0.5)
    ema.alpha = 0.25
    assert ema.alpha == 0.25
    with pytest.raises(Invalid, match=r"expected a number > 0 and ≤ 1, got 2") as e:
        ema.alpha = 2
    assert e.value.key == "alpha"
    with pytest.raises(Invalid, match='expected a number > 0 and ≤ 1, got "fast"'):
        ema.alpha = "fast"
    assert ema.alpha == 0.25  # a refused value leaves the old one


def test_the_constructor_goes_through_the_same_check() -> None:
    with pytest.raises(Invalid, match="got 0"):
        ExponentialMovingAverage(alpha=0)


def test_an_optional_parameter_takes_none() -> None:
    delta = Delta(change=1.0, heartbeat=60)
    delta.heartbeat = None
    assert delta.heartbeat is None


def test_a_tunable_without_its_slot_fails_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r'Gain: tunable "gain".*add "_gain" to __slots__'):

        class Gain(Stage, name="test_gain_without_slot"):
            __slots__ = ()
            gain = Tunable(float)

            def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
                yield from readings


def test_tunables_are_listed_for_each_stage() -> None:
    assert set(tunables(Calibrate)) == {"offset", "scale"}
    assert set(tunables(Range)) == {"min", "max"}
    assert set(tunables(MovingAverage)) == set()  # its window size is fixed at start


def run(pipeline: Pipeline, *values: float) -> list[float]:
    return [
        r.value for r in pipeline.feed([Reading("x", float(i), v) for i, v in enumerate(values)])
    ]


def tuner_for(**pipelines: list[Stage]) -> Tuner:
    return Tuner(pipelines.items(), clock=ManualClock(1000.0))


def test_a_change_takes_effect_on_the_next_reading_and_is_audited() -> None:
    stage = Calibrate(offset=0.0)
    pipeline = Pipeline([stage])
    tuner = tuner_for(air=[stage])
    assert run(pipeline, 20.0) == [20.0]
    change = tuner.apply("air", "calibrate", "offset", b"-0.5", "mqtt")
    assert change == {
        "ts": 1000.0,
        "sensor": "air",
        "stage": "calibrate",
        "param": "offset",
        "old": 0.0,
        "new": -0.5,
        "source": "mqtt",
    }
    assert run(pipeline, 20.0) == [19.5]


def test_every_channel_of_a_sensor_changes_together() -> None:
    copies: list[Stage] = [Range(max=30.0), Range(max=30.0)]
    # One pipeline per channel (temperature and humidity), each with its own copy.
    tuner = Tuner([("climate", [copies[0]]), ("climate", [copies[1]])], clock=ManualClock(0))
    tuner.apply("climate", "range", "max", json.dumps({"value": 40, "source": "ops"}).encode(), "")
    assert [c.max for c in copies] == [40.0, 40.0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sensor", "stage", "param", "payload", "why"),
    [
        ("soil", "range", "max", b"1", 'no sensor "soil"'),
        ("air", "median", "size", b"1", 'sensor "air" has no single stage "median"'),
        ("air", "range", "mode", b'"clamp"', '"mode" is not a tunable parameter of range'),
        ("air", "range", "max", b'"hot"', 'expected a number, got "hot"'),
        ("air", "range", "max", b"-100", "expected min ≤ max, got min = -40, max = -100"),
        ("air", "range", "max", b"{max: 1}", "expected a JSON value"),
        ("air", "range", "max", b'{"value": 1, "user": "x"}', "got other keys"),
        ("air", "range", "max", b" " * (MAX_PAYLOAD + 1) + b"1", "at most 256"),
        ("air", "ema", "alpha", b"1.5", "expected a number > 0 and ≤ 1, got 1.5"),
    ],
)
def test_refusals_say_why_and_change_nothing(
    sensor: str, stage: str, param: str, payload: bytes, why: str
) -> None:
    stages: list[Stage] = [Range(min=-40, max=85), ExponentialMovingAverage(alpha=0.5)]
    tuner = tuner_for(air=stages)
    with pytest.raises(Refused, match=why):
        tuner.apply(sensor, stage, param, payload, "mqtt")
    assert (stages[0].min, stages[0].max) == (-40, 85)  # type: ignore[attr-defined]
    assert stages[1].alpha == 0.5  # type: ignore[attr-defined]


def test_a_stage_used_twice_in_one_pipeline_cannot_be_tuned_by_name() -> None:
    tuner = tuner_for(air=[Calibrate(offset=1), Calibrate(scale=2)])
    with pytest.raises(Refused, match='no single stage "calibrate"'):
        tuner.apply("air", "calibrate", "offset", b"0", "mqtt")


class Scaled(Stage, name="test_scaled"):
    """A third-party stage declaring its own tunable."""

    __slots__ = ("_gain",)
    gain = Tunable(Annotated[float, Bounds(ge=0, le=10)])

    def __init__(self, *, gain: float = 1.0) -> None:
        self.gain = gain

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            reading.value *= self.gain
            yield reading


def test_any_stage_can_declare_tunables() -> None:
    stage = Scaled()
    tuner = tuner_for(pump=[stage])
    tuner.apply("pump", "test_scaled", "gain", b"2.5", "mqtt")
    assert run(Pipeline([stage]), 2.0) == [5.0]
