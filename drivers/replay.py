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

    def rows(self) -> Iterator[Any]:
        with self.path.open(newline="") as f:
            if self.path.suffix == ".csv":
                yield from csv.DictReader(f)
                return
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        yield None  # a garbled line is a bad row, not the end of the file

    def parse(self, row: Any) -> tuple[float, float] | None:
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
            first = previous = None
            rows = 0
            for row in self.rows():
                rows += 1
                parsed = self.parse(row)
                if parsed is None:
                    await asyncio.sleep(0)
                    yield math.nan  # the agent counts it as an invalid value, logged once per burst
                    continue
                stamp, value = parsed
                gap = 0.0 if previous is None else max(0.0, stamp - previous)
                await asyncio.sleep(gap / self.speed)  # sleep(0) too: a fast file shares the loop
                first = stamp if first is None else first
                previous = stamp
                yield await self.faulty(value)
            if not self.loop or rows == 0:
                return
            # Between two passes: the file's mean spacing (one second for a single row).
            spacing = (
                (previous - first) / (rows - 1)
                if first is not None and previous is not None and rows > 1
                else 1.0
            )
            await asyncio.sleep(max(spacing, 0.0) / self.speed)
