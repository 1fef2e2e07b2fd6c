"""`edge-agent tail`: subscribe to a device's topics and print what arrives, decoded.

How a person checks what the broker really receives, independently of the agent.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from agent.config import Config, Mqtt
from agent.records import Aggregate, Reading
from agent.security import secure
from agent.sinks import Console


class Tail:
    """Prints the records (aggregates and events, batched or not) of one device as they arrive."""

    def __init__(
        self,
        config: Config,
        *,
        as_json: bool = False,
        count: int | None = None,
        sensor: str | None = None,
        out: TextIO = sys.stdout,
    ) -> None:
        assert config.mqtt is not None
        self.settings = config.mqtt
        self.device_topic = f"{self.settings.topic_prefix}/{config.agent.device_id}"
        self.as_json, self.count, self.sensor, self.out = as_json, count, sensor, out
        self.console = Console(stream=out)
        self.received = 0
        self.failed = False
        self.done = threading.Event()

    def run(self, timeout: float | None = None) -> int:
        """Until `count` records came, Ctrl-C, `timeout` or `stop()`; 0 if all asked for came."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5 if self.settings.protocol == "5" else mqtt.MQTTv311,
        )
        try:
            secure(client, self.settings)
        except ValueError as e:
            return self._fail(str(e))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        if not connect(client, self.settings):
            return 1
        client.loop_start()
        try:
            self.done.wait(timeout)
        except KeyboardInterrupt:
            pass
        finally:
            client.disconnect()
            client.loop_stop()
        if self.failed:
            return 1
        return 0 if self.count is None or self.received >= self.count else 1

    def stop(self) -> None:
        self.done.set()

    def _fail(self, message: str) -> int:
        print(f"edge-agent: {message}", file=sys.stderr)
        self.failed = True
        self.done.set()
        return 1

    def _on_connect(self, client: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            self._fail(f"the broker refused the connection: {reason}")
            return
        sensors = f"{self.device_topic}/{self.sensor or '+'}"
        batches = f"{self.device_topic}/batch"
        client.subscribe([(f"{sensors}/agg", 1), (f"{sensors}/event", 1), (batches, 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        try:
            records = wire.split(message.payload)
        except ValueError:
            size = len(message.payload)
            print(f"{message.topic}: undecodable payload of {size} bytes", file=self.out)
            return
        for fields in records:
            if not isinstance(fields, dict) or not {"kind", "sensor"} <= fields.keys():
                print(f"{message.topic}: a payload that is not a record", file=self.out)
                continue
            if self.sensor is not None and fields.get("sensor") != self.sensor:
                continue  # a batch carries every sensor's records
            if self.as_json:
                print(json.dumps(fields, ensure_ascii=False), file=self.out, flush=True)
            else:
                try:
                    self.console.write(_record(fields))
                except (KeyError, TypeError, ValueError):
                    print(f"{message.topic}: a record short of fields", file=self.out)
                    continue
            self.received += 1
            if self.count is not None and self.received >= self.count:
                self.done.set()


def connect(client: mqtt.Client, settings: Mqtt) -> bool:
    """Connect to the first broker that answers, in the agent's order; say why the others
    did not."""
    for host, port in settings.addresses:
        try:
            client.connect(host, port, settings.keepalive)
            return True
        except (OSError, ssl.SSLError) as e:
            print(f"edge-agent: cannot reach {host}:{port}: {e}", file=sys.stderr)
    return False


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
