"""Why the durable buffer is a segment log and not SQLite: appends/s and bytes written per record.

Both store the same records, the bytes the uplink buffers for one real aggregate (topic and
msgpack payload), in batches of 50 with one fsync per batch, then delete them as acknowledged.
Bytes written come from /proc/self/io (what reached the block layer).
Run: .venv/bin/python bench/buffer_choice.py
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent import wire
from agent.buffer import Buffer
from agent.records import Aggregate

STATS = {"mean": 21.43, "min": 20.9, "max": 22.1, "count": 600.0}

N = 20_000
BATCH = 50
TOPIC = b"edge/greenhouse-1/air/agg"
PAYLOAD = (
    len(TOPIC).to_bytes(2, "little")
    + TOPIC
    + wire.encode(
        Aggregate("air", 1795900000.0, 1795900060.0, 600, STATS, "°C", 1234), "greenhouse-1"
    )
)


def written() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes"))


def sqlite_wal(directory: Path) -> None:
    db = sqlite3.connect(directory / "buffer.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, p BLOB)")
    for _ in range(0, N, BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT INTO r (p) VALUES (?)", [(PAYLOAD,)] * BATCH)
        db.execute("COMMIT")
    for start in range(0, N, BATCH):
        db.execute("DELETE FROM r WHERE id <= ?", (start + BATCH,))
    db.close()


def segment_log(directory: Path) -> None:
    with Buffer(directory) as buffer:
        for _ in range(0, N, BATCH):
            for _ in range(BATCH):
                buffer.append(PAYLOAD)
            buffer.commit()
        records = list(buffer.read(0, limit=N))
        for last in range(BATCH - 1, N, BATCH):  # acknowledged a batch at a time, as SQLite
            buffer.release(records[last][1])
            buffer.commit()


def measure(store: Callable[[Path], None]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        before, started = written(), time.perf_counter()
        store(Path(tmp))
        elapsed = time.perf_counter() - started
        return {
            "appends_per_s": round(N / elapsed),
            "bytes_written_per_record": round((written() - before) / N),
        }


if __name__ == "__main__":
    for name, store in (("sqlite_wal", sqlite_wal), ("segment_log", segment_log)):
        print(json.dumps({"store": name, "record_bytes": len(PAYLOAD), **measure(store)}))
