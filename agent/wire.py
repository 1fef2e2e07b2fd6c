"""What goes over MQTT: records as compact msgpack arrays (or JSON maps, for debugging).

Every record has one named form, the dict `decode()` returns and the JSON encoding sends.
The msgpack encoding (layout 2) packs the same fields as a positional array: no key names,
statistics as a bitmask plus values, whole numbers as small ints, and a batch names each
channel once. Layout 1 (the named dict as a msgpack map) still decodes: it stays in
buffers written before an upgrade. docs/wire-format.md describes both, field by field.

Every payload ends with its `replay` flag, so marking a record as replayed from the buffer
is a one-byte change, not a decode and re-encode.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import msgpack

from agent.records import Aggregate, Reading

VERSION = 1  # `v` of the named form: its keys have not changed, whatever the encoding
LAYOUT = 2  # the first element of a msgpack array payload (layout 1 was a map)
Encoding = Literal["msgpack", "json"]

AGG, EVENT, BATCH = 0, 1, 2  # the second element of a layout 2 payload; kind of a batch entry
KINDS = ("agg", "event")

# Bit i of an aggregate's stats mask is STATS[i]; the values follow in this order. Part of
# the format, so it is spelled out here, not taken from the window: new statistics may only
# be appended.
STATS = ("count", "mean", "min", "max", "sum", "stddev", "first", "last")

PARTIAL = 1  # aggregate flags
END = 2  # the length slot holds `end` itself: end - start did not give `end` back exactly


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
    return _pack(fields, encoding)


def mark_replay(payload: bytes) -> bytes:
    """The same payload with `replay` set to true."""
    if payload.startswith(b"{"):
        assert payload.endswith(b"false}")
        return payload[: -len(b"false}")] + b"true}"
    assert payload[-1:] == b"\xc2"  # msgpack false, in either layout
    return payload[:-1] + b"\xc3"  # msgpack true


def encoding_of(payload: bytes) -> Encoding:
    return "json" if payload[:1] in (b"{", b"[") else "msgpack"


def convert(payload: bytes, encoding: Encoding) -> bytes:
    """One record's payload in `encoding` (records buffered before the setting changed)."""
    if encoding_of(payload) == encoding:
        return payload
    return _pack(decode(payload), encoding)


def decode(payload: bytes) -> dict[str, Any]:
    """One record's payload as its named dict, whichever encoding and layout it has."""
    records = split(payload)
    if len(records) != 1 or not isinstance(records[0], dict):
        raise ValueError("not a payload of one record")
    return records[0]


def join(payloads: list[bytes]) -> bytes:
    """Several encoded records as one batch message.

    JSON: an array of the records' objects, as they are. msgpack: re-packed, so that each
    device, and each channel (device, sensor, unit), is named once in a table that the
    entries refer to by index.
    """
    if payloads and payloads[0].startswith(b"{"):
        return b"[" + b",".join(payloads) + b"]"
    devices: dict[str, int] = {}  # more than one only if device_id changed with a backlog
    channels: dict[tuple[int, str, str], int] = {}
    entries = []
    for payload in payloads:
        fields = decode(payload)
        device = devices.setdefault(fields["device"], len(devices))
        channel = channels.setdefault((device, fields["sensor"], fields["unit"]), len(channels))
        entries.append([KINDS.index(fields["kind"]), channel, *_body(fields)])
    tables = [list(devices), [list(c) for c in channels]]
    packed: bytes = msgpack.packb([LAYOUT, BATCH, *tables, entries])
    return packed


def split(payload: bytes) -> list[dict[str, Any]]:
    """The records of a message, batch or single, as named dicts."""
    if payload[:1] in (b"{", b"["):
        decoded = json.loads(payload)
    else:
        decoded = msgpack.unpackb(payload, raw=False)
        if isinstance(decoded, list) and decoded and decoded[0] == LAYOUT:
            return _unpack(decoded)
    # The named form: one map, or a batch of them (a layout 1 batch is an array of maps).
    return decoded if isinstance(decoded, list) else [decoded]


# -- layout 2 -------------------------------------------------------------------------------


def _pack(fields: dict[str, Any], encoding: Encoding) -> bytes:
    if encoding == "json":
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    kind = KINDS.index(fields["kind"])
    head = [LAYOUT, kind, fields["device"], fields["sensor"], fields["unit"]]
    packed: bytes = msgpack.packb(head + _body(fields))
    return packed


def _body(fields: dict[str, Any]) -> list[Any]:
    """A record's fields after its kind and names, positional; `replay` last."""
    if fields["kind"] == "event":
        return [_number(fields["ts"]), _number(fields["value"]), fields["replay"]]
    start, end = fields["start"], fields["end"]
    length, flags = end - start, PARTIAL if fields["partial"] else 0
    if not _same(start + length, end):  # far apart, NaN or infinite: rounding lost `end`
        length, flags = end, flags | END
    stats = fields["stats"]
    mask, values = 0, []
    for bit, name in enumerate(STATS):
        if name in stats:
            mask |= 1 << bit
            values.append(_number(stats[name]))
    if len(values) != len(stats):
        unknown = sorted(set(stats) - set(STATS))
        raise ValueError(f"statistics the wire format has no bit for: {unknown}")
    return [
        fields["seq"],
        _number(start),
        _number(length),
        fields["count"],
        mask,
        values,
        flags,
        fields["replay"],
    ]


def _unpack(message: list[Any]) -> list[dict[str, Any]]:
    try:
        if message[1] != BATCH:
            return [_named(message[1], message[2], message[3], message[4], message[5:])]
        devices, channels, entries = message[2], message[3], message[4]
        records = []
        for kind, channel, *body in entries:
            device, sensor, unit = channels[channel]
            records.append(_named(kind, devices[device], sensor, unit, body))
        return records
    except (IndexError, KeyError, TypeError) as e:
        raise ValueError(f"a malformed layout {LAYOUT} payload: {e!r}") from e


def _named(kind: int, device: str, sensor: str, unit: str, body: list[Any]) -> dict[str, Any]:
    """The named dict of a layout 2 record, keys in the order `encode` gives them."""
    if kind == EVENT:
        ts, value, replay = body
        return {
            "v": VERSION,
            "kind": "event",
            "device": device,
            "sensor": sensor,
            "ts": float(ts),
            "value": float(value),
            "unit": unit,
            "replay": replay,
        }
    if kind != AGG:
        raise ValueError(f"an unknown record kind {kind!r}")
    seq, start, length, count, mask, values, flags, replay = body
    names = [name for bit, name in enumerate(STATS) if mask >> bit & 1]
    if len(names) != len(values):
        raise ValueError(f"a stats mask of {len(names)} bits for {len(values)} values")
    return {
        "v": VERSION,
        "kind": "agg",
        "device": device,
        "sensor": sensor,
        "seq": seq,
        "start": float(start),
        "end": float(length if flags & END else start + length),
        "count": count,
        "stats": {name: float(value) for name, value in zip(names, values, strict=True)},
        "unit": unit,
        "partial": bool(flags & PARTIAL),
        "replay": replay,
    }


def _number(x: float) -> float:
    """`x`, as an int if it is a whole number that packs in 5 bytes or fewer (a float 64 takes
    9); the reader turns it back into the same float. -0.0 stays a float: 0 would lose its
    sign."""
    if isinstance(x, float) and x.is_integer() and -(2**31) <= x < 2**32 and (x or _sign(x) > 0):
        return int(x)
    return x


def _same(a: float, b: float) -> bool:
    return a == b and _sign(a) == _sign(b)


def _sign(x: float) -> float:
    return math.copysign(1.0, x)
