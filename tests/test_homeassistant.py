"""Home Assistant discovery messages and JSON states, as Home Assistant reads them."""

from __future__ import annotations

import json

from agent.homeassistant import Entity, discovery, pick_stat, state
from agent.records import Aggregate, Reading

BASE = "edge/greenhouse-1"


def config_of(entity: Entity) -> tuple[str, dict[str, object]]:
    topic, payload = discovery(
        entity, device="greenhouse-1", base_topic=BASE, discovery_prefix="homeassistant"
    )
    return topic, json.loads(payload)


def test_a_measurement_is_a_sensor_with_unit_class_and_the_windows_mean() -> None:
    topic, config = config_of(Entity("climate.temperature", "°C", "temperature", "mean"))
    assert topic == "homeassistant/sensor/greenhouse-1/climate_temperature/config"
    assert config["unit_of_measurement"] == "°C"
    assert config["device_class"] == "temperature"
    assert config["state_class"] == "measurement"
    assert config["state_topic"] == f"{BASE}/climate.temperature/state"
    assert config["value_template"] == "{{ value_json.mean }}"
    assert config["unique_id"] == "edge-agent-greenhouse-1-climate_temperature"


def test_every_channel_is_grouped_under_one_device_and_bound_to_the_status() -> None:
    _, first = config_of(Entity("air", "°C", "temperature", "mean"))
    _, second = config_of(Entity("hall", "", "motion", None))
    assert first["device"] == second["device"]
    assert first["device"]["identifiers"] == ["edge-agent-greenhouse-1"]  # type: ignore[index]
    for config in (first, second):
        assert config["availability_topic"] == f"{BASE}/status"
        assert config["availability_template"] == "{{ value_json.state }}"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )


def test_a_switch_like_channel_is_a_binary_sensor() -> None:
    topic, config = config_of(Entity("hall", "", "motion", None))
    assert topic == "homeassistant/binary_sensor/greenhouse-1/hall/config"
    assert config["device_class"] == "motion"
    assert config["value_template"] == "{{ 'ON' if value_json.value > 0.5 else 'OFF' }}"
    assert "unit_of_measurement" not in config


def test_a_moisture_percentage_stays_a_sensor() -> None:
    topic, _ = config_of(Entity("soil", "%", "moisture", "mean"))
    assert topic.startswith("homeassistant/sensor/")


def test_a_timestamp_channel_is_turned_into_a_date() -> None:
    _, config = config_of(Entity("gps.time", "s", "timestamp", "last"))
    assert config["value_template"] == "{{ as_datetime(value_json.last) }}"
    assert "state_class" not in config
    assert "unit_of_measurement" not in config  # Home Assistant refuses a timestamp with one


def test_the_state_shown_is_the_mean_or_the_last_value() -> None:
    assert pick_stat(("count", "mean", "max"), binary=False) == "mean"
    assert pick_stat(("count", "max", "last"), binary=True) == "last"
    assert pick_stat(("count",), binary=False) == "count"


def test_states_are_json_whatever_the_agents_payload_format() -> None:
    aggregate = Aggregate("air", 60.0, 120.0, 12, {"mean": 21.5, "max": 22.0}, "°C", 7)
    topic, payload = state(aggregate, BASE)
    assert topic == f"{BASE}/air/state"
    assert json.loads(payload) == {"start": 60.0, "end": 120.0, "mean": 21.5, "max": 22.0}
    topic, payload = state(Reading("hall", 5.0, 1.0), BASE)
    assert topic == f"{BASE}/hall/state"
    assert json.loads(payload) == {"ts": 5.0, "value": 1.0}
