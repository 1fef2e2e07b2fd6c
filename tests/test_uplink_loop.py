"""The uplink drives paho from the event loop: no network thread of paho's, a short way for
plain PUBACKs, and subscription handlers that cannot wedge paho's reading."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqttclient import Client
from agent.records import Aggregate
from agent.uplink import Uplink
from tests.broker import Mosquitto
from tests.helpers import eventually
from tests.test_uplink_faults import make_uplink


def aggregate(seq: int) -> Aggregate:
    return Aggregate("a", float(seq), seq + 1.0, 10, {"mean": float(seq)}, "u", seq)


async def test_a_backlog_drains_with_no_network_thread_and_a_bounded_window(
    tmp_path: Path, broker: Mosquitto
) -> None:
    uplink = make_uplink(tmp_path, broker.port, inflight=8)
    uplink.open()
    for seq in range(1, 301):
        uplink.write(aggregate(seq))
    task = asyncio.create_task(uplink.run())
    most = 0

    def drained() -> bool:
        nonlocal most
        client = uplink._client
        if client is not None:  # every QoS 1 message paho has not had a PUBACK for
            most = max(most, len(client._out_messages))
        return uplink.buffer.pending_bytes == 0

    try:
        await eventually(drained, lambda: f"acknowledged {uplink.acknowledged}")
        assert uplink.acknowledged == 300
        assert most <= 8
        names = [t.name for t in threading.enumerate()]
        assert not [n for n in names if n.startswith("paho")], names
    finally:
        uplink.stop()
        await asyncio.wait_for(uplink.close(drain_timeout=0.5), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_paho_s_own_messages_are_acknowledged_as_paho_does_refusals_included() -> None:
    """The status and health go through paho's publish(): the PUBACK handler Client overrides
    must still hand theirs to paho. Pins the paho internals Client relies on: if an upgrade
    renames them, this fails here rather than as a connection that errors at its first PUBACK."""
    client = Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    seen: list[tuple[int, bool]] = []
    client.on_publish = lambda c, u, mid, reason, props: seen.append((mid, reason.is_failure))
    for mid in (1, 2, 3):
        message = mqtt.MQTTMessage(mid, b"t")
        message.qos = 1
        client._out_messages[mid] = message
    client._inflight_messages = 3
    for packet in (b"\x00\x01", b"\x00\x02\x87", b"\x00\x09"):  # ok, refused, unknown mid
        client._in_packet["packet"] = bytearray(packet)
        assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS
    assert seen == [(1, False), (2, True)]
    assert list(client._out_messages) == [3]
    assert client._inflight_messages == 1


async def test_a_handler_that_raises_does_not_wedge_the_connection(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Handlers called inside paho's read: one that raised left paho's packet half handled;
    paho handled it again at every later read and never read another packet (no PUBACK, no
    message), so the backlog stopped for good."""
    uplink = make_uplink(tmp_path, broker.port)
    calls: list[bytes] = []

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        calls.append(payload)
        if payload == b"bad":
            raise KeyError("a handler's own bug")

    uplink.subscriptions["edge/pi/set/#"] = handler
    uplink.open()
    task = asyncio.create_task(uplink.run())
    sender = mqtt.Client(CallbackAPIVersion.VERSION2)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)  # the KeyError, logged by asyncio
    try:
        await eventually(lambda: uplink.connected, lambda: "not connected")
        await asyncio.sleep(0.2)  # the subscription in place
        sender.publish("edge/pi/set/x", b"bad", qos=1).wait_for_publish(5)
        await eventually(lambda: calls, lambda: "no message")
        sender.publish("edge/pi/set/x", b"good", qos=1).wait_for_publish(5)
        for seq in range(1, 11):
            uplink.write(aggregate(seq))
        await eventually(
            lambda: b"good" in calls and uplink.buffer.pending_bytes == 0,
            lambda: (
                f"{len(calls)} calls, the last {calls[-1:]}, acknowledged {uplink.acknowledged}"
            ),
            timeout=5,
        )
    finally:
        sender.disconnect()
        sender.loop_stop()
        uplink.stop()
        await asyncio.wait_for(uplink.close(drain_timeout=0.5), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        loop.set_exception_handler(None)


def _connected_client(protocol: int = mqtt.MQTTv311) -> tuple[Client, socket.socket]:
    """A Client on one end of a socket pair, the broker's side the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client._sock = ours
    return client, theirs


def test_acknowledgements_read_ahead_are_all_handled_though_the_socket_is_quiet() -> None:
    """One recv() reads a PUBACK and a PINGRESP; paho's loop_read stops after as many packets
    as it has messages in flight (one), so the PINGRESP waits in the read-ahead, where the
    socket will never say readable again: the uplink's reader must take it too."""
    client, broker_side = _connected_client()
    acked: list[int] = []
    client.on_publish = lambda c, u, mid, reason, props: acked.append(mid)
    message = mqtt.MQTTMessage(1, b"t")
    message.qos = 1
    client._out_messages[1] = message
    client._inflight_messages = 1
    client._ping_t = 1.0  # a PINGREQ out, waiting for its PINGRESP
    broker_side.sendall(b"\x40\x02\x00\x01" + b"\xd0\x00")  # PUBACK 1, PINGRESP
    Uplink._readable(client)
    assert acked == [1]
    assert client._ping_t == 0  # the PINGRESP was handled
    assert not client.read_ahead()
    broker_side.close()


class CountingSocket:
    """The socket paho writes to, counting its send() calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sends = sock, 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def close(self) -> None:
        self.sock.close()


def test_queued_publishes_go_out_in_one_send_in_order_partial_sends_included() -> None:
    client, broker_side = _connected_client()
    client._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    counting = CountingSocket(client._sock)
    client._sock = counting  # type: ignore[assignment]
    client.on_socket_register_write = lambda c, u, s: None  # as the uplink: it writes later
    packets = [bytes([0x32, 0x7F]) + bytes([seq % 251]) * 127 for seq in range(300)]
    for mid, packet in enumerate(packets, 1):
        client._packet_queue(0x30, packet, mid, 1)
    published = client.publish("t", b"qos 0 in the middle", qos=0)
    expected = b"".join(packets) + b"\x30\x16\x00\x01t" + b"qos 0 in the middle"
    received = b""
    while client._out_packet:
        client._packet_write()
        while len(received) < len(expected):
            try:
                received += broker_side.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
    while len(received) < len(expected):
        received += broker_side.recv(65536)
    assert received == expected
    assert counting.sends < 30  # 301 packets: partial sends of merged ones, not one each
    assert published.is_published()  # the QoS 0 one went paho's own way: marked sent
    broker_side.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
@pytest.mark.parametrize("size", [10, 200, 20_000])  # remaining lengths of 1, 2 and 3 bytes
def test_a_publish_framed_here_is_the_packet_paho_frames(protocol: int, size: int) -> None:
    properties = None
    packed = b""
    if protocol == mqtt.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.MessageExpiryInterval = 3600
        packed = properties.pack()  # type: ignore[no-untyped-call]
    frames = []
    for fast in (True, False):
        client, broker_side = _connected_client(protocol)
        client.on_socket_register_write = lambda c, u, s: None  # keep the packet queued
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        if fast:
            assert client.publish_qos1(b"edge/pi/air/agg", payload, packed) == 1
        else:
            client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
            info = client.publish("edge/pi/air/agg", payload, qos=1, properties=properties)
            assert info.mid == 1
        [queued] = client._out_packet
        frames.append(bytes(queued["packet"]))
        broker_side.close()
    assert frames[0] == frames[1]


def test_pubacks_of_publishes_framed_here_reach_on_publish_refusals_included() -> None:
    client, broker_side = _connected_client(mqtt.MQTTv5)
    client.on_socket_register_write = lambda c, u, s: None
    seen: list[tuple[int, bool]] = []
    client.on_publish = lambda c, u, mid, reason, props: seen.append((mid, reason.is_failure))
    mids = [client.publish_qos1(b"t", b"p", b"\x00") for _ in range(3)]
    assert mids == [1, 2, 3]
    for packet in (b"\x00\x01", b"\x00\x02\x87\x00", b"\x00\x03\x10", b"\x00\x09"):
        client._in_packet["packet"] = bytearray(packet)  # ok; refused; no subscribers; unknown
        assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_SUCCESS
    assert seen == [(1, False), (2, True), (3, False)]
    assert not client.awaiting
    broker_side.close()


class ScriptedBroker:
    """A broker on a thread that answers as a test's `reply(connection, type, body)` says: the
    wire as a misbehaving or slow broker makes it, which mosquitto will not."""

    def __init__(self, reply: Callable[[int, int, bytes], bytes | None]) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.publishes: list[tuple[int, bytes]] = []  # connection number, topic
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        number = 0
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                number += 1
                threading.Thread(target=self._talk, args=(conn, number), daemon=True).start()

    def _talk(self, conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError, IndexError), conn:
            stream = conn.makefile("rb")
            while header := stream.read(1):
                length, shift = 0, 0
                while (byte := stream.read(1)[0]) & 0x80:
                    length, shift = length | (byte & 0x7F) << shift, shift + 7
                body = stream.read(length | byte << shift)
                kind = header[0] & 0xF0
                if kind == 0x10:
                    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                    continue
                if kind == 0x30:
                    self.publishes.append((number, body[2 : 2 + int.from_bytes(body[:2])]))
                if kind == 0xC0:
                    conn.sendall(b"\xd0\x00")
                if (answer := self.reply(number, kind, body)) is not None:
                    conn.sendall(answer)
                    if answer.endswith(b"\xe0\x00"):  # a DISCONNECT: this connection ends
                        return

    def close(self) -> None:
        self.listener.close()


def puback(body: bytes) -> bytes:
    """The PUBACK of a QoS 1 PUBLISH's body (its topic, then its id)."""
    at = 2 + int.from_bytes(body[:2])
    return b"\x40\x02" + body[at : at + 2]


async def run_until(
    uplink: Uplink, condition: Callable[[], bool], state: Callable[[], str]
) -> None:
    task = asyncio.create_task(uplink.run())
    try:
        await eventually(condition, state)
    finally:
        uplink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_paho_s_own_messages_share_the_window(tmp_path: Path) -> None:
    """A broker that never acknowledges: the status, the records and a health message together
    stay within `inflight` unacknowledged PUBLISHes, as a broker's Receive Maximum demands."""
    broker = ScriptedBroker(lambda number, kind, body: None)
    uplink = make_uplink(tmp_path, broker.port, inflight=8)
    uplink.open()
    for seq in range(1, 101):
        uplink.write(aggregate(seq))

    def sent() -> bool:
        if uplink.connected and len(broker.publishes) >= 8:
            uplink.publish_health(b'{"h": 1}')
        return len(broker.publishes) >= 8

    await run_until(uplink, sent, lambda: f"{broker.publishes}")
    await asyncio.sleep(0.3)
    assert len(broker.publishes) == 8, broker.publishes
    broker.close()


async def test_acknowledgements_that_come_with_the_end_of_a_connection_count(
    tmp_path: Path,
) -> None:
    """Five PUBACKs and a DISCONNECT in one write: the five records are released, not sent
    again on the next connection."""
    held: list[bytes] = []

    def reply(number: int, kind: int, body: bytes) -> bytes | None:
        if kind != 0x30:
            return None
        if number > 1:
            return puback(body)
        held.append(puback(body))
        return b"".join(held) + b"\xe0\x00" if len(held) == 6 else None  # status + 5 records

    broker = ScriptedBroker(reply)
    uplink = make_uplink(tmp_path, broker.port, inflight=8)
    uplink.open()
    for seq in range(1, 6):
        uplink.write(aggregate(seq))
    await run_until(
        uplink,
        lambda: uplink.reconnects >= 1 and uplink.acknowledged == 5,
        lambda: f"acknowledged {uplink.acknowledged}, publishes {broker.publishes}",
    )
    again = [topic for number, topic in broker.publishes if number > 1 and topic.endswith(b"agg")]
    assert not again, f"sent again: {again}"
    assert uplink.buffer.pending_bytes == 0
    broker.close()


def test_a_puback_with_an_unknown_reason_code_is_a_protocol_error_not_a_crash() -> None:
    client, broker_side = _connected_client(mqtt.MQTTv5)
    client.on_socket_register_write = lambda c, u, s: None
    assert client.publish_qos1(b"t", b"p", b"\x00") == 1
    client._in_packet["packet"] = bytearray(b"\x00\x01\x05")  # 0x05 is no PUBACK reason code
    assert client._handle_pubackcomp("PUBACK") == mqtt.MQTT_ERR_PROTOCOL
    broker_side.close()
