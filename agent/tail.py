"""`edge-agent tail`: subscribe to a device's topics and print what arrives, decoded.

How a person checks what the broker really receives, independently of the agent.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from agent.config import Config
from agent.records import Aggregate, Reading
from agent.sinks import Console
from agent.uplink import secure


def tail(
    config: Config,
    *,
    as_json: bool = False,
    count: int | None = None,
    sensor: str | None = None,
    out: TextIO = sys.stdout,
    timeout: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print records as they arrive until `count` came (or Ctrl-C, or `timeout`); 0 if all came."""
    assert config.mqtt is not None
    settings = config.mqtt
    base = f"{settings.topic_prefix}/{config.agent.device_id}/{sensor or '+'}"
    console = Console(stream=out)
    received = 0
    done = stop or threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            print(f"edge-agent: the broker refused the connection: {reason}", file=sys.stderr)
            done.set()
            return
        batches = f"{settings.topic_prefix}/{config.agent.device_id}/batch"
        client.subscribe([(f"{base}/agg", 1), (f"{base}/event", 1), (batches, 1)])

    def on_message(client: mqtt.Client, userdata: Any, message: Any) -> None:
        nonlocal received
        try:
            records = wire.split(message.payload)
        except ValueError:
            print(f"{message.topic}: undecodable payload of {len(message.payload)} bytes", file=out)
            return
        for fields in records:
            if sensor is not None and fields.get("sensor") != sensor:
                continue  # a batch carries every sensor's records
            if as_json:
                print(json.dumps(fields, ensure_ascii=False), file=out, flush=True)
            else:
                console.write(_record(fields))
            received += 1
            if count is not None and received >= count:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    secure(client, settings)
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except OSError as e:
        print(f"edge-agent: cannot reach {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    tail.received = received  # type: ignore[attr-defined]  # for the demo's summary
    return 0 if count is None or received >= count else 1


def _record(fields: dict[str, Any]) -> Aggregate | Reading:
    if fields.get("kind") == "agg":
        return Aggregate(
            fields["sensor"],
            fields["start"],
            fields["end"],
            fields["count"],
            fields["stats"],
            fields["unit"],
            fields["seq"],
            fields["partial"],
        )
    return Reading(fields["sensor"], fields["ts"], fields["value"], fields["unit"])
