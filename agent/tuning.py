"""Remote tuning: a `set` command changes one tunable stage parameter of one sensor.

Commands arrive on `{prefix}/{device}/set/{sensor}/{stage}/{param}` with a JSON payload: the
new value, or `{"value": ..., "source": "who asks"}`. Only parameters declared `Tunable` on
their stage class can change, and only to values their annotation allows; everything else
is refused with the reason. Every change is audited: time, old value, new value, source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from agent.clock import Clock
from agent.pipeline import Stage
from agent.schema import Invalid
from agent.tunable import tunables

MAX_PAYLOAD = 256  # bytes: a value and a source name fit; anything larger is refused unread


class Refused(Exception):
    """A command that changes nothing; the message says why."""


class Change(TypedDict):
    """One accepted change, as audited."""

    ts: float
    sensor: str
    stage: str
    param: str
    old: Any
    new: Any
    source: str


class Tuner:
    """The tunable stages of the running pipelines, by sensor and stage name.

    A sensor with several channels runs one copy of its pipeline per channel; a change
    applies to all of them, so its channels stay alike.
    """

    def __init__(self, stages: Iterable[tuple[str, Sequence[Stage]]], *, clock: Clock) -> None:
        self.clock = clock
        self.stages: dict[str, dict[str, list[Stage]]] = {}  # sensor -> stage name -> copies
        for sensor, pipeline in stages:
            by_name = self.stages.setdefault(sensor, {})
            names = [stage.name for stage in pipeline]
            for stage in pipeline:
                if names.count(stage.name) == 1:  # a stage used twice cannot be named alone
                    by_name.setdefault(stage.name, []).append(stage)

    def apply(self, sensor: str, stage: str, param: str, payload: bytes, source: str) -> Change:
        """Change the parameter, or raise Refused saying why nothing changed."""
        value, source = _parse(payload, source)
        copies = self._find(sensor, stage)
        tunable = tunables(type(copies[0])).get(param)
        if tunable is None:
            can = ", ".join(sorted(tunables(type(copies[0])))) or "none"
            raise Refused(f'"{param}" is not a tunable parameter of {stage} (tunable: {can})')
        old = getattr(copies[0], param)
        done: list[Stage] = []
        try:
            for copy in copies:
                setattr(copy, param, value)
                done.append(copy)
                copy.check()
        except Invalid as e:
            for copy in done:
                setattr(copy, param, old)
            raise Refused(str(e)) from None
        new = getattr(copies[0], param)
        return Change(
            ts=self.clock.time(), sensor=sensor, stage=stage, param=param, old=old, new=new,
            source=source,
        )  # fmt: skip

    def _find(self, sensor: str, stage: str) -> list[Stage]:
        if sensor not in self.stages:
            raise Refused(f'no sensor "{sensor}"')
        copies = self.stages[sensor].get(stage)
        if not copies:
            raise Refused(f'sensor "{sensor}" has no single stage "{stage}" in its pipeline')
        return copies


def _parse(payload: bytes, source: str) -> tuple[Any, str]:
    if len(payload) > MAX_PAYLOAD:
        raise Refused(f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD}")
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused('expected a JSON value, or {"value": ..., "source": ...}') from None
    if isinstance(message, dict):
        if set(message) - {"value", "source"} or "value" not in message:
            raise Refused('expected {"value": ..., "source": ...}, got other keys')
        source = message.get("source", source)
        if not isinstance(source, str) or len(source) > 64:
            raise Refused("expected a source name of at most 64 characters")
        return message["value"], source
    return message, source
