"""The MQTT uplink against a real mosquitto: delivery, broker outages, agent crashes."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from tests.broker import Mosquitto
from tests.helpers import eventually

if TYPE_CHECKING:
    from agent.uplink import Uplink


class Subscriber:
    """A consumer as users write them: a persistent session, QoS 1, payloads decoded by wire."""

    def __init__(self, port: int, topic: str = "edge/#") -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith("/status"):
            return
        with self.lock:
            self.messages.append((message.topic, wire.decode(message.payload)))

    def aggregates(self, sensor: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for t, m in self.messages if m["kind"] == "agg" and m["sensor"] == sensor]

    def wait_for(self, sensor: str, seq: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.aggregates(sensor)
            if any(m["seq"] >= seq for m in got):
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"no aggregate #{seq} of {sensor} in {timeout} s: {self.aggregates(sensor)}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp_path: Path, port: int, **buffer: Any) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in buffer.items())
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
device_id = "pi"
data_dir = "{tmp_path}/data"

[[sensors]]
name = "ticks"
driver = "counter"
interval = 0.05
window = {{ seconds = 0.5, stats = ["count", "sum", "first", "last"], grace = 0.1 }}

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
backoff = {{ base = 0.1, cap = 0.5 }}

[buffer]
commit_interval = 0.1
{extra}"""
    )
    return config


def start_agent(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_agent(agent: subprocess.Popen[str]) -> str:
    agent.send_signal(signal.SIGTERM)
    _, logs = agent.communicate(timeout=20)
    assert agent.returncode == 0, logs
    return logs


def uplink_state(uplink: Uplink) -> str:
    """What a test waiting on an uplink reports when what it waits for never comes."""
    return (
        f"connected {uplink.connected}, published {uplink.published}, acknowledged "
        f"{uplink.acknowledged}, pending {uplink.buffer.pending_records} records "
        f"({uplink.buffer.pending_bytes} bytes), reconnects {uplink.reconnects}"
    )


def check_contiguous(aggregates: list[dict[str, Any]]) -> None:
    """One aggregate per sequence number (duplicates allowed), counter values without a gap."""
    unique = {(a["device"], a["sensor"], a["seq"], a["start"]): a for a in aggregates}
    by_seq = sorted(unique.values(), key=lambda a: a["seq"])
    assert [a["seq"] for a in by_seq] == list(range(1, len(by_seq) + 1))
    for before, after in itertools.pairwise(by_seq):
        assert after["stats"]["first"] == before["stats"]["last"] + 1  # no reading lost between
    for a in by_seq:
        if not a["partial"]:
            assert a["count"] == 10
        n, first = a["count"], a["stats"]["first"]
        assert a["stats"]["sum"] == sum(range(int(first), int(first) + n))


def test_aggregates_arrive_exact_and_decodable(tmp_path: Path, broker: Mosquitto) -> None:
    subscriber = Subscriber(broker.port)
    agent = start_agent(write_config(tmp_path, broker.port))
    try:
        got = subscriber.wait_for("ticks", 5)
    finally:
        logs = stop_agent(agent)
    time.sleep(0.3)
    got = subscriber.aggregates("ticks")
    subscriber.close()
    check_contiguous(got)
    assert all(a["v"] == 1 and a["device"] == "pi" and a["replay"] is False for a in got), got
    assert got[-1]["partial"]  # the window open at SIGTERM was flushed and sent
    assert '"event": "connected"' in logs


def test_a_broker_outage_loses_no_window(tmp_path: Path, broker: Mosquitto) -> None:
    subscriber = Subscriber(broker.port)
    agent = start_agent(write_config(tmp_path, broker.port))
    try:
        subscriber.wait_for("ticks", 3)
        broker.stop()
        time.sleep(3.0)  # six windows close while the broker is away
        broker.start()
        before = max(a["seq"] for a in subscriber.aggregates("ticks"))
        subscriber.wait_for("ticks", before + 8)
    finally:
        logs = stop_agent(agent)
    time.sleep(0.3)
    got = subscriber.aggregates("ticks")
    subscriber.close()
    check_contiguous(got)
    assert any(a["replay"] for a in got)  # the backlog is marked as replayed
    assert '"event": "disconnected"' in logs
    assert logs.count('"event": "connected"') >= 2


def test_a_killed_agent_resends_what_it_had_committed(tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path, broker.port)
    broker.stop()  # everything the first agent makes stays in its buffer
    agent = start_agent(config)
    time.sleep(3.0)
    agent.kill()  # SIGKILL: no flush, no goodbye
    agent.wait(5)
    broker.start()
    subscriber = Subscriber(broker.port)
    again = start_agent(config)
    try:
        got = subscriber.wait_for("ticks", 8)  # the first run closed at least 5 windows
        time.sleep(1.0)
    finally:
        stop_agent(again)
    time.sleep(0.3)
    got = subscriber.aggregates("ticks")
    subscriber.close()
    seqs = sorted({a["seq"] for a in got})
    assert seqs == list(range(1, len(seqs) + 1))  # sequence numbers go on across the restart
    first_run = [a for a in got if a["replay"]]
    assert len({a["seq"] for a in first_run}) >= 4


def event_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "events.toml"
    config.write_text(
        f"""
[agent]
device_id = "pi"
data_dir = "{tmp_path}/data"

[[sensors]]
name = "pulses"
driver = "counter"
interval = 0.002

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
backoff = {{ base = 0.1, cap = 0.3 }}

[buffer]
max_bytes = 65536
commit_interval = 0.1
"""
    )
    return config


def counters(logs: str, event: str) -> dict[str, Any]:
    return next(json.loads(line) for line in logs.splitlines() if f'"event": "{event}"' in line)


def test_a_full_buffer_drops_the_oldest_counts_exactly_and_drains(
    tmp_path: Path, broker: Mosquitto
) -> None:
    subscriber = Subscriber(broker.port)
    agent = start_agent(event_config(tmp_path, broker.port))
    time.sleep(1.0)
    broker.stop()
    time.sleep(2.5)  # ~1,250 events into a buffer that holds ~500
    broker.start()
    time.sleep(2.0)
    status = retained_status(broker.port)  # published on reconnecting, with the drop count
    logs = stop_agent(agent)
    time.sleep(0.5)
    subscriber.close()
    with subscriber.lock:
        values = {m["value"] for _, m in subscriber.messages if m["kind"] == "event"}
    made = counters(logs, "sensor_counters")["readings"]
    assert status["state"] == "online"
    assert status["dropped"] > 100
    uplink = counters(logs, "uplink_counters")
    assert uplink["buffer_dropped"] > 100
    assert uplink["buffer_pending_bytes"] == 0  # drained once the broker was back
    # Every event was delivered or counted as dropped. A record can be both: sent just before
    # the outage, its PUBACK lost, then dropped unacknowledged (at most one in-flight window).
    lost = made - len(values)
    assert lost <= uplink["buffer_dropped"] <= lost + 64
    assert max(values) == made - 1  # the newest were kept
    # Drop-oldest: what was lost is old. Not always one block: while the backlog drains
    # slower than new records come, the buffer may still be full and drop its next oldest
    # segment, of which one in-flight window had already gone out.
    missing = set(range(made)) - {int(v) for v in values}
    assert max(missing) < made - 100  # the buffer holds ~500: the newest 100 always survive


def retained_status(port: int) -> dict[str, Any]:
    got: list[dict[str, Any]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/pi/status", qos=1)
    client.on_message = lambda c, u, message: got.append(json.loads(message.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    client.loop_stop()
    assert got, "no retained status"
    return got[0]


def test_a_corrupt_buffer_costs_only_its_bad_records(tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path, broker.port)
    broker.stop()
    agent = start_agent(config)
    time.sleep(3.0)
    stop_agent(agent)  # 6 windows or so wait in the buffer
    [segment] = (tmp_path / "data" / "buffer").glob("*.log")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle record
    segment.write_bytes(bytes(data[:-5]))  # and a torn tail
    broker.start()
    subscriber = Subscriber(broker.port)
    again = start_agent(config)
    try:
        time.sleep(2.5)
    finally:
        logs = stop_agent(again)
    subscriber.close()
    seqs = {a["seq"] for a in subscriber.aggregates("ticks") if a["replay"]}
    assert '"event": "buffer_corrupt"' in logs
    expected = set(range(1, max(seqs) + 2))  # the torn last record included
    assert len(expected - seqs) <= 2  # the record hit, and the torn last one
    assert len(seqs) >= 4


async def test_a_publish_refused_by_a_dying_connection_does_not_freeze_the_loop(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Regression: when paho refused a publish before its disconnect callback reached the
    event loop, the sender retried at once, forever, and the agent hung (SIGTERM too)."""
    from agent.config import parse
    from agent.records import Reading
    from agent.uplink import Uplink

    config = parse(
        {
            "agent": {"device_id": "pi", "data_dir": str(tmp_path / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "backoff": {"base": 0.05}},
        },
        tmp_path / "t.toml",
    )
    assert config.mqtt is not None
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path / "data", sensors=[])
    uplink.open()
    task = asyncio.create_task(uplink.run())
    await eventually(lambda: uplink.connected, lambda: uplink_state(uplink))
    client = uplink._client
    assert client is not None
    refused = mqtt.MQTTMessageInfo(0)
    refused.rc = mqtt.MQTT_ERR_NO_CONN
    client.publish = lambda *args, **kwargs: refused  # type: ignore[method-assign]
    uplink.write(Reading("x", 1.0, 1.0))
    ticks = 0
    for _ in range(20):  # the loop must keep turning
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20
    uplink.stop()
    await asyncio.wait_for(uplink.close(drain_timeout=0.5), 5)
    task.cancel()


def test_two_agents_with_one_device_id_do_not_fight_in_a_tight_loop(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Regression: the broker drops one client when another takes its id; both reconnected at
    once, about 40 times a second, because a connection that worked reset the backoff."""
    agents = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        agents.append(start_agent(write_config(tmp_path / name, broker.port)))
    time.sleep(4.0)
    connections = [stop_agent(agent).count('"event": "connected"') for agent in agents]
    assert all(n < 30 for n in connections), connections


def test_batches_carry_several_records_and_lose_none(tmp_path: Path, broker: Mosquitto) -> None:
    config = event_config(tmp_path, broker.port)
    config.write_text(
        config.read_text().replace("[buffer]", "batch = 20\nbatch_wait = 0.2\n\n[buffer]")
    )
    batches: list[list[dict[str, Any]]] = []
    lock = threading.Lock()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/pi/batch", qos=1)

    def on_message(c: Any, u: Any, message: Any) -> None:
        with lock:
            batches.append(wire.split(message.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    time.sleep(0.3)
    agent = start_agent(config)
    time.sleep(2.0)
    logs = stop_agent(agent)
    time.sleep(0.3)
    client.loop_stop()
    made = counters(logs, "sensor_counters")["readings"]
    with lock:
        items = [item for batch in batches for item in batch]
    assert all(1 <= len(batch) <= 20 for batch in batches)
    assert sum(len(batch) == 20 for batch in batches) >= len(batches) - 2  # full but the last
    assert sorted(item["value"] for item in items) == [float(n) for n in range(made)]
    assert all(item["kind"] == "event" and item["device"] == "pi" for item in items)
    uplink = counters(logs, "uplink_counters")  # records, not messages
    assert uplink["published"] == uplink["acknowledged"] == made


async def test_live_records_do_not_wait_behind_a_backlog(tmp_path: Path, broker: Mosquitto) -> None:
    from agent.config import parse
    from agent.records import Aggregate
    from agent.uplink import Uplink

    config = parse(
        {
            "agent": {"device_id": "pi", "data_dir": str(tmp_path / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "inflight": 16},
        },
        tmp_path / "t.toml",
    )
    assert config.mqtt is not None
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path / "data", sensors=[])
    uplink.open()
    stats = {"mean": 1.0}
    for seq in range(1, 5001):  # a backlog, written while no broker was reachable
        uplink.write(Aggregate("old", seq * 60.0, seq * 60.0 + 60, 1, stats, "", seq))
    subscriber = Subscriber(broker.port)
    time.sleep(0.3)
    task = asyncio.create_task(uplink.run())
    for seq in range(1, 21):  # live windows closing while the backlog drains
        uplink.write(Aggregate("new", seq * 1.0, seq + 1.0, 1, stats, "", seq))
        await asyncio.sleep(0.005)
    # 5,020 records take 2-3 s; a stalled sender fails here instead of hanging the run.
    await eventually(lambda: not uplink.buffer.pending_bytes, lambda: uplink_state(uplink), 30)
    uplink.stop()
    await asyncio.wait_for(uplink.close(), 15)
    task.cancel()
    await asyncio.sleep(0.3)
    subscriber.close()
    with subscriber.lock:
        arrivals = [(m["sensor"], m["seq"], m["replay"]) for _, m in subscriber.messages]
    old = [seq for sensor, seq, _ in arrivals if sensor == "old"]
    assert sorted(set(old)) == list(range(1, 5001))  # all of the backlog
    assert old == sorted(old)  # in order
    assert all(replay for sensor, _, replay in arrivals if sensor == "old")
    first_live = next(i for i, a in enumerate(arrivals) if a[0] == "new")
    last_old = max(i for i, a in enumerate(arrivals) if a[0] == "old")
    assert first_live < last_old  # the live window did not wait for the whole backlog


def test_a_killed_agent_loses_nothing_it_appended_and_duplicates_carry_their_keys(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """SIGKILL while publishing: what was appended arrives after the restart, and what the
    broker took after the last commit comes again, recognisable by its key."""
    from agent.buffer import Buffer
    from agent.uplink import _split

    config = event_config(tmp_path, broker.port)
    config.write_text(config.read_text().replace("commit_interval = 0.1", "commit_interval = 1.0"))
    subscriber = Subscriber(broker.port)
    agent = start_agent(config)
    time.sleep(2.0)
    agent.kill()  # SIGKILL: no flush, no commit, no goodbye
    agent.wait(5)
    time.sleep(0.5)
    with subscriber.lock:
        before = {(m["sensor"], m["ts"]) for _, m in subscriber.messages if m["kind"] == "event"}
    with Buffer(tmp_path / "data" / "buffer") as buffer:  # what the dead agent left, unacknowledged
        left = {
            (m["sensor"], m["ts"])
            for _, _, record in buffer.read(0, limit=1_000_000)
            for m in wire.split(_split(record)[1])
        }
    appended = before | left
    again = start_agent(config)
    time.sleep(1.5)
    stop_agent(again)
    time.sleep(0.3)
    subscriber.close()
    with subscriber.lock:
        events = [m for _, m in subscriber.messages if m["kind"] == "event"]
    keys = [(m["sensor"], m["ts"]) for m in events]
    assert appended <= set(keys)  # nothing appended before the kill was lost
    assert len(appended) > 500
    duplicates = {k for k, n in Counter(keys).items() if n > 1}
    assert duplicates  # acknowledged after the last commit: sent again
    for key in duplicates:  # ...and the same record each time, but for the replay flag
        copies = [{**m, "replay": None} for m in events if (m["sensor"], m["ts"]) == key]
        assert all(copy == copies[0] for copy in copies)
