"""bench/fleet.py: real agent processes against a real mosquitto; what counts is that every
aggregate arrives, not how fast (tests time nothing)."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.wire import decode
from bench import fleet
from bench.fleet import Watcher, missing, run


def test_two_agents_every_aggregate_arrives(tmp_path: Path) -> None:
    result = run(agents=2, seconds=3.0, wave=2, scratch=tmp_path, settle=0.5)
    assert result.problems == []
    assert result.exited_ok == 2
    assert result.complete == 2
    assert {a.device for a in result.agents} == {"fleet-000", "fleet-001"}
    assert result.aggregates >= 2 * 2 * 3  # 2 agents, 3 channels, at least 2 windows each
    assert all(a.peak_rss > 0 for a in result.agents)


def test_an_aggregate_lost_on_the_way_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received = Watcher._on_message

    def lossy(self: Watcher, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == "edge/fleet-001/s1/agg" and decode(bytes(msg.payload))["seq"] == 2:
            return  # as if the broker had lost it
        received(self, client, userdata, msg)

    monkeypatch.setattr(Watcher, "_on_message", lossy)
    monkeypatch.setattr(fleet, "ARRIVAL", 1.0)
    result = run(agents=2, seconds=3.0, wave=2, scratch=tmp_path, settle=0.5)
    assert result.exited_ok == 2
    assert result.complete == 1
    assert len(result.problems) == 1
    assert result.problems[0].startswith("fleet-001: missing s1 2 of 1-")


def test_missing_lists_gaps_and_a_missing_tail() -> None:
    assert missing({1, 2, 3}, 3) == []
    assert missing({1, 3, 4}, 5) == [2, 5]
    assert missing(set(), 2) == [1, 2]
