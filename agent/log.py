"""Structured logs: an event name and fields, as JSON lines for machines or short lines for people.

`log.warning("read_failed", sensor="air", error="timeout")` becomes
`{"ts": ..., "level": "warning", "event": "read_failed", "sensor": "air", ...}`
when stderr is not a terminal, and `12:00:01 WARNING read_failed sensor=air error=timeout`
when it is.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


class EventLog:
    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def get(name: str) -> EventLog:
    return EventLog(name)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Readable(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        pairs = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
        line = f"{stamp} {record.levelname:<7} {record.getMessage()} {pairs}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if " " in text else text


def setup(
    level: str = "info", stream: TextIO | None = None, *, json_lines: bool | None = None
) -> None:
    """Route all agent logs to `stream` (stderr): JSON lines unless it is a terminal."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines() if json_lines else Readable())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Burst:
    """Log a failure once when a burst of them starts, and once when it ends, with the count."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0

    def fail(self) -> bool:
        """Count one failure; True if it starts a burst (log it), False while one is going on."""
        self.failures += 1
        return self.failures == 1

    def end(self) -> int:
        """The number of failures in the burst that just ended (0 if none was going on)."""
        failures, self.failures = self.failures, 0
        return failures
