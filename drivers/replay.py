"""Replay recorded readings from a CSV or JSON-lines file, keeping their original spacing."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.schema import Invalid, Positive
from drivers.base import Channel, Sample
from drivers.simulated import Simulated


class Replay(Simulated, name="replay"):
    """Replay a .csv or .jsonl file of timestamped values, `speed` times faster than recorded."""

    def __init__(
        self,
        *,
        path: Path,
        value: str = "value",
        time: str = "ts",
        speed: Positive = 1.0,
        loop: bool = False,
        unit: str = "",
        **faults: Any,
    ) -> None:
        super().__init__(**faults)
        if path.suffix not in (".csv", ".jsonl"):
            raise Invalid("path", f'expected a .csv or .jsonl file, got "{path}"')
        if not path.is_file():
            where = "not found" if path.is_absolute() else f"not found at {path.absolute()}"
            raise Invalid("path", f'expected an existing file, got "{path}" ({where})')
        self.path, self.value_key, self.time_key = path, value, time
        self.speed, self.loop = speed, loop
        self.channels = (Channel("value", unit),)

    def rows(self) -> Iterator[dict[str, Any]]:
        with self.path.open(newline="") as f:
            if self.path.suffix == ".csv":
                yield from csv.DictReader(f)
            else:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

    def parse(self, row: dict[str, Any]) -> tuple[float, float] | None:
        """The row's timestamp and value, or None for a row that has no valid pair."""
        try:
            stamp = row[self.time_key]
            if isinstance(stamp, str):
                try:
                    stamp = float(stamp)
                except ValueError:
                    stamp = datetime.fromisoformat(stamp).timestamp()
            return float(stamp), float(row[self.value_key])
        except (KeyError, TypeError, ValueError):
            return None

    async def stream(self) -> AsyncIterator[Sample]:
        while True:
            previous: float | None = None
            for row in self.rows():
                parsed = self.parse(row)
                if parsed is None:
                    yield math.nan  # the agent counts it as an invalid value, logged once per burst
                    continue
                stamp, value = parsed
                if previous is not None and stamp > previous:
                    await asyncio.sleep((stamp - previous) / self.speed)
                previous = stamp
                yield await self.faulty(value)
            if not self.loop:
                return
