"""The uplink's options against a real mosquitto: MQTT 5, QoS 0, JSON payloads, failing over
to a second broker, the last will, `edge-agent tail`, and a dead connection noticed by the
keepalive alone (through a relay of our own that can turn into a black hole)."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from tests.broker import Mosquitto, free_port

FIELDS = {
    "v",
    "kind",
    "device",
    "sensor",
    "seq",
    "start",
    "end",
    "count",
    "stats",
    "unit",
    "partial",
    "replay",
}
STATUS = "edge/pi/status"


def write_config(
    tmp_path: Path, port: int | None, mqtt_extra: str = "", *, window: float = 0.5
) -> Path:
    """A counter sensor every 0.05 s; an [mqtt] table on `port` unless it is None."""
    config = tmp_path / "agent.toml"
    mqtt_table = (
        f"""
[mqtt]
host = "127.0.0.1"
port = {port}
backoff = {{ base = 0.1, cap = 0.5 }}
{mqtt_extra}
[buffer]
commit_interval = 0.1
"""
        if port is not None
        else ""
    )
    config.write_text(
        f"""
[agent]
device_id = "pi"
data_dir = "{tmp_path}/data"

[[sensors]]
name = "ticks"
driver = "counter"
interval = 0.05
window = {{ seconds = {window}, stats = ["count", "sum", "first", "last"], grace = 0.1 }}
{mqtt_table}"""
    )
    return config


class Agent:
    """`edge-agent run` in a subprocess, its JSON logs going to a file read as it grows."""

    def __init__(self, config: Path) -> None:
        self.log_path = config.with_suffix(".log")
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(config)], stdout=log, stderr=log
            )

    @property
    def text(self) -> str:
        return self.log_path.read_text()

    def events(self, name: str) -> list[dict[str, Any]]:
        entries = (json.loads(line) for line in self.text.splitlines() if line.startswith("{"))
        return [e for e in entries if e.get("event") == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """The `count`-th `name` event, once it is logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.events(name)) >= count:
                return found[count - 1]
            assert self.process.poll() is None, f"the agent exited early:\n{self.text}"
            time.sleep(0.02)
        raise AssertionError(f"no {name} #{count} logged in {timeout} s:\n{self.text}")

    def stop(self) -> str:
        """SIGTERM, a clean exit, and the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        assert self.process.returncode == 0, self.text
        return self.text

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any


class Watcher:
    """A subscriber that keeps every message as it came: topic, raw payload, flags, properties."""

    def __init__(self, port: int, topic: str, *, v5: bool = False) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert subscribed.wait(5), "the test's subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        entry = Message(
            message.topic, bytes(message.payload), bool(message.retain), message.properties
        )
        with self.lock:
            self.messages.append(entry)

    def got(self) -> list[Message]:
        with self.lock:
            return list(self.messages)

    def wait_for(
        self, check: Callable[[list[Message]], bool], timeout: float = 10.0, what: str = ""
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(got := self.got()):
                return got
            time.sleep(0.02)
        raise AssertionError(f"{what or 'the messages expected'} did not arrive: {self.got()}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def states(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == STATUS]


def retained_status(port: int) -> dict[str, Any]:
    """The status the broker keeps for the device, as a newcomer receives it."""
    watcher = Watcher(port, STATUS)
    try:
        [message] = watcher.wait_for(lambda got: len(got) >= 1, 5, "a retained status")
    finally:
        watcher.close()
    assert message.retain
    status: dict[str, Any] = json.loads(message.payload)
    return status


def counters(logs: str) -> dict[str, Any]:
    return next(json.loads(line) for line in logs.splitlines() if '"uplink_counters"' in line)


def check_aggregates(records: list[dict[str, Any]]) -> None:
    assert records
    for record in records:
        assert set(record) == FIELDS, record
        assert record["v"] == 1, record
        assert record["kind"] == "agg", record
        assert record["device"] == "pi", record
        assert record["sensor"] == "ticks", record
        assert record["replay"] is False, record
    seqs = sorted({r["seq"] for r in records})
    assert seqs == list(range(1, len(seqs) + 1)), seqs


# -- protocol, QoS, encoding ------------------------------------------------------------------


def test_mqtt5_publishes_carry_a_content_type_and_an_expiry(
    tmp_path: Path, broker: Mosquitto
) -> None:
    watcher = Watcher(broker.port, "edge/pi/+/agg", v5=True)
    agent = Agent(write_config(tmp_path, broker.port, 'protocol = "5"\nmessage_expiry = 600\n'))
    try:
        got = watcher.wait_for(lambda got: len(got) >= 3, what="3 aggregates")
    finally:
        agent.stop()
        watcher.close()
    check_aggregates([wire.decode(m.payload) for m in got])
    for message in got:
        properties = message.properties
        assert properties is not None
        assert getattr(properties, "ContentType", None) == "application/msgpack", properties
        expiry = getattr(properties, "MessageExpiryInterval", None)
        assert expiry is not None, properties
        assert 0 < expiry <= 600, properties


def test_qos_0_is_acknowledged_as_sent(tmp_path: Path, broker: Mosquitto) -> None:
    watcher = Watcher(broker.port, "edge/pi/+/agg")
    agent = Agent(write_config(tmp_path, broker.port, "qos = 0\n"))
    try:
        watcher.wait_for(lambda got: len(got) >= 3, what="3 aggregates")
    finally:
        logs = agent.stop()
    time.sleep(0.2)
    watcher.close()
    check_aggregates([wire.decode(m.payload) for m in watcher.got()])
    uplink = counters(logs)
    assert uplink["published"] >= 3, uplink
    assert uplink["acknowledged"] == uplink["published"], uplink
    assert uplink["buffer_pending_bytes"] == 0, uplink


def test_json_payloads_have_the_same_fields(tmp_path: Path, broker: Mosquitto) -> None:
    watcher = Watcher(broker.port, "edge/pi/+/agg")
    agent = Agent(write_config(tmp_path, broker.port, 'payload = "json"\n'))
    try:
        got = watcher.wait_for(lambda got: len(got) >= 3, what="3 aggregates")
    finally:
        agent.stop()
        watcher.close()
    records = [json.loads(m.payload) for m in got]  # msgpack would not parse as JSON
    assert all(isinstance(r, dict) for r in records)
    check_aggregates(records)
    for record in records:
        assert record["end"] > record["start"], record
        assert set(record["stats"]) == {"count", "sum", "first", "last"}, record
        assert record["count"] == record["stats"]["count"], record
        assert record["partial"] or record["count"] == 10, record  # a full window: 10 ticks


# -- failover and the status topic ------------------------------------------------------------


def test_a_dead_first_broker_fails_over_to_the_next(tmp_path: Path, broker: Mosquitto) -> None:
    dead = free_port()  # nothing listens there
    real = f"127.0.0.1:{broker.port}"
    watcher = Watcher(broker.port, "edge/pi/#")
    agent = Agent(write_config(tmp_path, dead, f'brokers = ["{real}"]\n'))
    try:
        got = watcher.wait_for(
            lambda got: len([m for m in got if m.topic.endswith("/agg")]) >= 2, what="aggregates"
        )
        connected = agent.wait_for("connected")
        status = retained_status(broker.port)  # as a newcomer sees it
    finally:
        logs = agent.stop()
        watcher.close()
    check_aggregates([wire.decode(m.payload) for m in got if m.topic.endswith("/agg")])
    assert connected["broker"] == real
    unavailable = agent.events("broker_unavailable")
    assert len(unavailable) == 1, logs
    assert f"127.0.0.1:{dead}" in json.dumps(unavailable[0]), unavailable  # names the dead one
    assert len(agent.events("connected")) == 1, logs
    online = [s for s in states(got) if s["state"] == "online"]
    assert online, states(got)
    assert online[0]["broker"] == real, online
    assert online[0]["device"] == "pi", online
    assert online[0]["sensors"] == ["ticks"], online
    assert status["state"] == "online", status
    assert status["broker"] == real, status


def test_the_last_will_says_offline_after_a_kill_and_so_does_a_clean_stop(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = write_config(tmp_path, broker.port)
    watcher = Watcher(broker.port, STATUS)
    agent = Agent(config)
    try:
        watcher.wait_for(lambda got: [s["state"] for s in states(got)] == ["online"], what="online")
        agent.kill()  # SIGKILL: the socket closes without a DISCONNECT
        watcher.wait_for(
            lambda got: [s["state"] for s in states(got)] == ["online", "offline"],
            timeout=5,
            what="the last will",
        )
    finally:
        agent.kill()
        watcher.close()
    will = retained_status(broker.port)
    assert will["state"] == "offline", will
    assert will["device"] == "pi", will

    watcher = Watcher(broker.port, STATUS)  # the retained "offline" first, then "online"
    again = Agent(config)
    try:
        watcher.wait_for(
            lambda got: [s["state"] for s in states(got)] == ["offline", "online"], what="online"
        )
    finally:
        again.stop()
    watcher.wait_for(
        lambda got: [s["state"] for s in states(got)][-1:] == ["offline"], 5, "offline"
    )
    watcher.close()
    status = retained_status(broker.port)
    assert status["state"] == "offline", status
    assert status["device"] == "pi", status


# -- edge-agent tail --------------------------------------------------------------------------


def run_tail(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "tail", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_tail_prints_what_arrives_and_fails_on_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path, broker.port)
    (tmp_path / "bare").mkdir()
    bare = write_config(tmp_path / "bare", None)  # no [mqtt]: --broker says where
    agent = Agent(config)
    try:
        agent.wait_for("connected")
        three = run_tail(config, "--count", "3", "--json", "--timeout", "15")
        other = run_tail(config, "--sensor", "other", "--count", "1", "--timeout", "2")
        address = f"127.0.0.1:{broker.port}"
        flagged = run_tail(bare, "--broker", address, "--count", "1", "--json", "--timeout", "15")
        out, err = three.communicate(timeout=30)
        other_out, other_err = other.communicate(timeout=30)
        flagged_out, flagged_err = flagged.communicate(timeout=30)
    finally:
        agent.stop()
    assert three.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3, out
    records = [json.loads(line) for line in lines]
    assert all(set(r) == FIELDS for r in records), records
    assert all(r["kind"] == "agg" and r["device"] == "pi" for r in records), records
    assert all(r["sensor"] == "ticks" for r in records), records
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + 3)), seqs
    assert other.returncode == 1, other_err
    assert other_out == ""
    assert flagged.returncode == 0, flagged_err
    [line] = flagged_out.splitlines()
    assert json.loads(line)["sensor"] == "ticks", line


def test_tail_without_an_mqtt_table_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "tail", "-c", str(config), "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "mqtt" in result.stderr, result.stderr
    assert str(config) in result.stderr, result.stderr


# -- a dead connection noticed by the keepalive -----------------------------------------------


class Relay:
    """A TCP relay to the broker. `black_hole()` makes it swallow every byte, both ways, on
    the connections it has and on new ones, without closing a socket; `restore()` lets new
    connections through again (the swallowed ones stay dead: their streams are broken)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.passing = True
        self.lock = threading.Lock()
        self.connections: list[dict[str, Any]] = []  # {"sockets": [...], "dead": bool}
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                downstream.close()
                continue
            with self.lock:
                connection = {"sockets": [downstream, upstream], "dead": not self.passing}
                self.connections.append(connection)
                self.accepted += 1
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(
                    target=self._pump, args=(source, sink, connection), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, connection: dict[str, Any]) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                if not connection["dead"]:  # a black hole hides even a close
                    for s in connection["sockets"]:
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                return
            if connection["dead"]:
                continue  # swallowed
            try:
                sink.sendall(data)
            except OSError:
                return

    def black_hole(self) -> None:
        with self.lock:
            self.passing = False
            for connection in self.connections:
                connection["dead"] = True

    def restore(self) -> None:
        with self.lock:
            self.passing = True

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for connection in self.connections:
                for s in connection["sockets"]:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()


def test_the_keepalive_notices_a_silent_dead_connection(tmp_path: Path, broker: Mosquitto) -> None:
    relay = Relay(broker.port)
    # A 30 s window: nothing is published while the connection dies, only pings could tell.
    agent = Agent(write_config(tmp_path, relay.port, "keepalive = 1\n", window=30))
    try:
        agent.wait_for("connected")
        time.sleep(0.3)  # the "online" status and its PUBACK through
        cut = time.time()
        relay.black_hole()
        disconnected = agent.wait_for("disconnected", timeout=6)
        noticed = disconnected["ts"] - cut
        assert noticed < 4.0, f"the dead connection was noticed after {noticed:.2f} s"
        assert len(agent.events("connected")) == 1, agent.text
        time.sleep(1.5)  # attempts meanwhile go into the black hole: no CONNACK
        relay.restore()
        agent.wait_for("connected", count=2, timeout=8)
    finally:
        logs = agent.stop()
        relay.close()
    assert not agent.events("uplink_error"), logs
    assert relay.accepted >= 2
