"""Home Assistant MQTT discovery: each channel becomes an entity of one device.

For each channel the agent publishes a retained discovery config on
`{discovery_prefix}/{component}/{device}/{channel}/config`, and then its values, as JSON
(Home Assistant reads JSON states, whatever the agent's own payload format), retained on
`{prefix}/{device}/{channel}/state`. Availability follows the agent's status topic, whose
last will says "offline".
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from agent import __version__
from agent.records import Aggregate, Reading

# Device classes that Home Assistant shows as on/off when the channel has no unit.
BINARY = frozenset(
    "battery_charging carbon_monoxide cold connectivity door garage_door gas heat light "  # noqa: SIM905
    "lock moisture motion moving occupancy opening plug power presence problem running "
    "safety smoke sound tamper vibration window".split()
)


class Entity(NamedTuple):
    """One channel as Home Assistant sees it; `stat` is the window statistic its state shows
    (None for a channel that sends events)."""

    channel: str
    unit: str
    device_class: str
    stat: str | None


def pick_stat(stats: tuple[str, ...], binary: bool) -> str:
    """The statistic a window's state shows: the mean for a measurement, the last for a switch."""
    preferred = ("last", "max", "mean") if binary else ("mean", "last", "max")
    return next((s for s in preferred if s in stats), stats[0])


def discovery(
    entity: Entity, *, device: str, base_topic: str, discovery_prefix: str
) -> tuple[str, bytes]:
    """The retained discovery message for one channel: its topic and JSON payload."""
    binary = entity.device_class in BINARY and not entity.unit
    component = "binary_sensor" if binary else "sensor"
    object_id = _safe(entity.channel)
    field = entity.stat or "value"
    config: dict[str, Any] = {
        "name": entity.channel,
        "unique_id": f"edge-agent-{_safe(device)}-{object_id}",
        "state_topic": f"{base_topic}/{entity.channel}/state",
        "availability_topic": f"{base_topic}/status",
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"edge-agent-{_safe(device)}"],
            "name": device,
            "manufacturer": "edge-agent",
            "model": "edge-agent",
            "sw_version": __version__,
        },
    }
    if binary:
        config |= {
            "value_template": f"{{{{ 'ON' if value_json.{field} > 0.5 else 'OFF' }}}}",
            "device_class": entity.device_class,
        }
    else:
        template = f"{{{{ value_json.{field} }}}}"
        if entity.device_class == "timestamp":  # the agent sends epoch seconds
            template = f"{{{{ as_datetime(value_json.{field}) }}}}"
        config |= {"value_template": template, "state_class": "measurement"}
        if entity.device_class == "timestamp":
            del config["state_class"]
        if entity.device_class:
            config["device_class"] = entity.device_class
        if entity.unit and entity.device_class != "timestamp":  # HA refuses a unit on a date
            config["unit_of_measurement"] = entity.unit
    topic = f"{discovery_prefix}/{component}/{_safe(device)}/{object_id}/config"
    return topic, json.dumps(config, ensure_ascii=False).encode()


def state(record: Reading | Aggregate, base_topic: str) -> tuple[str, bytes]:
    """A record as the JSON state of its channel."""
    if isinstance(record, Aggregate):
        values: dict[str, Any] = {"start": record.start, "end": record.end, **record.stats}
    else:
        values = {"ts": record.ts, "value": record.value}
    return f"{base_topic}/{record.sensor}/state", json.dumps(values).encode()


def _safe(name: str) -> str:
    """A name as Home Assistant accepts it in a topic and an id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)
