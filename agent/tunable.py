"""Stage parameters that may be changed while the agent runs.

A `Tunable` is a descriptor on a stage class. Every value set through it, from the config
or from afar, is checked against its annotation (type and bounds) exactly as the config
loader checks it, so a remote change can never put a stage in a state a config could not:

    class ExponentialMovingAverage(Stage, name="ema"):
        __slots__ = ("_alpha", "state")   # a tunable keeps its value in "_" + its name
        alpha = Tunable(Annotated[float, Bounds(gt=0, le=1)])
"""

from __future__ import annotations

from operator import attrgetter
from typing import Annotated, Any, get_args, get_origin

from agent.schema import Invalid, Mismatch, convert, describe_type, found


class Tunable(property):
    """A validated stage attribute that the agent may change at run time.

    A property over the slot that keeps the value: reading it costs what reading the slot
    costs (stages read their parameters once a batch), and setting it checks the value."""

    def __init__(self, annotation: Any) -> None:
        super().__init__()
        self.annotation = annotation
        self.name = self.storage = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.storage = name, f"_{name}"
        super().__init__(attrgetter(self.storage), self._set)

    def _set(self, stage: object, value: object) -> None:
        try:
            checked = (
                None
                if value is None and _optional(self.annotation)
                else convert(value, self.annotation)
            )
        except Mismatch as e:
            raise Invalid(self.name, f"expected {e.expected}, got {found(value)}") from None
        setattr(stage, self.storage, checked)

    @property
    def expected(self) -> str:
        return describe_type(self.annotation)


def tunables(cls: type) -> dict[str, Tunable]:
    """The tunable parameters of a stage class, its bases' included, by name."""
    found_here: dict[str, Tunable] = {}
    for klass in reversed(cls.__mro__):
        found_here |= {n: v for n, v in vars(klass).items() if isinstance(v, Tunable)}
    return found_here


def _optional(annotation: Any) -> bool:
    """Whether None is one of the values `annotation` allows (`X | None`, possibly Annotated)."""
    if get_origin(annotation) is Annotated:
        return _optional(get_args(annotation)[0])
    return type(None) in get_args(annotation)
