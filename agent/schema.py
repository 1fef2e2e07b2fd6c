"""Config values checked against the annotations of a constructor.

A driver's, stage's or sink's parameters are its `__init__` keyword arguments;
their annotations are the schema. This module turns one annotation into a
check and into the words a user reads when the check fails.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin


@dataclass(frozen=True)
class Bounds:
    """A numeric range for `Annotated[float, Bounds(gt=0)]`."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def __str__(self) -> str:
        if self.ge is not None and self.le is not None and self.gt is None and self.lt is None:
            return f"from {_num(self.ge)} to {_num(self.le)}"
        parts = [
            f"{sign} {_num(limit)}"
            for sign, limit in ((">", self.gt), ("≥", self.ge), ("<", self.lt), ("≤", self.le))
            if limit is not None
        ]
        return " and ".join(parts)


@dataclass(frozen=True)
class Match:
    """A pattern a string must match whole, described in words for the error message."""

    pattern: str
    text: str

    def __str__(self) -> str:
        return self.text


Positive = Annotated[float, Bounds(gt=0)]
NonNegative = Annotated[float, Bounds(ge=0)]
Rate = Annotated[float, Bounds(ge=0, le=1), "a probability per read"]
Count = Annotated[int, Bounds(ge=1, le=1_000_000)]


class Injected:
    """Marks a parameter the agent hands in (a clock, a bus, a port), never read from the config."""


class Mismatch(ValueError):
    """A value that does not fit its annotation; `expected` is what the user should write."""

    def __init__(
        self, expected: str, *, hint: str = "", at: str = "", value: object = None
    ) -> None:
        super().__init__(expected)
        self.expected = expected
        self.hint = hint  # '; did you mean "clamp"?', shown after what was found
        self.at = at  # where inside the value, for items of a list: "[2]"
        self.value = value


class Invalid(ValueError):
    """Raised by a constructor for a value that fits its type but not the others (min above max).

    `key` names the parameter to blame, so the message points at it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def found(value: object) -> str:
    """How a TOML value is shown back to the user."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return repr(value)


def suggest(word: str, choices: Iterable[str]) -> str:
    import difflib  # only when a name is wrong: not worth its memory in every agent

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def describe_type(annotation: Any) -> str:
    """The expected value in words: 'a number > 0', 'one of "drop", "clamp"'."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        base = describe_type(args[0])
        limits = " and ".join(str(m) for m in args[1:] if isinstance(m, (Bounds, Match)))
        return f"{base} {limits}" if limits else base
    if origin is Literal:
        return "one of " + ", ".join(found(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        item = describe_type(args[0]) if args else "value"
        if item.startswith("one of "):
            return "a list of values, each " + item
        return f"a list of {_plural(item)}"
    if origin is dict:
        return f"a table of {_plural(describe_type(args[1]))}" if args else "a table"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return "a table"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


_NAMES: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path (string)",
}


def _plural(phrase: str) -> str:
    for article in ("an ", "a "):
        if phrase.startswith(article):
            head, _, tail = phrase[len(article) :].partition(" ")
            return f"{head}s {tail}".strip()
    return phrase


def convert(value: object, annotation: Any) -> Any:
    """Check `value` against `annotation` and return it in the annotated type, or raise Mismatch."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        try:
            result = convert(value, args[0])
        except Mismatch as e:
            if e.at:
                raise
            raise Mismatch(describe_type(annotation), hint=e.hint) from None
        for marker in args[1:]:
            if (isinstance(marker, Bounds) and not marker.holds(result)) or (
                isinstance(marker, Match) and not re.fullmatch(marker.pattern, result)
            ):
                raise Mismatch(describe_type(annotation))
        return result
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        hint = suggest(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise Mismatch(describe_type(annotation), hint=hint)
    if origin in (Union, types.UnionType):
        for option in args:
            if option is type(None):
                continue
            try:
                return convert(value, option)
            except Mismatch as e:
                if e.at:  # the value had the option's shape; one item inside was wrong
                    raise
        raise Mismatch(describe_type(annotation))
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise Mismatch(describe_type(annotation))
        items = []
        for i, v in enumerate(value):
            try:
                items.append(convert(v, args[0]) if args else v)
            except Mismatch as e:
                at, inner = f"[{i}]{e.at}", e.value if e.at else v
                raise Mismatch(e.expected, hint=e.hint, at=at, value=inner) from None
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise Mismatch(describe_type(annotation))
        table = {}
        for key, v in value.items():
            try:
                table[key] = convert(v, args[1]) if args else v
            except Mismatch as e:
                at, inner = f".{key}{e.at}", e.value if e.at else v
                raise Mismatch(e.expected, hint=e.hint, at=at, value=inner) from None
        return table
    if annotation is float:
        # inf and nan are numbers to TOML, but no interval, bound or window can be one.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)  # an integer past 1e308 overflows
            except OverflowError:
                raise Mismatch(describe_type(annotation)) from None
            if math.isfinite(number):
                return number
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is Path:
        if isinstance(value, str) and value:
            return Path(value)
    elif annotation in (bool, str):
        if isinstance(value, annotation):
            return value
    elif annotation is Any:
        return value
    raise Mismatch(describe_type(annotation))


@dataclass(frozen=True)
class Param:
    """One configurable parameter, as `describe` shows it and the loader checks it."""

    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def type_text(self) -> str:
        return describe_type(self.annotation)


def params_of(target: Callable[..., object]) -> list[Param]:
    """The configurable parameters of a class (its `__init__` along the MRO) or a function.

    A subclass that takes `**kwargs` and passes them up inherits its bases'
    parameters, so a simulated driver lists the fault options of its base too.
    """
    inits: list[Callable[..., object]]
    if isinstance(target, type):
        inits = [
            klass.__dict__["__init__"] for klass in target.__mro__ if "__init__" in klass.__dict__
        ]
    else:
        inits = [target]
    found_params: dict[str, Param] = {}
    for init in inits:
        hints = typing.get_type_hints(init, include_extras=True)
        more = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                more = True
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            annotation = hints.get(p.name, Any)
            if _is_injected(annotation) or p.name in found_params:
                continue
            found_params[p.name] = Param(p.name, annotation, p.default, _doc(annotation))
        if not more:
            break
    return list(found_params.values())


def _is_injected(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(
        m is Injected or isinstance(m, Injected) for m in get_args(annotation)[1:]
    )


def injected_names(target: type) -> set[str]:
    names: set[str] = set()
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            hints = typing.get_type_hints(init, include_extras=True)
            names |= {n for n, a in hints.items() if _is_injected(a)}
    return names


def _doc(annotation: Any) -> str:
    """The last string in Annotated: nested Annotated types flatten, and the outermost doc wins."""
    if get_origin(annotation) is Annotated:
        return next((m for m in reversed(get_args(annotation)[1:]) if isinstance(m, str)), "")
    return ""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config, located by its key path."""

    path: str
    message: str

    @classmethod
    def expected(cls, path: str, expected: str, value: object, hint: str = "") -> Problem:
        return cls(path, f"expected {expected}, got {found(value)}{hint}")


def bind(
    params: list[Param], table: Mapping[str, object], path: str, *, known: Iterable[str] = ()
) -> tuple[dict[str, object], list[Problem]]:
    """Check a config table against parameters: the keyword arguments, and every problem found.

    Keys in `known` belong to the caller (a sensor's `name`, a stage's `stage`)
    and are neither bound nor reported as unknown.
    """
    kwargs: dict[str, object] = {}
    problems: list[Problem] = []
    by_name = {p.name: p for p in params}
    known = set(known)
    for key, value in table.items():
        if key in known:
            continue
        param = by_name.get(key)
        if param is None:
            hint = suggest(key, [*by_name, *known])
            problems.append(Problem(_join(path, key), f"unknown key{hint or ''}"))
            continue
        table_type = _dataclass_in(param.annotation)
        if table_type is not None and isinstance(value, dict):
            nested, nested_problems = bind(params_of(table_type), value, _join(path, key))
            problems += nested_problems
            if not nested_problems:
                try:
                    kwargs[key] = table_type(**nested)
                except Invalid as e:
                    problems.append(Problem(_join(_join(path, key), e.key), str(e)))
            continue
        try:
            kwargs[key] = convert(value, param.annotation)
        except Mismatch as e:
            shown = e.value if e.at else value
            problems.append(Problem.expected(_join(path, key) + e.at, e.expected, shown, e.hint))
    for param in params:
        if param.required and param.name not in table:
            problems.append(
                Problem(
                    _join(path, param.name), f"expected {param.type_text}, got nothing (missing)"
                )
            )
    return kwargs, problems


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass a parameter takes as a nested table (`window = { seconds = 60 }`), if any."""
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    for candidate in (annotation, *options):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
