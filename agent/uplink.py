"""The MQTT uplink: every record goes to the durable buffer first and leaves it only on PUBACK.

    write() ──> Buffer (disk) ──> sender ──publish──> broker
                    ^                                   │
                    └──────── release on PUBACK ────────┘

paho-mqtt speaks the protocol, but the event loop drives its socket (loop_read and
loop_write on add_reader/add_writer, loop_misc on a timer), so paho's callbacks and all
the uplink's state live on one thread. Not paho's own network thread: a backlog drain
profiled with it showed that thread fighting the event loop for the GIL, and one
call_soon_threadsafe (a self-pipe write and a wake-up) per PUBACK; on the loop, a burst of
PUBACKs is one read and one wake-up of the sender. Only connecting runs in a worker
thread: resolving, TCP and TLS block.

Reconnecting is ours, not paho's: exponential backoff with full jitter between
`backoff.base` and `backoff.cap`, one log line per change of state, never a busy loop.
Keepalive pings notice a dead connection even when nothing is being published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__, log, wire
from agent.buffer import Buffer
from agent.config import BufferSettings, Mqtt
from agent.mqttclient import Client
from agent.records import Aggregate, Reading
from agent.resilience import BreakerState, CircuitBreaker, jittered
from agent.security import secure

_log = log.get("agent.uplink")
_TOPIC = struct.Struct("<H")  # a buffered record is: topic length, topic, payload
STABLE = 5.0  # seconds a connection must last to count as a success for the backoff
HANG_UP = 1.0  # seconds a DISCONNECT may take to go out before the socket is just closed


class Uplink:
    def __init__(
        self,
        settings: Mqtt,
        buffer: BufferSettings,
        *,
        device: str,
        data_dir: Path,
        sensors: list[str],
    ) -> None:
        self.settings = settings
        self.device = device
        self.sensors = sensors
        self.base_topic = f"{settings.topic_prefix}/{device}"
        self.status_topic = f"{self.base_topic}/status"
        self.health_topic = f"{self.base_topic}/health"
        # Inbound topics (subscribed on every connection) and their handlers, called on the
        # event loop with (topic, payload, retained); and what to do on every connection.
        self.subscriptions: dict[str, Callable[[str, bytes, bool], None]] = {}
        self.on_connected: list[Callable[[], None]] = []
        self.buffer = Buffer(
            data_dir / "buffer", max_bytes=buffer.max_bytes, overflow=buffer.overflow
        )
        self.commit_interval = buffer.commit_interval
        self.commit_records = buffer.commit_records
        self.seqs: dict[str, int] = {}  # last aggregate sequence number per channel
        self.published = 0
        self.acknowledged = 0
        self.reconnects = 0
        self.connected = False
        self.broker = (settings.host, settings.port)  # the one connected to, or the first
        self._uncommitted = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._problems: dict[str, str] = {}  # last problem logged per broker: log each change once
        self._client: Client | None = None
        self._acks: list[int] = []  # message ids the broker acknowledged, not yet processed
        self._batch_since: float | None = None  # when a short batch began to wait
        self._refused = False  # the broker refused a publish on this connection
        # Consecutive failed rounds of connection attempts open it; probes then follow after a
        # cool-down growing from backoff.base to backoff.cap. Closed again once connected.
        # Its cool-down starts where three jittered retries left off, and grows to the cap.
        self.breaker = CircuitBreaker(
            failures=3,
            cooldown=min(settings.backoff.cap, settings.backoff.base * 8),
            max_cooldown=settings.backoff.cap,
        )
        self.addresses = settings.addresses
        self._properties: dict[str, Properties | None] = {"msgpack": None, "json": None}
        if settings.protocol == "5":
            for encoding in self._properties:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ContentType = f"application/{encoding}"
                properties.MessageExpiryInterval = settings.message_expiry
                self._properties[encoding] = properties
        # The same, as publish_qos1() puts them in a PUBLISH: nothing on 3.1.1, a length on 5.
        self._packed = {
            encoding: b"" if settings.protocol != "5" else (p.pack() if p else b"\x00")  # type: ignore[no-untyped-call]
            for encoding, p in self._properties.items()
        }

    # -- the buffer side: called by the agent ----------------------------------------------

    def open(self) -> dict[str, int]:
        """Open the buffer; returns the last sequence number of each channel, to continue from."""
        self.buffer.open()
        try:
            state = json.loads(self.buffer.meta) if self.buffer.meta else {}
        except ValueError:
            _log.warning("buffer_state_corrupt", detail="sequence numbers are rebuilt from the log")
            state = {}
        self.seqs = {str(k): int(v) for k, v in state.get("seq", {}).items()}
        # Records appended after the last commit carry newer sequence numbers than the state.
        for _, _, record in self.buffer.read(int(state.get("end", 0)), limit=1 << 62):
            fields = wire.decode(_split(record)[1])
            if fields.get("kind") == "agg":
                sensor, seq = fields["sensor"], fields["seq"]
                self.seqs[sensor] = max(self.seqs.get(sensor, 0), seq)
        if self.settings.tls is not None and self.settings.tls.insecure:
            _log.warning("tls_unverified", detail="the broker's certificate is not checked")
        return dict(self.seqs)

    def write(self, record: Reading | Aggregate) -> None:
        payload = wire.encode(record, self.device, self.settings.payload)
        kind = "agg" if isinstance(record, Aggregate) else "event"
        topic = f"{self.base_topic}/{record.sensor}/{kind}".encode()
        if isinstance(record, Aggregate):
            self.seqs[record.sensor] = record.seq
        self.buffer.append(_TOPIC.pack(len(topic)) + topic + payload)
        self._uncommitted += 1
        if self._uncommitted >= self.commit_records:
            self.commit()
        self._wake.set()

    def commit(self) -> None:
        state = {"seq": self.seqs, "end": self.buffer.end}
        self.buffer.commit(json.dumps(state).encode())
        self._uncommitted = 0

    def oldest_pending(self) -> float | None:
        """When the oldest record not yet acknowledged was made (an aggregate's end, an event's
        ts), or None if none is pending. Decoded from the record at the cursor: one small read,
        and right across restarts, which append times kept in memory would not be."""
        try:
            for _, _, record in self.buffer.read(self.buffer.cursor, limit=1):
                fields = wire.decode(_split(record)[1])
                return float(fields["end"] if fields.get("kind") == "agg" else fields["ts"])
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            pass  # a segment released meanwhile, or a record of another shape: no age, no crash
        return None

    def publish_health(self, payload: bytes) -> bool:
        """Publish a health snapshot, retained, if connected. Never buffered: it is current
        state, and the next one replaces a missed one."""
        return self.publish_now(self.health_topic, payload, retain=True)

    def publish_now(self, topic: str, payload: bytes, *, retain: bool, qos: int = 1) -> bool:
        """Publish beside the buffered records, if connected; False if not. For messages that
        are current state or answers (health, tuning results, Home Assistant), not records."""
        if self._client is None or not self.connected:
            return False
        self._client.publish(topic, payload, qos=qos, retain=retain)
        return True

    # -- the broker side --------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, send, reconnect, until `stop()`; then the agent calls `close()`."""
        committer = asyncio.create_task(self._commit_periodically())
        keeper = asyncio.create_task(self._keep_alive())
        try:
            quick_drops = 0  # connections in a row that the broker dropped right after making
            while not self._stopping:
                if not self.breaker.allow():
                    await self._sleep(self.breaker.reopen_at - time.monotonic())
                    continue
                try:
                    if await self._connect_any():
                        self.breaker.success()
                        connected_at = time.monotonic()
                        await self._send()
                        if self._stopping or time.monotonic() - connected_at > STABLE:
                            quick_drops = 0
                            continue
                        # Dropped at once, again and again: another client with our id, or a
                        # broker that takes us and then throws us out. Wait longer each time.
                        quick_drops += 1
                        where = "{}:{}".format(*self.broker)
                        self._trouble(where, f"the connection ended within {STABLE:g} s")
                        backoff = self.settings.backoff
                        await self._sleep(jittered(backoff.base, backoff.cap, quick_drops))
                        continue
                except Exception as e:  # a bug or a library surprise: log it, reconnect
                    self.connected = False
                    _log.error("uplink_error", error=f"{type(e).__name__}: {e}")
                    await self._drop_client()
                self.breaker.failure()
                if self.breaker.state is BreakerState.OPEN:
                    if self.breaker.trips == 1:
                        retry = round(self.breaker.reopen_at - time.monotonic(), 3)
                        _log.warning("uplink_breaker_open", retry_in=retry)
                    continue
                backoff = self.settings.backoff
                await self._sleep(jittered(backoff.base, backoff.cap, self.breaker.failures))
        finally:
            committer.cancel()
            keeper.cancel()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Send what is buffered (for up to `drain_timeout` s), say "offline", close the buffer."""
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    while self.buffer.pending_bytes and self.connected:
                        await asyncio.sleep(0.05)
            info = client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
            with contextlib.suppress(TimeoutError, RuntimeError, ValueError):
                async with asyncio.timeout(2.0):
                    while client.socket() is not None and not info.is_published():
                        await asyncio.sleep(0.01)
            self.connected = False  # a disconnect we asked for: not worth a warning
            await self._hang_up(client)
        self.commit()
        self.buffer.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._stopping:
                    await self._wake.wait()
                    self._wake.clear()

    async def _keep_alive(self) -> None:
        """paho's timers: a PINGREQ when the line was quiet for `keepalive` s, and the end of a
        connection whose PINGRESP did not come within as long."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.keepalive / 2))
            if self._client is not None and self.connected:  # not while connect() runs
                self._client.loop_misc()

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            try:
                self.commit()
            except OSError as e:  # a full disk, EIO: try again at the next interval
                _log.error("buffer_commit_failed", error=str(e))

    def _new_client(self) -> Client:
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edge-agent-{self.device}",
            protocol=mqtt.MQTTv5 if self.settings.protocol == "5" else mqtt.MQTTv311,
            reconnect_on_failure=False,  # our loop reconnects, with jitter
        )
        client.max_inflight_messages_set(self.settings.inflight)
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        secure(client, self.settings)
        loop = asyncio.get_running_loop()

        def disconnected(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # in connect(), in its worker thread: the broker hung up at once
                loop.call_soon_threadsafe(self._on_disconnect, reason)
            else:
                self._on_disconnect(reason)

        client.on_disconnect = disconnected
        return client

    def _attach(self, client: Client) -> bool:
        """Hand a client connected in a worker thread to the event loop: from now on paho
        runs, and calls back, only here. False if its socket is already gone."""
        loop = asyncio.get_running_loop()
        sock = client.socket()
        if sock is None:
            return False

        def closed(c: mqtt.Client, u: Any, sock: Any) -> None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)

        def written(c: mqtt.Client, u: Any, sock: Any) -> None:
            loop.remove_writer(sock)

        client.on_connect = lambda c, u, flags, rc, props: self._on_connect(rc)
        client.on_publish = lambda c, u, mid, rc, props: self._on_publish(mid, rc.is_failure)

        def received(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
            # Handlers run after paho's read, not inside it: one that raises would leave
            # paho's packet half handled, to be handled again at every read.
            loop.call_soon(self._on_message, m.topic, bytes(m.payload), m.retain)

        client.on_message = received
        client.on_socket_close = closed
        client.on_socket_register_write = lambda c, u, s: loop.add_writer(s, c.loop_write)
        client.on_socket_unregister_write = written
        loop.add_reader(sock, self._readable, client)
        if client.want_write():  # the CONNECT did not all go out in connect()
            loop.add_writer(sock, client.loop_write)
        return True

    @staticmethod
    def _readable(client: Client) -> None:
        client.loop_read()
        # Bytes may be in hand where the socket no longer says readable: read ahead by
        # Client, or decrypted and held by TLS. Take them now, or they wait for the next
        # bytes from the broker (a ping away).
        while (sock := client.socket()) is not None and (
            client.read_ahead() or (isinstance(sock, ssl.SSLSocket) and sock.pending())
        ):
            client.loop_read()

    def _status(self, state: str) -> bytes:
        status: dict[str, Any] = {"state": state, "version": __version__, "device": self.device}
        if state == "online":
            status |= {
                "sensors": self.sensors,
                "dropped": self.buffer.stats.dropped,
                "breaker": self.breaker.state.value,
                "broker": f"{self.broker[0]}:{self.broker[1]}",
            }
        return json.dumps(status).encode()

    async def _connect_any(self) -> bool:
        """Try each broker in order; True once one of them took us."""
        for host, port in self.addresses:
            if self._stopping:
                return False
            if await self._connect(host, port):
                return True
        return False

    async def _connect(self, host: str, port: int) -> bool:
        try:
            self._client = client = self._new_client()
        except (OSError, ValueError, ssl.SSLError) as e:  # a CA or password file we cannot use
            self._trouble(f"{host}:{port}", f"cannot set up the connection: {e}")
            return False
        self._connack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.to_thread(client.connect, host, port, self.settings.keepalive)
        except ssl.SSLError as e:  # reached, but the handshake failed: say so, not "cannot reach"
            self._trouble(f"{host}:{port}", f"TLS failed: {e}")
            return False
        except OSError as e:
            self._trouble(f"{host}:{port}", f"cannot reach it: {e}")
            return False
        if not self._attach(client) and not self._connack.done():
            self._connack.set_result("closed")
        try:
            async with asyncio.timeout(self.settings.keepalive):
                reason = await self._connack
        except TimeoutError:
            reason = "no answer to CONNECT"
        if reason is not None:
            if self.settings.tls is not None and reason.startswith("closed"):
                # TLS 1.3 finishes the client's side of the handshake before the broker
                # checks it; a refusal then arrives as a bare close, without the alert.
                reason += "; over TLS this is often a client certificate the broker requires"
            self._trouble(f"{host}:{port}", f"refused the connection: {reason}")
            await self._hang_up(client)
            return False
        self.connected = True
        self.broker = (host, port)
        self.reconnects += 1
        self._problems.pop(f"{host}:{port}", None)
        _log.info("connected", broker=f"{host}:{port}", backlog=self.buffer.pending_bytes)
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        for topic_filter in self.subscriptions:
            client.subscribe(topic_filter, qos=1)
        for hook in self.on_connected:
            hook()
        return True

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        for topic_filter, handler in self.subscriptions.items():
            if mqtt.topic_matches_sub(topic_filter, topic):
                handler(topic, payload, retained)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._hang_up(client)

    async def _hang_up(self, client: mqtt.Client) -> None:
        """Say DISCONNECT and close the socket; a broker that does not read it within
        HANG_UP s gets the socket closed anyway."""
        if client.socket() is not None:
            client.disconnect()  # paho closes the socket once the packet is out
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANG_UP):
                while client.socket() is not None:
                    await asyncio.sleep(0.01)
        sock = client.socket()
        if sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock)
            loop.remove_writer(sock)
            sock.close()

    def _trouble(self, broker: str, problem: str) -> None:
        if self._problems.get(broker) != problem:
            _log.warning("broker_unavailable", broker=broker, problem=problem)
            self._problems[broker] = problem

    def _on_connect(self, reason: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(None if not reason.is_failure else str(reason))

    def _on_disconnect(self, reason: Any) -> None:
        if self.connected:
            _log.warning("disconnected", reason=str(reason))
        self.connected = False
        if not self._connack.done():
            self._connack.set_result(f"closed ({reason})")
        self._wake.set()

    def _on_publish(self, mid: int, refused: bool = False) -> None:
        if refused:
            self._refused = True  # kept in the buffer; retried on the next connection
        else:
            self._acks.append(mid)
        self._wake.set()

    async def _send(self) -> None:
        """Publish while connected: live records as they come, the backlog beside them.

        Both streams go out in log order each, so a sensor's backlog arrives in order and its
        live values do not wait behind it. The buffer releases records in log order, up to the
        first one the broker has not acknowledged yet.
        """
        client = self._client
        assert client is not None
        self._acks.clear()
        self._refused = False
        replay_until = self.buffer.end  # what was waiting before this connection is a replay
        backlog, live = self.buffer.cursor, replay_until  # where each stream goes on from
        inflight: dict[int, tuple[int, int, int]] = {}  # message id -> start, end, records
        acked: dict[int, int] = {}  # start -> end of each acknowledged message, not released
        held: float | None = None  # seconds a short live batch may still wait for more records
        while self.connected:
            # The window is shared with paho's own QoS 1 messages (status, health, discovery):
            # never more than `inflight` unacknowledged, as a broker's Receive Maximum wants.
            window = self.settings.inflight - len(client._out_messages)
            room = max(0, window - len(inflight))
            messages: list[tuple[str, bytes, int, int, int]] = []
            if room:
                messages, held = self._outgoing(live, room, replay_until, None)
            if room > len(messages) and backlog < replay_until:
                older, _ = self._outgoing(backlog, room - len(messages), replay_until, replay_until)
                messages += older
            for topic, payload, start, end, records in messages:
                encoding = wire.encoding_of(payload)
                if self.settings.qos == 1:
                    mid = client.publish_qos1(topic.encode(), payload, self._packed[encoding])
                else:
                    properties = self._properties[encoding]
                    info = client.publish(topic, payload, qos=0, properties=properties)
                    mid = info.mid if info.rc == mqtt.MQTT_ERR_SUCCESS else None
                if mid is None:
                    # paho saw the connection go before its callback reached us: stop
                    # here, or this loop would retry without ever yielding to that callback.
                    self.connected = False
                    break
                inflight[mid] = (start, end, records)
                if start < replay_until:
                    backlog = end
                else:
                    live = end
                self.published += records
            self._wake.clear()
            self._settle(inflight, acked)
            if self._stopping and not self.buffer.pending_bytes:
                return
            if self._refused:
                _log.error("publish_refused", detail="the broker refused a record; kept, retried")
                self.connected = False
                client.disconnect()
            if not self.connected:
                break
            # `messages` too: unreadable bytes at the end of the log must not make this spin.
            # `not room`: a full window kept this round from sending, and the acks just taken
            # in may have emptied it; waiting now would wait for acks that will never come.
            more = (bool(messages) or not room) and len(inflight) < window
            if more or self._acks:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(held):  # None: until woken
                    await self._wake.wait()
        # PUBACKs read together with the end of the connection count: not sent again.
        self._settle(inflight, acked)
        await self._hang_up(client)

    def _settle(self, inflight: dict[int, tuple[int, int, int]], acked: dict[int, int]) -> None:
        """Take in the PUBACKs that came, and release what they let go of."""
        for mid in self._acks:
            if (entry := inflight.pop(mid, None)) is not None:
                acked[entry[0]] = entry[1]
                self.acknowledged += entry[2]
        self._acks.clear()
        self._release(acked)

    def _release(self, acked: dict[int, int]) -> None:
        cursor = self.buffer.cursor
        for start in [s for s in acked if s < cursor]:  # dropped by drop_oldest meanwhile
            del acked[start]
        position = cursor
        while position in acked:
            position = acked.pop(position)
        if position != cursor:
            self.buffer.release(position)
            if self.buffer.cursor in acked:  # the release skipped a gap between two segments
                self._release(acked)

    def _outgoing(
        self, position: int, room: int, replay_until: int, stop: int | None
    ) -> tuple[list[tuple[str, bytes, int, int, int]], float | None]:
        """Up to `room` messages from `position` on (and before `stop`), as
        (topic, payload, start, end, records).

        With batching, a message carries `batch` records; a shorter live batch is held back
        for up to `batch_wait` seconds; the time it may still wait comes back beside them.
        """
        size = self.settings.batch
        records = [
            r for r in self.buffer.read(position, room * size) if stop is None or r[0] < stop
        ]
        messages: list[tuple[str, bytes, int, int, int]] = []
        for i in range(0, len(records), size):
            group = records[i : i + size]
            if len(group) < size and stop is None and not self._stopping:
                now = time.monotonic()
                if self._batch_since is None:
                    self._batch_since = now
                left = self._batch_since + self.settings.batch_wait - now
                if left > 0:
                    return messages, left
            if stop is None:
                self._batch_since = None
            parts = []
            for start, _, record in group:
                topic, payload = _split(record)
                parts.append(wire.mark_replay(payload) if start < replay_until else payload)
            if size > 1:  # one encoding per batch, even if the setting changed with a backlog
                parts = [wire.convert(part, self.settings.payload) for part in parts]
                topic, payload = f"{self.base_topic}/batch", wire.join(parts)
            else:
                payload = parts[0]
            messages.append((topic, payload, group[0][0], group[-1][1], len(group)))
        return messages, None


def _split(record: bytes) -> tuple[str, bytes]:
    (length,) = _TOPIC.unpack_from(record)
    end = _TOPIC.size + length
    return record[_TOPIC.size : end].decode(), record[end:]
