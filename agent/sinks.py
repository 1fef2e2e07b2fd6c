"""Sinks: where aggregates and forwarded readings go. Each is a context manager.

`with sink:` opens it (a file, later a connection); leaving the block flushes
and closes it, also when the agent stops on an error.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Annotated, ClassVar, TextIO

from agent.records import Aggregate, Reading, as_dict
from agent.registry import Component, Registry
from agent.schema import Bounds, Injected, Invalid

Record = Reading | Aggregate


class Sink(Component):
    """Base class of sinks; subclass with `name=` to register one."""

    registry: ClassVar[Registry[Sink]] = Registry("sink", "edge_agent.sinks")

    @classmethod
    def check_contract(cls) -> None:
        super().check_contract()
        if not callable(getattr(cls, "write", None)):
            raise TypeError(f"{cls.__qualname__}: a sink needs a write(self, record) method")

    if TYPE_CHECKING:  # declared for type checkers; each sink defines its own

        def write(self, record: Record) -> None: ...

    def open(self) -> None:
        """Acquire what the sink writes to; constructors only check their arguments."""

    def flush(self) -> None:
        """Make what was written so far durable (or visible)."""

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class JsonLines(Sink, name="jsonl"):
    """Append records to a JSON-lines file, rotated at max_bytes to .1, .2, ... (`backups` kept)."""

    def __init__(
        self,
        *,
        path: Path,
        max_bytes: Annotated[int, Bounds(ge=1024)] = 10 * 1024 * 1024,
        backups: Annotated[int, Bounds(ge=0)] = 3,
        readings: Annotated[bool, "also write forwarded event readings"] = True,
    ) -> None:
        if path.is_dir():
            raise Invalid("path", f'expected a file, got "{path}", a directory')
        self.path, self.max_bytes, self.backups, self.readings = path, max_bytes, backups, readings
        self.file: IO[str] | None = None
        self.size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")
        self.size = self.file.tell()

    def write(self, record: Record) -> None:
        if isinstance(record, Reading) and not self.readings:
            return
        line = json.dumps(as_dict(record), separators=(",", ":"), ensure_ascii=False) + "\n"
        size = len(line.encode())
        if self.file is None:
            self.open()  # after a failed rotation: retry the open, never the rotation
        elif self.size and self.size + size > self.max_bytes:
            self._rotate()
        assert self.file is not None
        self.file.write(line)
        self.file.flush()  # a line per window: cheap, and a crash loses no closed window
        self.size += size

    def _rotate(self) -> None:
        assert self.file is not None
        self.file.close()
        self.file = None
        for n in range(self.backups, 0, -1):
            newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
            if newer.exists():
                newer.replace(self.path.with_name(f"{self.path.name}.{n}"))
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self.open()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Console(Sink, name="console"):
    """Print aggregates and events as readable lines on standard output, as they arrive."""

    def __init__(
        self,
        *,
        readings: Annotated[bool, "also print forwarded event readings"] = True,
        stream: Annotated[TextIO | None, Injected] = None,
    ) -> None:
        self.readings = readings
        self.stream = stream

    def write(self, record: Record) -> None:
        out = self.stream or sys.stdout
        if isinstance(record, Aggregate):
            span = f"{_clock(record.start)}-{_clock(record.end)}"
            stats = "  ".join(f"{k}={_fmt(v)}" for k, v in record.stats.items())
            tail = " ".join(filter(None, [record.unit, "(partial)" if record.partial else ""]))
            line = f"{span}  {record.sensor:<12} #{record.seq:<4} {stats}  {tail}"
        elif self.readings:
            value = f"{_fmt(record.value)} {record.unit}"
            line = f"{_clock(record.ts):<17}  {record.sensor:<12} event {value}"
        else:
            return
        print(line.rstrip(), file=out, flush=True)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _fmt(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
