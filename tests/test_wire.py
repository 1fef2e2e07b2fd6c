"""agent.wire: the compact msgpack layout gives back the exact named dict, and layout 1 still
decodes."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent import wire
from agent.records import Aggregate, Reading
from agent.window import STATS as WINDOW_STATS

ALL = dict(zip(wire.STATS, (60.0, 21.37, 21.05, 21.62, 1282.2, 0.1523, 21.1, 21.6), strict=True))


def aggregate(**changes: Any) -> Aggregate:
    fields: dict[str, Any] = {
        "sensor": "air",
        "start": 1795903740.0,
        "end": 1795903800.0,
        "count": 60,
        "stats": {k: ALL[k] for k in ("count", "mean", "min", "max")},
        "unit": "°C",
        "seq": 42,
        "partial": False,
    }
    return Aggregate(**(fields | changes))


def named(record: Aggregate | Reading, device: str = "pi-1") -> dict[str, Any]:
    """What the named form must be: the JSON encoding, which is that dict written out."""
    fields: dict[str, Any] = json.loads(wire.encode(record, device, "json"))
    return fields


def bits(x: float) -> bytes:
    return struct.pack("<d", x)  # tells -0.0 from 0.0, and compares NaN


def test_the_worked_example_of_the_docs() -> None:
    payload = wire.encode(aggregate(), "pi-1")
    assert payload.hex(" ") == (
        "9d 02 00 a4 70 69 2d 31 a3 61 69 72 a3 c2 b0 43 2a ce 6b 0b 50 fc 3c 3c 0f 94 3c "
        "cb 40 35 5e b8 51 eb 85 1f cb 40 35 0c cc cc cc cc cd cb 40 35 9e b8 51 eb 85 1f 00 c2"
    )
    assert wire.decode(payload) == named(aggregate())
    assert msgpack.unpackb(payload) == [
        *(2, 0, "pi-1", "air", "°C", 42, 1795903740, 60, 60, 0b1111),
        [60, 21.37, 21.05, 21.62],
        *(0, False),
    ]


@pytest.mark.parametrize("size", range(1, len(wire.STATS) + 1))
def test_aggregates_round_trip_with_every_subset_of_statistics(size: int) -> None:
    for names in itertools.combinations(wire.STATS, size):
        record = aggregate(stats={name: ALL[name] for name in reversed(names)})
        payload = wire.encode(record, "pi-1")
        fields = wire.decode(payload)
        assert fields == named(record), names
        assert all(type(v) is float for v in fields["stats"].values())
        # A mask and the values, never the names.
        assert not any(name.encode() in payload for name in names)


def test_partial_and_replay_round_trip() -> None:
    record = aggregate(partial=True)
    payload = wire.encode(record, "pi-1")
    assert wire.decode(payload)["partial"] is True
    replayed = wire.mark_replay(payload)
    assert replayed[:-1] == payload[:-1]  # a one-byte flip
    assert wire.decode(replayed) == named(record) | {"replay": True}
    event = wire.encode(Reading("door", 1795903741.25, 1.0), "pi-1")
    assert wire.decode(wire.mark_replay(event)) == named(Reading("door", 1795903741.25, 1.0)) | {
        "replay": True
    }


NUMBERS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    127.0,
    -32.0,
    2.0**31 - 1,
    -(2.0**31),
    -(2.0**31) - 1,
    2.0**32 - 1,
    2.0**32,
    2.0**53,
    1e300,
    -1e300,
    5e-324,
    0.1,
    -21.375,
    1795903740.123456,
    math.inf,
    -math.inf,
]


def test_numbers_come_back_as_the_same_float_bits() -> None:
    for x in NUMBERS:
        record = aggregate(start=x, end=x + 60, stats={"mean": x, "first": x, "last": -x})
        fields = wire.decode(wire.encode(record, "pi-1"))
        for got, want in [
            (fields["start"], x),
            (fields["end"], x + 60),
            (fields["stats"]["mean"], x),
            (fields["stats"]["last"], -x),
        ]:
            assert type(got) is float
            assert bits(got) == bits(want), (x, got, want)
        event = wire.decode(wire.encode(Reading("door", x, -x), "pi-1"))
        assert type(event["ts"]) is type(event["value"]) is float
        assert bits(event["ts"]) == bits(x)
        assert bits(event["value"]) == bits(-x)


def test_whole_numbers_pack_as_small_ints_and_fractions_as_float64() -> None:
    payload = wire.encode(aggregate(), "pi-1")
    assert b"\xce" + (1795903740).to_bytes(4, "big") in payload  # start: uint 32, not 9 bytes
    assert b"\xca" not in payload  # never float 32: it would round the values
    assert b"\xcb" + bits(21.37)[::-1] in payload  # float 64, big-endian


def test_nan_statistics_round_trip() -> None:
    record = aggregate(stats={"count": 0.0, "first": math.nan, "last": math.nan})
    fields = wire.decode(wire.encode(record, "pi-1"))
    assert fields["stats"]["count"] == 0.0
    assert math.isnan(fields["stats"]["first"])
    assert math.isnan(fields["stats"]["last"])


def test_an_end_that_start_plus_length_would_round_keeps_its_exact_value() -> None:
    start, end = 0.3958621600678034, 2.5861844304583808
    assert start + (end - start) != end  # the case: the length alone would lose `end`
    for s, e in [(start, end), (math.nan, 60.0), (0.0, math.inf), (-0.0, -0.0)]:
        fields = wire.decode(wire.encode(aggregate(start=s, end=e), "pi-1"))
        assert bits(fields["start"]) == bits(s)
        assert bits(fields["end"]) == bits(e)


def test_unicode_names_and_units() -> None:
    for sensor, unit in [("climate.humidity", "%"), ("pm2_5", "µg/m³"), ("温度", "°C"), ("x", "")]:
        record = aggregate(sensor=sensor, unit=unit)
        assert wire.decode(wire.encode(record, "gewächshaus")) == named(record, "gewächshaus")
        event = Reading(sensor, 1795903741.5, -3.25, unit)
        assert wire.decode(wire.encode(event, "gewächshaus")) == named(event, "gewächshaus")


def test_events_are_compact_and_exact() -> None:
    event = Reading("door", 1795903741.0408, 0.04086, "")
    payload = wire.encode(event, "pi-1")
    assert wire.decode(payload) == named(event)
    assert msgpack.unpackb(payload) == [2, 1, "pi-1", "door", "", 1795903741.0408, 0.04086, False]
    assert len(payload) < len(wire.encode(event, "pi-1", "json")) / 2


def v1(record: Aggregate | Reading, device: str = "pi-1") -> bytes:
    """A layout 1 payload, as agents before layout 2 wrote it (and buffers still hold)."""
    packed: bytes = msgpack.packb(named(record, device), use_bin_type=True)
    return packed


def test_layout_1_payloads_still_decode_convert_and_replay() -> None:
    old = v1(aggregate())
    assert old[:1] == b"\x8c"  # a map of 12 keys
    assert wire.decode(old) == named(aggregate())
    assert wire.split(old) == [named(aggregate())]
    assert wire.encoding_of(old) == "msgpack"
    assert wire.convert(old, "msgpack") == old  # not re-encoded when it goes out alone
    assert wire.convert(old, "json") == wire.encode(aggregate(), "pi-1", "json")
    assert wire.decode(wire.mark_replay(old))["replay"] is True
    event = Reading("door", 1795903741.25, 1.0)
    assert wire.decode(v1(event)) == named(event)


def test_a_layout_1_batch_still_splits() -> None:
    records: list[Aggregate | Reading] = [aggregate(), Reading("door", 1795903741.25, 1.0)]
    old_batch = b"\x92" + b"".join(v1(r) for r in records)  # what join() used to send
    assert wire.split(old_batch) == [named(r) for r in records]


def test_convert_between_encodings_both_ways() -> None:
    for record in (aggregate(), Reading("door", 1795903741.25, 1.0, "")):
        packed, text = wire.encode(record, "pi-1"), wire.encode(record, "pi-1", "json")
        assert wire.encoding_of(packed) == "msgpack"
        assert wire.encoding_of(text) == "json"
        assert wire.convert(packed, "json") == text
        assert wire.convert(text, "msgpack") == packed
        assert wire.convert(packed, "msgpack") is packed


def test_a_batch_of_mixed_sensors_names_each_channel_once() -> None:
    records: list[Aggregate | Reading] = []
    for seq in range(1, 6):
        start = 1795903740.0 + 60 * seq
        records.append(aggregate(seq=seq, start=start, end=start + 60))
        records.append(
            aggregate(sensor="climate.humidity", unit="%", seq=seq, start=start, end=start + 60)
        )
        records.append(Reading("door", start + 0.5, float(seq)))
    payloads = [wire.encode(r, "pi-1") for r in records]
    batch = wire.join(payloads)
    assert wire.split(batch) == [named(r) for r in records]
    assert batch.count(b"climate.humidity") == 1
    assert batch.count(b"pi-1") == 1
    assert len(batch) < sum(map(len, payloads)) * 0.75


def test_a_batch_of_mixed_layouts_devices_and_replays() -> None:
    """A backlog from before an upgrade (layout 1), records from a renamed device, replays."""
    first = aggregate()
    event = Reading("door", 1795903741.25, 1.0)
    later = aggregate(seq=43, start=1795903800.0, end=1795903860.0, partial=True)
    payloads = [
        v1(first, "old-name"),
        wire.mark_replay(wire.encode(event, "pi-1")),
        wire.convert(wire.encode(later, "pi-1", "json"), "msgpack"),
    ]
    assert wire.split(wire.join(payloads)) == [
        named(first, "old-name"),
        named(event) | {"replay": True},
        named(later),
    ]


def test_a_json_batch_is_an_array_of_the_objects() -> None:
    payloads = [wire.encode(aggregate(), "pi-1", "json"), wire.encode(aggregate(seq=43), "pi-1")]
    batch = wire.join([wire.convert(p, "json") for p in payloads])
    assert json.loads(batch) == wire.split(batch) == [named(aggregate()), named(aggregate(seq=43))]


def test_a_batch_of_one_is_still_a_batch() -> None:
    batch = wire.join([wire.encode(aggregate(), "pi-1")])
    assert wire.split(batch) == [named(aggregate())]
    with pytest.raises(ValueError, match="one record"):
        wire.decode(wire.join([wire.encode(aggregate(), "pi-1")] * 2))


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (msgpack.packb([2, 0, "pi-1", "air"]), "malformed"),  # too short
        (msgpack.packb([2, 7, "pi-1", "air", "", 1.0, 2.0, False]), "unknown record kind"),
        (msgpack.packb([2, 0, "pi", "air", "", 1, 0, 60, 3, 0b11, [1.0], 0, False]), "mask"),
        (msgpack.packb([2, 2, ["pi"], [[0, "air", ""]], [[1, 5, 1.0, 2.0, False]]]), "malformed"),
        (msgpack.packb([2, 2, ["pi"], [[3, "air", ""]], [[1, 0, 1.0, 2.0, False]]]), "malformed"),
        (wire.encode(aggregate(), "pi-1")[:-3], "incomplete"),  # cut short
    ],
)
def test_malformed_payloads_raise_value_error(payload: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):  # what `edge-agent tail` catches and reports
        wire.split(payload)


def test_statistics_the_format_cannot_name_are_refused() -> None:
    with pytest.raises(ValueError, match="no bit"):
        wire.encode(aggregate(stats={"median": 1.0}), "pi-1")


def test_every_window_statistic_has_a_bit() -> None:
    assert set(WINDOW_STATS) <= set(wire.STATS)
    # Appended only: the bits already sent must keep their meaning.
    assert wire.STATS[:8] == ("count", "mean", "min", "max", "sum", "stddev", "first", "last")


DOCS = Path(__file__).parent.parent / "docs" / "wire-format.md"


def docs_block(after: str, language: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_docs_show_the_real_bytes() -> None:
    shown = docs_block("is published to `edge/pi-1/air/agg` as these", "")
    assert bytes.fromhex(shown) == wire.encode(aggregate(), "pi-1")


def test_the_decoder_in_the_docs_agrees_with_split() -> None:
    space: dict[str, Any] = {}
    exec(docs_block("### Decoding it yourself", "python"), space)
    event = Reading("door", 1795903741.0408, 0.04086, "")
    singles = [
        wire.encode(aggregate(partial=True), "pi-1"),
        wire.mark_replay(wire.encode(event, "pi-1")),
        wire.encode(aggregate(start=0.3958621600678034, end=2.5861844304583808), "pi-1"),
        v1(aggregate(seq=7)),
    ]
    for payload in [*singles, wire.join(singles), b"\x92" + v1(event) + v1(aggregate())]:
        assert space["records"](payload) == wire.split(payload)
