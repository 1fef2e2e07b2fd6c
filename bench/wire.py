"""Wire bytes per aggregate, as agent.wire sends it (msgpack, layout 2), alone and in a batch
of 50, beside the same records as compact JSON: the full named dict a plain JSON agent would
send (`separators=(",", ":")`, UTF-8), which is also what decoding the msgpack gives back.

The aggregates are realistic: a dotted channel name, five statistics of a minute of readings at
10 Hz with full double precision, as the window computes them. Sizes do not vary from run to
run, so each figure is one measurement over 50 different aggregates.
Run: .venv/bin/python bench/run.py --only wire
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from agent import wire
from agent.records import Aggregate, Reading
from agent.window import TumblingWindow
from bench.common import Figure, figure

DEVICE = "greenhouse-1"
BATCH = 50


def aggregates(n: int = BATCH) -> list[Aggregate]:
    """`n` one-minute aggregates of a noisy temperature, made by the agent's own window."""
    rng = random.Random(6)
    window = TumblingWindow(
        "greenhouse.temperature",
        seconds=60.0,
        stats=("count", "mean", "min", "max", "stddev"),
        unit="°C",
    )
    out: list[Aggregate] = []
    start = 1_795_900_020.0  # a whole minute
    tick = 0
    while len(out) < n:
        ts = start + tick / 10
        value = 21.0 + 3.0 * math.sin(ts / 3600) + rng.gauss(0, 0.05)
        if aggregate := window.add(Reading("greenhouse.temperature", ts, value, "°C")):
            out.append(aggregate)
        tick += 1
    return out


def as_json(fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def figures(quick: bool = False) -> list[Figure]:
    records = aggregates()
    packed = [wire.encode(a, DEVICE) for a in records]
    batch = wire.join(packed)
    # The anchor is the named dict of each record; the compact forms must give it back exactly.
    dicts = [json.loads(wire.encode(a, DEVICE, "json")) for a in records]
    assert [wire.decode(p) for p in packed] == dicts
    assert wire.split(batch) == dicts
    assert [as_json(d) for d in dicts] == [wire.encode(a, DEVICE, "json") for a in records]
    single = sum(map(len, packed)) / len(packed)
    single_json = sum(len(as_json(d)) for d in dicts) / len(dicts)
    batched = len(batch) / len(packed)
    batched_json = len(as_json(dicts)) / len(dicts)
    return [
        figure(
            "wire bytes per aggregate, single (msgpack)",
            single,
            "B",
            goal=0.35,
            better="lower",
            anchor="compact JSON of the same named dict",
            anchor_value=single_json,
            runs=1,
        ),
        figure(
            f"wire bytes per aggregate, batched of {BATCH} (msgpack)",
            batched,
            "B",
            goal=0.25,
            better="lower",
            anchor="compact JSON array of the same 50 named dicts",
            anchor_value=batched_json,
            runs=1,
        ),
    ]
