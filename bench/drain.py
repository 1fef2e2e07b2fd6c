"""Backlog drain: how fast a buffered backlog reaches a local mosquitto once it is back.

Fills the durable buffer with N aggregates while no broker is up, then starts a private
mosquitto and times the uplink until the broker has acknowledged (PUBACK, QoS 1) every one.
Run: .venv/bin/python bench/drain.py [N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent import log
from agent.config import parse
from agent.demo import Mosquitto, free_port
from agent.records import Aggregate
from agent.uplink import Uplink


async def drain_once(n: int, scratch: Path) -> float:
    port = free_port()
    config = parse(
        {
            "agent": {"device_id": "bench", "data_dir": str(scratch / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {"host": "127.0.0.1", "port": port, "backoff": {"base": 0.05, "cap": 0.1}},
        },
        scratch / "bench.toml",
    )
    assert config.mqtt is not None
    uplink = Uplink(
        config.mqtt, config.buffer, device="bench", data_dir=scratch / "data", sensors=[]
    )
    uplink.open()
    stats = {"count": 10.0, "mean": 21.5, "min": 20.1, "max": 22.9}
    for seq in range(1, n + 1):
        uplink.write(
            Aggregate(f"sensor{seq % 10}", seq * 60.0, seq * 60.0 + 60, 10, stats, "°C", seq)
        )
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
        uplink.stop()
        await uplink.close(drain_timeout=1)
        task.cancel()
    finally:
        broker.stop()
    return n / elapsed


def main() -> None:
    log.setup("error")  # the broker is down on purpose while the backlog is written
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(4):  # the first is a warm-up
            scratch = Path(tmp) / f"run{run}"
            scratch.mkdir()
            rate = asyncio.run(drain_once(n, scratch))
            if run:
                rates.append(rate)
    result = {
        "figure": "backlog drain, QoS 1, local mosquitto",
        "aggregates": n,
        "median_per_s": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
