"""Self-registering components: drivers, stages and sinks.

A class joins a registry by naming itself when it subclasses its kind's base:
`class Sine(Driver, name="sine")`. The base checks the class's contract right
there, so a broken driver fails at import with a message naming the class,
not hours later on a board. Third-party packages register through an entry
point group, and a config may name any class as "package.module:Class".
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

from agent.schema import Param, params_of, suggest

C = TypeVar("C", bound="Component")


class UnknownComponent(LookupError):
    """A name in the config that no registry knows; the message carries a suggestion."""


class Registry(Generic[C]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group  # entry point group third-party packages register under
        self._classes: dict[str, type[C]] = {}
        self.base: type[Component] = Component  # set when the kind's base class is defined

    def add(self, name: str, cls: type[C]) -> None:
        taken = self._classes.get(name)
        if taken is not None and taken is not cls:
            raise TypeError(
                f'{cls.__qualname__}: {self.kind} name "{name}" is already taken by '
                f"{taken.__module__}.{taken.__qualname__}"
            )
        self._classes[name] = cls

    def __iter__(self) -> Iterator[type[C]]:
        return iter(sorted(self._classes.values(), key=lambda c: c.name))

    def names(self) -> list[str]:
        return sorted(self._classes)

    def discover(self) -> list[str]:
        """Load every class installed packages register under the entry point group.

        Returns one line per entry point that failed to load, so `describe` can say so.
        """
        from importlib.metadata import entry_points

        failures = []
        for ep in entry_points(group=self.group):
            if ep.name not in self._classes:
                try:
                    self._checked(ep.load(), ep.name)
                except Exception as e:
                    why = f"{type(e).__name__}: {e}"
                    failures.append(f'{self.kind} "{ep.name}" ({ep.value}): {why}')
        return failures

    def get(self, name: str) -> type[C]:
        """The class registered as `name`, from an entry point, or named as "module:Class"."""
        if name in self._classes:
            return self._classes[name]
        if ":" in name:
            return self._import(name)
        # Only for a name no built-in class has: importlib.metadata costs every agent 1.5 MiB.
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group, name=name):
            try:
                loaded = ep.load()
            except Exception as e:  # the package's own import failed: a config problem, not a crash
                why = f"{ep.value}): {type(e).__name__}: {e}"
                raise UnknownComponent(f'cannot load {self.kind} "{name}" ({why}') from None
            return self._checked(loaded, name)
        known = sorted({*self._classes, *(ep.name for ep in entry_points(group=self.group))})
        raise UnknownComponent(f'unknown {self.kind} "{name}"{suggest(name, known)}')

    def _import(self, reference: str) -> type[C]:
        module_name, _, attr = reference.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except Exception as e:  # whatever the module's own code raised while importing
            why = f"{type(e).__name__}: {e}"
            raise UnknownComponent(f'cannot load {self.kind} "{reference}": {why}') from None
        return self._checked(obj, reference)

    def _checked(self, obj: Any, reference: str) -> type[C]:
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise UnknownComponent(f'"{reference}" is not a {self.kind} class')
        try:
            obj.check_contract()
        except TypeError as e:
            raise UnknownComponent(str(e)) from None
        return obj  # type: ignore[return-value]  # checked against the kind's base above


class Component:
    """The root of drivers, stages and sinks: naming, registration and `describe`."""

    __slots__ = ()
    registry: ClassVar[Registry[Any]]
    name: ClassVar[str] = ""

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "registry" in cls.__dict__:
            cls.registry.base = cls
        if name is None:
            return  # an abstract base: checked when a named subclass is defined
        cls.name = name
        cls.check_contract()
        cls.registry.add(name, cls)

    @classmethod
    def check_contract(cls) -> None:
        """Raise TypeError naming the class and what it lacks; each kind adds its own checks."""
        try:
            params_of(cls)
        except (NameError, TypeError) as e:
            raise TypeError(f"{cls.__qualname__}: its parameters cannot be read: {e}") from None

    @classmethod
    def summary(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @classmethod
    def params(cls) -> list[Param]:
        return params_of(cls)
