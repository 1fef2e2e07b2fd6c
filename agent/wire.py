"""What goes over MQTT: records as versioned msgpack (or JSON, for debugging) maps.

The format is documented field by field in docs/wire-format.md. Every payload ends
with its `replay` flag, so marking a record as replayed from the buffer is a
one-byte change, not a decode and re-encode.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgpack

from agent.records import Aggregate, Reading

VERSION = 1
Encoding = Literal["msgpack", "json"]


def encode(record: Reading | Aggregate, device: str, encoding: Encoding = "msgpack") -> bytes:
    fields: dict[str, Any]
    if isinstance(record, Aggregate):
        fields = {
            "v": VERSION,
            "kind": "agg",
            "device": device,
            "sensor": record.sensor,
            "seq": record.seq,
            "start": record.start,
            "end": record.end,
            "count": record.count,
            "stats": record.stats,
            "unit": record.unit,
            "partial": record.partial,
        }
    else:
        fields = {
            "v": VERSION,
            "kind": "event",
            "device": device,
            "sensor": record.sensor,
            "ts": record.ts,
            "value": record.value,
            "unit": record.unit,
        }
    fields["replay"] = False  # last, so mark_replay() can flip it in place
    if encoding == "json":
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def mark_replay(payload: bytes) -> bytes:
    """The same payload with `replay` set to true."""
    if payload.startswith(b"{"):
        assert payload.endswith(b"false}")
        return payload[: -len(b"false}")] + b"true}"
    assert payload[-1:] == b"\xc2"  # msgpack false
    return payload[:-1] + b"\xc3"  # msgpack true


def encoding_of(payload: bytes) -> Encoding:
    return "json" if payload[:1] in (b"{", b"[") else "msgpack"


def convert(payload: bytes, encoding: Encoding) -> bytes:
    """One record's payload in `encoding` (records buffered before the setting changed)."""
    if encoding_of(payload) == encoding:
        return payload
    fields = decode(payload)
    if encoding == "json":
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode(payload: bytes) -> dict[str, Any]:
    """A payload as a plain dict, whichever encoding it has."""
    if payload.startswith(b"{"):
        result: dict[str, Any] = json.loads(payload)
    else:
        result = msgpack.unpackb(payload, raw=False)
    return result


def join(payloads: list[bytes]) -> bytes:
    """Several encoded records as one batch message: an array of the same maps, not re-encoded."""
    if payloads[0].startswith(b"{"):
        return b"[" + b",".join(payloads) + b"]"
    count = len(payloads)
    header = bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    return header + b"".join(payloads)


def split(payload: bytes) -> list[dict[str, Any]]:
    """The records of a message, batch or single."""
    decoded = json.loads(payload) if payload[:1] in (b"{", b"[") else msgpack.unpackb(payload)
    return decoded if isinstance(decoded, list) else [decoded]
