"""Remote tuning and Home Assistant discovery through a real mosquitto, driven by a plain
paho client as an operator's tool or Home Assistant would drive them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse
from agent.daemon import Agent
from tests.broker import Mosquitto
from tests.helpers import eventually
from tests.test_sampling import Collect

BASE = "edge/pi"


class Client:
    """An operator's MQTT client: what arrived on each topic, in order."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.on_message = self._got
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _got(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def on(self, topic: str) -> list[Any]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def config(tmp_path: Path, port: int, **mqtt_keys: Any) -> Any:
    sensors = [
        {
            "name": "ticks",
            "driver": "counter",
            "interval": 0.05,
            "pipeline": [{"stage": "calibrate"}, {"stage": "ema", "alpha": 1.0}],
        },
        {
            "name": "air",
            "driver": "sine",
            "interval": 0.05,
            "unit": "°C",
            "window": {"seconds": 0.2},
        },
    ]
    document = {
        "agent": {"device_id": "pi", "data_dir": str(tmp_path / "data")},
        "sensors": sensors,
        "mqtt": {"host": "127.0.0.1", "port": port, "payload": "json", **mqtt_keys},
    }
    return parse(document, tmp_path / "agent.toml")


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.run())
    try:
        assert agent.uplink is not None
        await eventually(lambda: agent.uplink and agent.uplink.connected, lambda: "not connected")
        yield
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)


def ticks(client: Client) -> list[float]:
    return [m["value"] for m in client.on(f"{BASE}/ticks/event")]


async def test_a_set_command_changes_a_stage_replies_and_is_audited(
    tmp_path: Path, broker: Mosquitto
) -> None:
    agent = Agent(config(tmp_path, broker.port, tuning=True), sinks=[Collect()])
    ops = Client(broker.port, f"{BASE}/set/+/+/+/result", f"{BASE}/audit", f"{BASE}/ticks/event")
    try:
        async with running(agent):
            await eventually(lambda: len(ticks(ops)) >= 3, lambda: ticks(ops))
            ops.publish(f"{BASE}/set/ticks/calibrate/offset", b'{"value": 1000, "source": "ops"}')
            result_topic = f"{BASE}/set/ticks/calibrate/offset/result"
            await eventually(lambda: ops.on(result_topic), lambda: ops.messages[-3:])
            await eventually(lambda: ticks(ops)[-1] >= 1000, lambda: ticks(ops)[-3:])
    finally:
        ops.close()
    [result] = ops.on(result_topic)
    assert result["ok"] is True
    assert (result["old"], result["new"], result["source"]) == (0.0, 1000.0, "ops")
    [audit] = ops.on(f"{BASE}/audit")
    assert {k: audit[k] for k in ("sensor", "stage", "param", "old", "new", "source")} == {
        "sensor": "ticks",
        "stage": "calibrate",
        "param": "offset",
        "old": 0.0,
        "new": 1000.0,
        "source": "ops",
    }
    assert audit["ts"] > 0


async def test_bad_commands_are_refused_with_the_reason_and_change_nothing(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(config(tmp_path, broker.port, tuning=True), sinks=[Collect()])
    ops = Client(broker.port, f"{BASE}/set/+/+/+/result", f"{BASE}/audit")
    commands = [
        ("ticks/ema/alpha", b"2", False, "expected a number > 0 and ≤ 1, got 2"),
        ("ticks/ema/alpha", b'"smooth"', False, 'expected a number > 0 and ≤ 1, got "smooth"'),
        ("ticks/calibrate/points", b"[[0, 1], [1, 2]]", False, "not a tunable parameter"),
        ("soil/ema/alpha", b"0.5", False, 'no sensor "soil"'),
        ("ticks/median/size", b"3", False, 'no single stage "median"'),
        ("ticks/ema/alpha", b"0." + b"5" * 300, False, "at most 256"),
    ]
    # A command left retained on the broker reaches the agent as it subscribes, at every
    # connection: it is refused, or it would be applied again and again.
    ops.subscribed.wait(5)
    ops.publish(f"{BASE}/set/ticks/ema/alpha", b"0.5", retain=True)
    why_retained = "a retained command is not applied"
    try:
        async with running(agent):
            for where, payload, retain, _ in commands:
                ops.publish(f"{BASE}/set/{where}", payload, retain=retain)
            results = lambda: [m for t, m, _ in ops.messages if t.endswith("/result")]  # noqa: E731
            await eventually(lambda: len(results()) == len(commands) + 1, results)
    finally:
        ops.publish(f"{BASE}/set/ticks/ema/alpha", b"", retain=True)  # clears the retained one
        ops.close()
    replies = [json.loads(m) for t, m, _ in ops.messages if t.endswith("/result")]
    assert why_retained in replies[0]["error"]
    for reply, (_, _, _, why) in zip(replies[1:], commands, strict=True):
        assert reply["ok"] is False
        assert why in reply["error"]
    assert ops.on(f"{BASE}/audit") == []
    # A burst of refusals is logged once: a flood of bad commands cannot flood the log.
    assert [r.getMessage() for r in caplog.records].count("tuning_refused") == 1
    stages = [m.stage for m in agent.routes["ticks"].pipeline.meters]
    assert stages[1].alpha == 1.0  # type: ignore[attr-defined]


async def test_no_other_topic_reaches_the_agent_and_tuning_can_be_off(
    tmp_path: Path, broker: Mosquitto
) -> None:
    tuned = Agent(config(tmp_path / "a", broker.port, tuning=True), sinks=[Collect()])
    ops = Client(broker.port, "#")
    try:
        async with running(tuned):
            ops.subscribed.wait(5)
            # Another device's topic, and this device's topic with a level too many.
            ops.publish("edge/other/set/ticks/calibrate/offset", b"5")
            ops.publish(f"{BASE}/set/ticks/calibrate/offset/extra", b"5")
            await asyncio.sleep(0.3)
        off = Agent(config(tmp_path / "b", broker.port), sinks=[Collect()])
        async with running(off):
            ops.publish(f"{BASE}/set/ticks/calibrate/offset", b"5")
            await asyncio.sleep(0.3)
    finally:
        ops.close()
    assert not [t for t, _, _ in ops.messages if t.endswith(("/result", "/audit"))]
    for agent in (tuned, off):
        calibrate = agent.routes["ticks"].pipeline.meters[0].stage
        assert calibrate.offset == 0.0  # type: ignore[attr-defined]


async def test_home_assistant_discovers_each_channel_and_reads_json_states(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = config(tmp_path, broker.port, homeassistant={}, payload="msgpack")
    agent = Agent(cfg, sinks=[Collect()])
    ha = Client(broker.port, "homeassistant/#", f"{BASE}/+/state")
    air_config = "homeassistant/sensor/pi/air/config"
    try:
        async with running(agent):
            await eventually(lambda: ha.on(f"{BASE}/air/state"), lambda: ha.messages[-3:])
            await eventually(lambda: ha.on(f"{BASE}/ticks/state"), lambda: ha.messages[-3:])
            announced = len(ha.on(air_config))
            ha.publish("homeassistant/status", b"online")  # Home Assistant restarted
            await eventually(lambda: len(ha.on(air_config)) > announced, lambda: announced)
    finally:
        ha.close()
    air = ha.on(air_config)[0]
    assert air["state_topic"] == f"{BASE}/air/state"
    assert air["unit_of_measurement"] == "°C"
    assert air["value_template"] == "{{ value_json.mean }}"
    assert air["availability_topic"] == f"{BASE}/status"
    assert ha.on("homeassistant/sensor/pi/ticks/config")[0]["value_template"] == (
        "{{ value_json.value }}"
    )
    state = ha.on(f"{BASE}/air/state")[0]  # JSON, though the agent's records are msgpack
    assert set(state) >= {"start", "end", "mean"}
    retained = [r for t, _, r in ha.messages if t == air_config]
    assert retained  # every config is retained, so Home Assistant finds it after a restart
