"""Backlog drain: how fast a buffered backlog reaches a local mosquitto once it is back.

Fills the durable buffer with N aggregates while no broker is up, then starts a private
mosquitto and times the uplink until the broker has acknowledged (PUBACK, QoS 1) every one.

The anchor, in the same run: `mosquitto_pub -l -q 1 -M <inflight>` publishing the same number
of the same payloads (the bytes the uplink sends for each replayed aggregate, one a line) to a
private mosquitto of the same configuration, timed from its start to its exit (it exits once the
last PUBACK is in). A line cannot hold a msgpack payload (its bytes may include a newline), so
both sides use the uplink's JSON encoding (`payload = "json"`), which never does.

Like with like: the uplink runs with `batch = 1` (its default), so it too sends one PUBLISH per
aggregate, QoS 1, with at most INFLIGHT awaiting their PUBACK; batching (`batch = 50` on
{base}/batch) would send a fiftieth of the messages and is not what the anchor does. The
uplink's time includes connecting (after the broker starts) and releasing acknowledged records
from the buffer; the anchor's includes starting mosquitto_pub and reading its stdin.

Run: .venv/bin/python bench/drain.py [--quick]   (prints the figures as JSON lines)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent import log, wire
from agent.config import parse
from agent.demo import Mosquitto, free_port, mosquitto_binary
from agent.records import Aggregate
from agent.uplink import Uplink

try:
    from bench.common import Figure, figure
except ModuleNotFoundError:  # run as `python bench/drain.py`: bench/ itself is on the path
    from common import Figure, figure  # type: ignore[no-redef]

INFLIGHT = 64  # the uplink's default window (Mqtt.inflight), and mosquitto_pub's -M
STATS = {"count": 10.0, "mean": 21.5, "min": 20.1, "max": 22.9}


def aggregate(seq: int) -> Aggregate:
    return Aggregate(f"sensor{seq % 10}", seq * 60.0, seq * 60.0 + 60, 10, STATS, "°C", seq)


async def drain_once(n: int, scratch: Path) -> float:
    """Aggregates/s: the uplink draining a backlog of `n` to a broker started after the fill."""
    port = free_port()
    config = parse(
        {
            "agent": {"device_id": "bench", "data_dir": str(scratch / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "payload": "json",
                "inflight": INFLIGHT,
                "backoff": {"base": 0.05, "cap": 0.1},
            },
        },
        scratch / "bench.toml",
    )
    assert config.mqtt is not None
    uplink = Uplink(
        config.mqtt, config.buffer, device="bench", data_dir=scratch / "data", sensors=[]
    )
    uplink.open()
    for seq in range(1, n + 1):
        uplink.write(aggregate(seq))
    uplink.commit()
    broker_dir = scratch / f"broker-{port}"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, port).start()
    try:
        started = time.perf_counter()
        task = asyncio.create_task(uplink.run())
        while uplink.buffer.pending_bytes:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        assert uplink.acknowledged >= n, (uplink.acknowledged, n)
        uplink.stop()
        await uplink.close(drain_timeout=1)
        task.cancel()
    finally:
        broker.stop()
    return n / elapsed


def anchor_once(n: int, scratch: Path) -> float:
    """Aggregates/s: mosquitto_pub sending the same `n` payloads, one a line, same window."""
    lines = scratch / "payloads.txt"
    with lines.open("wb") as f:
        for seq in range(1, n + 1):
            payload = wire.mark_replay(wire.encode(aggregate(seq), "bench", "json"))
            assert b"\n" not in payload
            f.write(payload + b"\n")
    pub = mosquitto_binary()
    assert pub is not None
    pub = str(Path(pub).with_name("mosquitto_pub"))
    if not Path(pub).exists():
        pub = "mosquitto_pub"
    broker_dir = scratch / "anchor-broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir).start()
    try:
        with lines.open("rb") as stdin:
            command = [pub, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"]
            command += ["-M", str(INFLIGHT), "-t", "edge/bench/sensor0/agg", "-l"]
            started = time.perf_counter()
            subprocess.run(command, stdin=stdin, check=True, timeout=300)
            elapsed = time.perf_counter() - started
    finally:
        broker.stop()
    return n / elapsed


def figures(quick: bool = False) -> list[Figure]:
    """Drain speed against the anchor: the median of several runs after a warm-up, each run
    measuring both, one after the other, so a drifting machine moves both alike."""
    n, runs = (2_000, 3) if quick else (20_000, 5)
    log.setup("error")  # the broker is down on purpose while the backlog is written
    drains: list[float] = []
    anchors: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        for run in range(runs + 1):  # the first is a warm-up
            scratch = Path(tmp) / f"run{run}"
            scratch.mkdir()
            drain = asyncio.run(drain_once(n, scratch))
            anchor = anchor_once(n, scratch)
            if run:
                drains.append(drain)
                anchors.append(anchor)
    return [
        figure(
            "backlog drain to a local mosquitto, QoS 1",
            statistics.median(drains),
            "aggregates/s",
            goal=0.8,
            better="higher",
            anchor=f"mosquitto_pub -l -q 1 -M {INFLIGHT}, same {n} JSON payloads",
            anchor_value=statistics.median(anchors),
            runs=runs,
        )
    ]


def main() -> None:
    quick = "--quick" in sys.argv
    for result in figures(quick=quick):
        print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
