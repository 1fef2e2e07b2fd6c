"""`edge-agent status`: the last health message a device left on its broker, as a table.

The message is retained, so it is there at once, however long ago the agent sent it; the
table says how old it is.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Config
from agent.health import Health, SensorHealth, StageHealth
from agent.security import secure
from agent.tail import connect

COUNTERS = ("readings", "empty", "errors", "timeouts", "garbled", "invalid")
STALE = 2.5  # intervals without a new message after which the last one is called stale


def show(config: Config, *, as_json: bool = False, timeout: float = 5.0) -> int:
    """Print the device's last health message; 0 if one came, 1 if none did."""
    assert config.mqtt is not None
    topic = f"{config.mqtt.topic_prefix}/{config.agent.device_id}/health"
    try:
        payload = fetch(config, topic, timeout)
    except ValueError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    if payload is None:
        print(
            f"edge-agent: no health message on {topic} within {timeout:g} s: "
            "is the agent running with health_interval > 0?",
            file=sys.stderr,
        )
        return 1
    if as_json:
        print(payload.decode("utf-8", errors="replace"))
        return 0
    try:
        text = table(cast(Health, json.loads(payload)), now=time.time())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        print(
            f"edge-agent: {topic}: not a health message this version can read ({e}); "
            "--json prints it as it is",
            file=sys.stderr,
        )
        return 1
    print(text)
    return 0


def fetch(config: Config, topic: str, timeout: float) -> bytes | None:
    """The retained message on `topic`, or None if none came within `timeout` seconds.
    Raises ValueError when the broker cannot be used (unreachable, refused, bad TLS files)."""
    settings = config.mqtt
    assert settings is not None
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311,
    )
    secure(client, settings)
    received: list[bytes] = []
    refused: list[str] = []
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            done.set()
        else:
            client.subscribe(topic, qos=1)

    def on_message(client: mqtt.Client, userdata: Any, message: Any) -> None:
        received.append(message.payload)
        done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    if not connect(client, settings):
        raise ValueError("no broker could be reached")
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        raise ValueError(f"the broker refused the connection: {refused[0]}")
    return received[0] if received else None


def table(health: Health, *, now: float) -> str:
    """The snapshot as a person reads it: a summary, then a row per sensor and per stage."""
    age = now - health["ts"]
    taken = time.strftime("%H:%M:%S", time.localtime(health["ts"]))
    header = (
        f"{health['device']}: edge-agent {health['version']}, up {_duration(health['uptime'])}; "
        f"health of {taken} ({_duration(max(age, 0))} ago, sent every "
        f"{health['interval']:g} s)"
    )
    if age > STALE * health["interval"]:
        header += "\n  stale: the agent may be stopped, or cut off from the broker"
    summary: list[tuple[str, str]] = []
    if (uplink := health["uplink"]) is not None:
        reconnects = uplink["reconnects"]
        summary.append(
            (
                "uplink",
                f"{'connected' if uplink['connected'] else 'not connected'}, "
                f"{reconnects} reconnect{'s' * (reconnects != 1)}, "
                f"{uplink['rate']:g} records/s acknowledged, {uplink['published']} published",
            )
        )
    queue = health["queue"]
    summary.append(("queue", f"{queue['depth']} waiting, {queue['dropped']} dropped"))
    if (buffer := health["buffer"]) is not None:
        oldest = buffer["oldest_age"]
        summary.append(
            (
                "buffer",
                f"{buffer['records']} records, {_size(buffer['bytes'])}"
                + (f", oldest {_duration(max(oldest, 0))} old" if oldest is not None else ""),
            )
        )
    drops, errors = health["drops"], health["errors"]
    summary += [
        (
            "drops",
            f"queue {drops['queue']}, buffer overflow {drops['buffer_overflow']}, "
            f"stage filters {drops['stages']}, late {drops['late']}",
        ),
        ("errors", f"stages {errors['stages']}, sinks {errors['sinks']}"),
        (
            "process",
            f"RSS {_size(health['process']['rss_bytes'])}, "
            f"CPU {health['process']['cpu_percent']:g} % of one core",
        ),
        (
            "loop lag",
            f"max {health['loop_lag']['max_ms']:g} ms, mean {health['loop_lag']['mean_ms']:g} ms",
        ),
    ]
    width = max(len(k) for k, _ in summary)
    lines = [header, "", *(f"{k:<{width}}  {v}" for k, v in summary), ""]

    rows = [["SENSOR", "STATE", *(c.upper() for c in COUNTERS), "LAST ERROR"]]
    for name, sensor in health["sensors"].items():
        counts = _counts(sensor)
        rows.append([name, sensor["state"], *map(str, counts), sensor["last_error"] or "-"])
    lines += _columns(rows, right=range(2, 2 + len(COUNTERS)))
    lines.append("")

    rows = [["CHANNEL", "STAGE", "RECEIVED", "PASSED", "DROPPED", "LATE"]]
    for name, channel in health["channels"].items():
        late = "-" if channel["late"] is None else str(channel["late"])
        received = channel["received"]
        stages = channel["stages"] or [
            StageHealth(stage="-", received=received, passed=received, dropped=0)
        ]
        for i, stage in enumerate(stages):
            received, passed = stage["received"], stage["passed"]
            rows.append(
                [
                    name if i == 0 else "",
                    stage["stage"],
                    str(received),
                    str(passed),
                    str(received - passed),
                    late if i == 0 else "",
                ]
            )
    lines += _columns(rows, right=range(2, 6))
    return "\n".join(lines)


def _counts(s: SensorHealth) -> tuple[int, ...]:
    return s["readings"], s["empty"], s["errors"], s["timeouts"], s["garbled"], s["invalid"]


def _columns(rows: list[list[str]], *, right: range) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
