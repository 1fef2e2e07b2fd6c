"""What the agent says and hears over MQTT beside its records: remote tuning with its replies
and audit trail, and Home Assistant discovery with JSON states."""

from __future__ import annotations

import json
from collections.abc import Sequence

from agent import homeassistant, log
from agent.config import HomeAssistant
from agent.records import Aggregate, Reading
from agent.tuning import Refused, Tuner
from agent.uplink import Uplink

_log = log.get("agent.remote")


class RemoteTuning:
    """Takes `set` commands for this device only, answers each on `<topic>/result`, and audits
    each change in the log and on `{prefix}/{device}/audit`."""

    def __init__(self, tuner: Tuner, uplink: Uplink) -> None:
        self.tuner, self.uplink = tuner, uplink
        self.refused = log.Burst()  # a flood of bad commands is logged once, then counted
        self.topic_filter = f"{uplink.base_topic}/set/+/+/+"  # our own device's topics, no other
        self.audit_topic = f"{uplink.base_topic}/audit"
        uplink.subscriptions[self.topic_filter] = self.handle

    def handle(self, topic: str, payload: bytes, retained: bool) -> None:
        sensor, stage, param = topic.rsplit("/", 3)[1:]
        asked = {"sensor": sensor, "stage": stage, "param": param}
        try:
            if retained:  # a retained command would be applied again at every connection
                raise Refused("a retained command is not applied; publish it without retain")
            change = self.tuner.apply(sensor, stage, param, payload, source="mqtt")
        except Refused as e:
            if self.refused.fail():
                _log.warning("tuning_refused", **asked, reason=str(e))
            reply = {"ok": False, **asked, "error": str(e)}
        else:
            if self.refused.failures:
                _log.info("tuning_refusals", count=self.refused.end())
            # The change's own time stays in the audit message; the log line has its own.
            _log.info("tuned", **{k: v for k, v in change.items() if k != "ts"})
            self.uplink.publish_now(self.audit_topic, json.dumps(change).encode(), retain=False)
            reply = {"ok": True, **change}
        self.uplink.publish_now(f"{topic}/result", json.dumps(reply).encode(), retain=False)


class Discovery:
    """Announces every channel to Home Assistant on each connection (and whenever Home
    Assistant says it came online), then mirrors each live record as a JSON state."""

    def __init__(
        self, settings: HomeAssistant, entities: Sequence[homeassistant.Entity], uplink: Uplink
    ) -> None:
        self.settings, self.entities, self.uplink = settings, entities, uplink
        uplink.on_connected.append(self.announce)
        # Home Assistant's birth message: after its restart it needs the configs again.
        uplink.subscriptions[f"{settings.discovery_prefix}/status"] = self._birth

    def announce(self) -> None:
        for entity in self.entities:
            topic, payload = homeassistant.discovery(
                entity,
                device=self.uplink.device,
                base_topic=self.uplink.base_topic,
                discovery_prefix=self.settings.discovery_prefix,
            )
            self.uplink.publish_now(topic, payload, retain=True)

    def _birth(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload == b"online":
            self.announce()

    def state(self, record: Reading | Aggregate) -> None:
        topic, payload = homeassistant.state(record, self.uplink.base_topic)
        self.uplink.publish_now(topic, payload, retain=True, qos=0)
