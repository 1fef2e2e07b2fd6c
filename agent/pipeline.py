"""Stages and the metered chain that runs them.

A stage is a small class whose `transform(readings)` is a generator: it pulls
readings from upstream and yields the ones it passes. A pipeline chains the
stages of one sensor channel. `feed()` may be called many times (once per
batch the agent drains from its queue), so a stage keeps its state on `self`,
in `__slots__`, never in the generator's locals.

Every stage is wrapped by a meter: the pipeline counts what goes in and out of
each stage and the time spent in it, so no stage writes that code itself.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, TypedDict

from agent.records import Reading
from agent.registry import Component, Registry
from agent.tunable import tunables


class Stage(Component):
    """Base class of pipeline stages; subclass with `name=` to register one."""

    __slots__ = ()
    registry: ClassVar[Registry[Stage]] = Registry("stage", "edge_agent.stages")

    @classmethod
    def check_contract(cls) -> None:
        super().check_contract()
        transform = getattr(cls, "transform", None)
        if transform is None:
            raise TypeError(f"{cls.__qualname__}: a stage needs a transform(self, readings) method")
        if not inspect.isgeneratorfunction(transform):
            raise TypeError(
                f"{cls.__qualname__}: transform() must be a generator function "
                "that yields the readings it passes"
            )
        if cls.__dictoffset__:
            raise TypeError(
                f"{cls.__qualname__}: a stage keeps fixed-size state; declare __slots__ "
                "on the class (and on every base it adds)"
            )
        slots = {s for klass in cls.__mro__ for s in getattr(klass, "__slots__", ())}
        for name, tunable in tunables(cls).items():
            if tunable.storage not in slots:
                raise TypeError(
                    f'{cls.__qualname__}: tunable "{name}" keeps its value in a slot; '
                    f'add "{tunable.storage}" to __slots__'
                )

    def check(self) -> None:
        """Check the parameters against each other; raise `Invalid` to refuse a change made
        at run time (the tunable's old value is put back)."""

    def counters(self) -> dict[str, int]:
        """Counts of the stage's own (clamped values, say); the meter counts in and out."""
        return {}

    if TYPE_CHECKING:  # declared for type checkers; each stage defines its own

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]: ...


class StageStats(TypedDict):
    stage: str
    received: int
    passed: int
    dropped: int
    seconds: float
    counters: dict[str, int]


class Meter:
    __slots__ = ("ns", "passed", "stage")

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.passed = 0
        self.ns = 0  # inclusive of the stages upstream; stats() subtracts theirs


class Pipeline:
    """The stages of one sensor channel, in order."""

    __slots__ = ("meters", "received")

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.meters = tuple(Meter(s) for s in stages)
        self.received = 0

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(m.stage for m in self.meters)

    def feed(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        """The readings that pass every stage, pulled lazily from `readings`."""
        flow: Iterator[Reading] = self._count(readings)
        for meter in self.meters:
            flow = _metered(meter.stage.transform(flow), meter)
        return flow

    def _count(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            self.received += 1
            yield reading

    def stats(self) -> list[StageStats]:
        result: list[StageStats] = []
        received, upstream_ns = self.received, 0
        for meter in self.meters:
            result.append(
                StageStats(
                    stage=meter.stage.name,
                    received=received,
                    passed=meter.passed,
                    dropped=received - meter.passed,
                    seconds=max(0, meter.ns - upstream_ns) / 1e9,
                    counters=meter.stage.counters(),
                )
            )
            received, upstream_ns = meter.passed, meter.ns
        return result


_END = object()


def _metered(stage_output: Iterator[Reading], meter: Meter) -> Iterator[Reading]:
    clock = time.perf_counter_ns
    while True:
        started = clock()
        try:
            reading = next(stage_output, _END)
        finally:  # also when the stage raised: stats() subtracts this time downstream
            meter.ns += clock() - started
        if reading is _END:
            return
        if not isinstance(reading, Reading):
            raise TypeError(f"stage {meter.stage.name} yielded {reading!r}, not a Reading")
        meter.passed += 1
        yield reading
