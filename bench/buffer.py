"""The durable buffer: appends/s with group commit, and bytes written to disk per aggregate.

Both figures store the bytes the uplink buffers for one real aggregate (topic and msgpack
payload) with `Buffer.append`, committing every `BufferSettings.commit_records` records (1000 by
default; at these rates the 1 s `commit_interval` never comes first) with the uplink's own
state as `meta`, as `Uplink.write` does.

- appends/s against the anchor, measured in the same run: raw `os.write` of the same record
  bytes, one write a record, to one file opened O_APPEND, with an `fsync` every
  `commit_records` records.
- bytes written to disk per aggregate, from /proc/self/io `write_bytes` (what the process sent
  towards the block device, cursor slots included), against the size of the aggregate's own
  msgpack payload. The buffer writes through a shared memory map, and write_bytes counts that
  as it counts write(): a whole 4 KiB page when a store first dirties it, again when a store
  dirties it after a commit cleaned it (checked on this kernel: 10,000 B stored through a map
  count 12,288; one more store into the synced last page 4,096; posix_fallocate, which
  takes the blocks without writing them, 0; cutting a segment back to its frames, 4,096 for
  the page it ends in). The journal's own writes (ext4's jbd2 thread) are counted for neither
  the buffer nor write().

The scratch directory is made beside the repository, on the same disk as the buffer's default
data_dir (tmpfs would make fsync free and write_bytes 0).
Run: .venv/bin/python bench/buffer.py [--quick]   (prints the figures as JSON lines)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent import wire
from agent.buffer import Buffer
from agent.config import BufferSettings
from agent.records import Aggregate

try:
    from bench.common import Figure, figure
except ModuleNotFoundError:  # run as `python bench/buffer.py`: bench/ itself is on the path
    from common import Figure, figure  # type: ignore[no-redef]

STATS = {"mean": 21.43, "min": 20.9, "max": 22.1, "count": 600.0}
TOPIC = b"edge/greenhouse-1/air/agg"
PAYLOAD = wire.encode(
    Aggregate("air", 1795900000.0, 1795900060.0, 600, STATS, "°C", 1234), "greenhouse-1"
)
RECORD = len(TOPIC).to_bytes(2, "little") + TOPIC + PAYLOAD  # as Uplink.write buffers it
COMMIT_RECORDS = BufferSettings().commit_records
SCRATCH_ON = Path(__file__).resolve().parent.parent  # the repository's disk


def io_counter(name: str) -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))


def buffer_run(directory: Path, n: int) -> tuple[float, int]:
    """Seconds `n` appends with group commit take, and the bytes they wrote to disk."""
    sensors = [f"sensor{i}" for i in range(10)]
    seqs = dict.fromkeys(sensors, 0)
    with Buffer(directory) as buffer:
        before, started = io_counter("write_bytes"), time.perf_counter()
        for seq in range(1, n + 1):
            buffer.append(RECORD)
            # As Uplink.write: the record's sensor name exists already, nothing is formatted.
            seqs[sensors[seq % 10]] = seq
            if seq % COMMIT_RECORDS == 0:  # Uplink.commit(): its state rides along as meta
                buffer.commit(json.dumps({"seq": seqs, "end": buffer.end}).encode())
        buffer.commit(json.dumps({"seq": seqs, "end": buffer.end}).encode())
        elapsed = time.perf_counter() - started
        return elapsed, io_counter("write_bytes") - before


def anchor_run(directory: Path, n: int) -> tuple[float, int]:
    """The same for raw os.write + fsync of the same bytes, the same batch size."""
    fd = os.open(directory / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        before, started = io_counter("write_bytes"), time.perf_counter()
        for seq in range(1, n + 1):
            os.write(fd, RECORD)
            if seq % COMMIT_RECORDS == 0:
                os.fsync(fd)
        os.fsync(fd)
        elapsed = time.perf_counter() - started
        return elapsed, io_counter("write_bytes") - before
    finally:
        os.close(fd)


def figures(quick: bool = False) -> list[Figure]:
    """Appends/s against the raw anchor and bytes to disk per aggregate: medians of several
    runs after a warm-up, each run measuring both, one after the other."""
    n, runs = (10_000, 3) if quick else (50_000, 7)
    appends: list[float] = []
    anchors: list[float] = []
    written: list[float] = []
    with tempfile.TemporaryDirectory(prefix=".bench-buffer-", dir=SCRATCH_ON) as tmp:
        for run in range(runs + 1):  # the first is a warm-up
            ours, raw = Path(tmp) / f"buffer{run}", Path(tmp) / f"raw{run}"
            ours.mkdir()
            raw.mkdir()
            elapsed, wrote = buffer_run(ours, n)
            anchor_elapsed, _ = anchor_run(raw, n)
            if run:
                appends.append(n / elapsed)
                anchors.append(n / anchor_elapsed)
                written.append(wrote / n)
    where = f"fsync every {COMMIT_RECORDS}, {len(RECORD)} B records"
    return [
        figure(
            "durable buffer appends/s with group commit",
            statistics.median(appends),
            "appends/s",
            goal=0.6,
            better="higher",
            anchor=f"raw os.write + fsync of the same bytes ({where})",
            anchor_value=statistics.median(anchors),
            runs=runs,
        ),
        figure(
            "bytes written to disk per aggregate (/proc/self/io write_bytes)",
            statistics.median(written),
            "B",
            goal=2,
            better="lower",
            anchor=f"the aggregate's msgpack payload, {len(PAYLOAD)} B",
            anchor_value=len(PAYLOAD),
            runs=runs,
        ),
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    for result in figures(quick=quick):
        print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
