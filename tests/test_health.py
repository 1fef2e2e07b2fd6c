"""Health: the snapshot, its retained message on {prefix}/{device}/health, `edge-agent status`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.cli import main
from agent.config import Config, ConfigError, Mqtt, load, parse
from agent.daemon import Agent
from agent.demo import free_port
from agent.health import Health, LoopLag
from agent.pipeline import Stage
from agent.records import Reading
from agent.status import table
from tests.broker import Mosquitto
from tests.helpers import eventually
from tests.test_sampling import Collect

TOPIC = "edge/pi/health"
BROKEN = "InjectedFault: counter: injected read error"

CONFIG = """
[agent]
device_id = "pi"
data_dir = "{data}"
breaker = {{ failures = 2, cooldown = 30, max_cooldown = 60 }}

[[sensors]]
name = "ticks"
driver = "counter"
interval = 0.05
pipeline = [{{ stage = "range", max = 5 }}]

[[sensors]]
name = "air"
driver = "sine"
interval = 0.05
window = {{ seconds = 0.2 }}

[[sensors]]
name = "broken"
driver = "counter"
interval = 0.05
errors = 1.0

[mqtt]
host = "127.0.0.1"
port = {port}
health_interval = 0.2
backoff = {{ base = 0.1, cap = 0.5 }}
"""


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(data=tmp_path / "data", port=port), encoding="utf-8")
    return path


class Watcher:
    """A subscriber to the health topic, as an operator's tool would be: plain paho, JSON."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[bool, dict[str, Any]]] = []  # (retained, health)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(TOPIC, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.retain, json.loads(m.payload))
        )
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def health(self) -> list[dict[str, Any]]:
        return [h for _, h in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settled(h: dict[str, Any]) -> bool:
    """Enough has happened for every assertion: readings past the filter, the breaker open,
    records acknowledged."""
    return bool(
        h["sensors"]["ticks"]["readings"] >= 10
        and h["sensors"]["broken"]["state"] == "breaker_open"
        and h["uplink"]["rate"] > 0
    )


async def test_health_is_published_retained_with_what_the_agent_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    agent = Agent(load(write_config(tmp_path, broker.port)), sinks=[])
    watcher = Watcher(broker.port)
    run = asyncio.create_task(agent.run())
    try:
        await eventually(
            lambda: any(settled(h) for h in watcher.health()), lambda: watcher.health()[-1:]
        )
    finally:
        agent.stop()
        await asyncio.wait_for(run, 10)
        watcher.close()
    h = next(h for h in watcher.health() if settled(h))
    assert (h["v"], h["device"], h["version"], h["interval"]) == (1, "pi", __version__, 0.2)
    assert 0 < h["uptime"] < 30
    assert abs(h["ts"] - time.time()) < 30

    ticks, broken = h["sensors"]["ticks"], h["sensors"]["broken"]
    assert ticks["state"] == "ok"
    assert (ticks["errors"], ticks["timeouts"], ticks["last_error"]) == (0, 0, None)
    assert broken == {
        "state": "breaker_open",
        "last_error": BROKEN,
        "readings": 0,
        "empty": 0,
        "errors": 2,  # the breaker opened at the second; its cool-down outlasts the test
        "timeouts": 0,
        "garbled": 0,
        "invalid": 0,
    }
    # Every reading is counted once: taken in by its channel's pipeline, or still queued.
    readings = sum(s["readings"] for s in h["sensors"].values())
    received = sum(c["received"] for c in h["channels"].values())
    assert readings == received + h["queue"]["depth"]

    # The counter's 0 to 5 pass `max = 5`; every later value is dropped.
    n = h["channels"]["ticks"]["received"]
    assert h["channels"]["ticks"]["stages"] == [
        {"stage": "range", "received": n, "passed": 6, "dropped": n - 6}
    ]
    assert (h["channels"]["ticks"]["late"], h["channels"]["air"]["late"]) == (None, 0)
    assert h["drops"] == {"queue": 0, "buffer_overflow": 0, "stages": n - 6, "late": 0}

    uplink = h["uplink"]
    assert uplink["connected"]
    assert uplink["reconnects"] == 0
    assert uplink["published"] >= uplink["acknowledged"] > 0
    assert 0 < uplink["rate"] < 100  # 20 events a second, a few aggregates
    assert h["buffer"]["records"] >= 0
    assert h["buffer"]["oldest_age"] is None or 0 <= h["buffer"]["oldest_age"] < 10
    assert 10 << 20 < h["process"]["rss_bytes"] < 1 << 30
    assert 0 <= h["process"]["cpu_percent"] <= 100 * (os.cpu_count() or 1)
    assert 0 <= h["loop_lag"]["mean_ms"] <= h["loop_lag"]["max_ms"] < 1000

    # Retained: a subscriber that comes after the agent stopped still finds the last one.
    later = Watcher(broker.port)
    try:
        await eventually(lambda: later.messages, lambda: "no retained health message")
        retained, last = later.messages[0]
        assert retained
        assert last["ts"] == max(m["ts"] for m in watcher.health())
    finally:
        later.close()


async def test_the_buffer_grows_and_ages_while_the_broker_is_away(tmp_path: Path) -> None:
    agent = Agent(load(write_config(tmp_path, free_port())), sinks=[])  # no broker there
    assert agent.uplink is not None
    buffer = agent.uplink.buffer
    run = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: buffer.segments and buffer.pending_bytes, lambda: "nothing yet")
        first = agent.vitals.snapshot()
        assert first["buffer"] is not None
        count = first["buffer"]["records"]
        await eventually(lambda: buffer.pending_records >= count + 5, lambda: buffer.stats)
        second = agent.vitals.snapshot()
    finally:
        agent.stop()
        await asyncio.wait_for(run, 10)
    one, two = first["buffer"], second["buffer"]
    assert one is not None
    assert two is not None
    assert one["oldest_age"] is not None
    assert two["oldest_age"] is not None
    assert two["records"] > one["records"] > 0
    assert two["bytes"] > one["bytes"] > 0
    # The oldest record is still the same one: it aged exactly as time went by.
    assert abs((two["oldest_age"] - one["oldest_age"]) - (second["ts"] - first["ts"])) < 0.005
    assert second["uplink"] == {
        "connected": False,
        "reconnects": 0,
        "published": 0,
        "acknowledged": 0,
        "rate": 0.0,
    }


class Stall(Stage, name="test_health_stall"):
    """Holds the event loop once, as a stage stuck in a long computation would."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            if not self.done:
                self.done = True
                time.sleep(0.4)
            yield reading


def local_config(sensors: list[dict[str, Any]]) -> Config:
    return parse({"agent": {"device_id": "pi"}, "sensors": sensors}, Path("t.toml"))


async def logged_health(
    agent: Agent, seconds: float, caplog: pytest.LogCaptureFixture
) -> list[dict[str, Any]]:
    agent.health_every = 0.1
    with caplog.at_level(logging.INFO, logger="agent"):
        await asyncio.wait_for(agent.run(duration=seconds), 10)
    return [r.fields for r in caplog.records if r.getMessage() == "health"]  # type: ignore[attr-defined]


async def test_without_mqtt_the_snapshot_goes_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(
        local_config(
            [
                {"name": "ticks", "driver": "counter", "interval": 0.02},
                {"name": "flaky", "driver": "counter", "interval": 0.02, "errors": 0.3, "seed": 1},
                {"name": "slow", "driver": "counter", "interval": 3600},  # first read: next hour
            ]
        ),
        sinks=[Collect()],
    )
    logged = await logged_health(agent, 0.55, caplog)
    assert len(logged) >= 3
    for fields in logged:
        # Everything the message has but `ts`: the log line has its own.
        assert set(fields) == set(Health.__required_keys__) - {"ts"}
        json.dumps(fields)
        assert (fields["buffer"], fields["uplink"]) == (None, None)
        assert fields["sensors"]["slow"]["state"] == "starting"
        assert fields["sensors"]["flaky"]["state"] in ("ok", "degraded")
    last = logged[-1]["sensors"]
    assert last["ticks"]["state"] == "ok"
    assert last["ticks"]["readings"] > 10
    assert last["flaky"]["last_error"] == "InjectedFault: counter: injected read error"
    assert "degraded" in {f["sensors"]["flaky"]["state"] for f in logged}


async def test_loop_lag_shows_a_blocked_loop() -> None:
    lag = LoopLag(period=0.02)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.1)
        quiet = lag.take()
        time.sleep(0.3)  # a blocking call on the event loop
        await asyncio.sleep(0.05)
        blocked = lag.take()
        time.sleep(0.3)
        still = lag.take()  # taken while the monitor has not even woken up yet
    finally:
        task.cancel()
    assert quiet["max_ms"] < 250
    assert blocked["max_ms"] >= 250
    assert 0 < blocked["mean_ms"] < blocked["max_ms"]
    assert still["max_ms"] >= 250


async def test_the_agents_health_shows_a_stage_that_held_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sensors = [
        {
            "name": "c",
            "driver": "counter",
            "interval": 0.05,
            "pipeline": [{"stage": "test_health_stall"}],
        }
    ]
    logged = await logged_health(Agent(local_config(sensors), sinks=[Collect()]), 0.8, caplog)
    # Held for 0.4 s: the monitor's next wake-up (every 0.25 s) came at least 0.15 s late.
    assert max(f["loop_lag"]["max_ms"] for f in logged) >= 150


async def test_status_prints_a_running_agents_health_as_a_table(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, broker.port)
    agent = Agent(load(path), sinks=[])
    watcher = Watcher(broker.port)
    run = asyncio.create_task(agent.run())
    try:
        await eventually(
            lambda: any(settled(h) for h in watcher.health()), lambda: watcher.health()[-1:]
        )
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["status", "-c", str(path)]) == 0
        shown = capsys.readouterr().out
        assert await asyncio.to_thread(main, ["status", "-c", str(path), "--json"]) == 0
        raw = capsys.readouterr().out
    finally:
        agent.stop()
        await asyncio.wait_for(run, 10)
        watcher.close()
    lines = shown.splitlines()
    assert re.fullmatch(
        rf"pi: edge-agent {re.escape(__version__)}, up [\d.]+ s; health of \d\d:\d\d:\d\d "
        r"\([\d.]+ s ago, sent every 0\.2 s\)",
        lines[0],
    )
    assert re.search(r"^uplink +connected, 0 reconnects, [\d.]+ records/s", shown, re.M)
    assert re.search(r"^buffer +\d+ records, \d+ B", shown, re.M)
    for label in ("queue", "drops", "errors", "process", "loop lag"):
        assert re.search(rf"^{label}  ", shown, re.M), label
    assert re.search(r"^ticks +ok +\d+ +0 +0 +0 +0 +0 +-$", shown, re.M)
    assert re.search(rf"^broken +breaker_open +0 +0 +2 +0 +0 +0 +{BROKEN}$", shown, re.M)
    assert re.search(r"^ticks +range +\d+ +6 +\d+ +-$", shown, re.M)
    assert re.search(r"^air +- +\d+ +\d+ +0 +0$", shown, re.M)
    health = json.loads(raw)
    assert health["device"] == "pi"
    assert health["sensors"]["broken"]["state"] == "breaker_open"


def test_status_without_a_health_message_says_so(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, broker.port)
    assert main(["status", "-c", str(path), "--timeout", "0.3"]) == 1
    assert capsys.readouterr().err == (
        f"edge-agent: no health message on {TOPIC} within 0.3 s: "
        "is the agent running with health_interval > 0?\n"
    )


def test_status_without_a_broker_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    path = write_config(tmp_path, port)
    assert main(["status", "-c", str(path), "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edge-agent: cannot reach 127.0.0.1:{port}: ")
    assert err.endswith("edge-agent: no broker could be reached\n")


SNAPSHOT: Health = {
    "v": 1,
    "device": "pi-1",
    "version": "0.1.0",
    "ts": 1795903800.0,
    "interval": 60.0,
    "uptime": 7384.2,
    "sensors": {
        "air": {
            "state": "ok",
            "last_error": None,
            "readings": 7380,
            "empty": 2,
            "errors": 0,
            "timeouts": 0,
            "garbled": 0,
            "invalid": 0,
        },
        "soil": {
            "state": "breaker_open",
            "last_error": "OSError: [Errno 121] Remote I/O error",
            "readings": 1200,
            "empty": 0,
            "errors": 14,
            "timeouts": 3,
            "garbled": 0,
            "invalid": 0,
        },
    },
    "channels": {
        "air": {
            "received": 7380,
            "stages": [
                {"stage": "range", "received": 7380, "passed": 7377, "dropped": 3},
                {"stage": "median", "received": 7377, "passed": 7377, "dropped": 0},
            ],
            "late": 1,
        },
        "soil": {"received": 1200, "stages": [], "late": None},
    },
    "queue": {"depth": 0, "dropped": 0},
    "buffer": {"records": 12, "bytes": 2436, "oldest_age": 41.5},
    "uplink": {
        "connected": True,
        "reconnects": 1,
        "published": 1400,
        "acknowledged": 1388,
        "rate": 0.3,
    },
    "drops": {"queue": 0, "buffer_overflow": 0, "stages": 3, "late": 1},
    "errors": {"stages": 0, "sinks": 0},
    "process": {"rss_bytes": 33_980_416, "cpu_percent": 1.25},
    "loop_lag": {"max_ms": 3.2, "mean_ms": 1.1},
}


def test_the_status_table() -> None:
    taken = time.strftime("%H:%M:%S", time.localtime(SNAPSHOT["ts"]))
    assert table(SNAPSHOT, now=SNAPSHOT["ts"] + 4) == (
        f"pi-1: edge-agent 0.1.0, up 2 h 03 min; health of {taken} (4.0 s ago, sent every 60 s)\n"
        "\n"
        "uplink    connected, 1 reconnect, 0.3 records/s acknowledged, 1400 published\n"
        "queue     0 waiting, 0 dropped\n"
        "buffer    12 records, 2.4 KiB, oldest 42 s old\n"
        "drops     queue 0, buffer overflow 0, stage filters 3, late 1\n"
        "errors    stages 0, sinks 0\n"
        "process   RSS 32.4 MiB, CPU 1.25 % of one core\n"
        "loop lag  max 3.2 ms, mean 1.1 ms\n"
        "\n"
        "SENSOR  STATE         READINGS  EMPTY  ERRORS  TIMEOUTS  GARBLED  INVALID  LAST ERROR\n"
        "air     ok                7380      2       0         0        0        0  -\n"
        "soil    breaker_open      1200      0      14         3        0        0  "
        "OSError: [Errno 121] Remote I/O error\n"
        "\n"
        "CHANNEL  STAGE   RECEIVED  PASSED  DROPPED  LATE\n"
        "air      range       7380    7377        3     1\n"
        "         median      7377    7377        0\n"
        "soil     -           1200    1200        0     -"
    )
    stale = table(SNAPSHOT, now=SNAPSHOT["ts"] + 600).splitlines()
    assert stale[1] == "  stale: the agent may be stopped, or cut off from the broker"


def test_health_interval_is_0_for_off_or_at_least_a_tenth(tmp_path: Path) -> None:
    def mqtt(**keys: object) -> Config:
        document = {"agent": {"device_id": "pi"}, "sensors": [{"name": "x", "driver": "counter"}]}
        return parse({**document, "mqtt": keys}, tmp_path / "t.toml")

    assert [mqtt(**keys).mqtt for keys in ({}, {"health_interval": 0})] == [
        Mqtt(health_interval=60),
        Mqtt(health_interval=0),
    ]
    for bad, expected in [
        (0.05, "expected 0 (off) or a number ≥ 0.1, got 0.05"),
        (86401, "expected a number from 0 to 86400, got 86401"),
    ]:
        with pytest.raises(ConfigError) as caught:
            mqtt(health_interval=bad)
        assert caught.value.lines() == [f"{tmp_path / 't.toml'}: mqtt.health_interval: {expected}"]
