"""Stages and the metered chain that runs them.

A stage is a small class whose `transform(readings)` is a generator: it pulls
readings from upstream and yields the ones it passes. A pipeline chains the
stages of one sensor channel, each stage taking a whole batch in turn. `run()`
is called many times (once per batch the agent drains from its queue), so a
stage keeps its state on `self`, in `__slots__`, never in the generator's locals.

Every stage is wrapped by a meter: the pipeline counts what goes in and out of
each stage and the time spent in it, so no stage writes that code itself. It
meters once a batch: metering each reading cost more than the stages it timed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
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

    def pending(self) -> int:
        """Results the stage owes: work it handed elsewhere (a process pool) that a later
        transform() yields, even of no readings. The agent polls while any are owed."""
        return 0

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
    __slots__ = ("ns", "passed", "stage", "transform")

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.transform = stage.transform  # bound once, not once a batch
        self.passed = 0
        self.ns = 0  # the stage's own time: each stage runs over a whole batch in turn


# Readings feed() hands the stages at a time: it bounds the memory feed() holds, whatever its
# source; the agent's batches are smaller and go through run() whole.
CHUNK = 128


class Pipeline:
    """The stages of one sensor channel, in order."""

    __slots__ = ("meters", "received")

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.meters = tuple(Meter(s) for s in stages)
        self.received = 0

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(m.stage for m in self.meters)

    def run(self, batch: list[Reading]) -> list[Reading]:
        """The readings of `batch` that pass every stage. Each stage takes the whole batch in
        turn and is metered once for it: metering each reading cost more than the stages."""
        self.received += len(batch)
        clock = time.perf_counter_ns
        upstream = None
        now = clock()
        for meter in self.meters:
            try:
                batch = list(meter.transform(batch))
            except Exception:  # fed something that is not a reading? upstream is to blame
                _check(batch, upstream)
                raise
            finally:  # a stage that raised still spent the time
                started, now = now, clock()
                meter.ns += now - started
            meter.passed += len(batch)
            upstream = meter
        _check(batch, upstream)
        return batch

    def pending(self) -> int:
        """Results the stages owe (see Stage.pending)."""
        return sum(m.stage.pending() for m in self.meters)

    def feed(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        """The readings that pass every stage, pulled from `readings` a chunk at a time."""
        source = iter(readings)
        while chunk := list(islice(source, CHUNK)):
            yield from self.run(chunk)

    def stats(self) -> list[StageStats]:
        result: list[StageStats] = []
        received = self.received
        for meter in self.meters:
            result.append(
                StageStats(
                    stage=meter.stage.name,
                    received=received,
                    passed=meter.passed,
                    dropped=received - meter.passed,
                    seconds=meter.ns / 1e9,
                    counters=meter.stage.counters(),
                )
            )
            received = meter.passed
        return result


def _check(chunk: list[Reading], upstream: Meter | None) -> None:
    """Refuse what is not a reading, naming the stage that yielded it. Checked where the
    chain ends, or where a stage fails on it: once a batch, not once a stage."""
    if not set(map(type, chunk)) <= _READING:
        for item in chunk:
            if not isinstance(item, Reading):
                stage = "before the first" if upstream is None else upstream.stage.name
                raise TypeError(f"stage {stage} yielded {item!r}, not a Reading")


_READING = {Reading}
