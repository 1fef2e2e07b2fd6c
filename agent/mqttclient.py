"""The uplink's MQTT client: paho-mqtt's, with the per-message costs of a backlog drain taken
out (see Client)."""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBLISH
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class Client(mqtt.Client):
    """paho's client, less three costs it puts on every message, the largest of a backlog
    drain once paho's thread is gone (bench/drain.py under cProfile). Each override is of a
    private paho method: tests/test_uplink_loop.py pins them, so an upgrade that changes them
    fails there, not on a board.

    - paho's publish() builds an MQTTMessage and an MQTTMessageInfo (with a threading
      Condition) and checks the topic, for every message, then settles both at the PUBACK,
      building a ReasonCode and a Properties object: about half of a drain. The uplink's QoS 1
      records go through publish_qos1() instead, which frames the PUBLISH here (a few lines of
      the MQTT spec) and hands the PUBACK straight to on_publish. The uplink keeps the window
      and resends from the buffer on the next connection, which is all paho's bookkeeping of
      these messages was for; they count in paho's in-flight messages, so paho's own (status,
      health) share the window.
    - paho reads a packet in three recv() calls (its first byte, its length, the rest): a
      system call each, for a 4-byte PUBACK. It gets them from what one recv() read ahead.
    - paho sends each queued packet with a send() of its own: a window-full of PUBLISHes
      goes out in one.
    """

    _SUCCESS = ReasonCode(PacketTypes.PUBACK)
    _NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    READ_AHEAD = 1 << 16

    _read: bytes = b""  # read ahead from the socket, not yet handed to paho
    _read_at = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.awaiting: set[int] = set()  # ids of publish_qos1() messages without a PUBACK yet

    def publish_qos1(self, topic: bytes, payload: bytes, properties: bytes) -> int | None:
        """Queue a QoS 1 PUBLISH of `payload` on `topic` (`properties`: b"" on MQTT 3.1.1,
        the packed properties on 5); its message id, or None if the connection is gone."""
        if self._sock is None:
            return None
        mid = self._mid_generate()
        body = _U16.pack(len(topic)) + topic + _U16.pack(mid) + properties + payload
        self._packet_queue(PUBLISH | 2, b"\x32" + _length(len(body)) + body, mid, 1)
        self.awaiting.add(mid)
        self._inflight_messages += 1  # counted with paho's own: they share the window
        return mid

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_at >= len(self._read):
            self._read, self._read_at = super()._sock_recv(self.READ_AHEAD), 0
        start, self._read_at = self._read_at, self._read_at + bufsize
        return self._read[start : self._read_at]

    def _packet_write(self) -> MQTTErrorCode:
        # A backlog queues PUBLISHes by the window-full: one send() for all of them, not one
        # each. Only QoS 1 and 2 ones that have not started: paho does nothing after sending
        # those (their state waits in _out_messages for the PUBACK), so one packet may stand
        # for them all, partial sends included.
        queue, merged = self._out_packet, []
        while (
            queue
            and queue[0]["command"] & 0xF0 == PUBLISH
            and queue[0]["qos"]
            and not queue[0]["pos"]
        ):
            merged.append(queue.popleft())
        if len(merged) > 1:
            data = b"".join(packet["packet"] for packet in merged)
            queue.appendleft({**merged[-1], "to_process": len(data), "packet": data, "info": None})
        else:
            queue.extendleft(merged)
        return super()._packet_write()

    def read_ahead(self) -> bool:
        """Whether bytes read ahead wait for paho: the socket will not say so."""
        return self._read_at < len(self._read)

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        mid = packet[0] << 8 | packet[1] if len(packet) >= 2 else -1
        if cmd == "PUBACK" and mid in self.awaiting:
            # MQTT 5 may add a reason code (0x80 and above: not delivered) and properties.
            reason = self._SUCCESS
            if len(packet) > 2:
                try:
                    reason = ReasonCode(PacketTypes.PUBACK, identifier=packet[2])
                except KeyError:  # no PUBACK reason code: a broken broker; paho reconnects
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            self.awaiting.discard(mid)
            self._inflight_messages -= 1
            on_publish: Any = self.on_publish  # the VERSION2 signature: the uplink's own
            if on_publish is not None:
                on_publish(self, self._userdata, mid, reason, self._NO_PROPERTIES)
            return self._update_inflight()  # a message of paho's may wait for the room
        return super()._handle_pubackcomp(cmd)


_U16 = struct.Struct("!H")


def _length(n: int) -> bytes:
    """MQTT's variable byte integer: seven bits a byte, low first, the top bit "more"."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
