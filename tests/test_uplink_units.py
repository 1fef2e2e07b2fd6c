"""Uplink pieces that need no broker: backoff, state recovery, secrets, the disk reserve."""

from __future__ import annotations

import asyncio
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from agent import wire
from agent.buffer import Buffer
from agent.config import ConfigError, parse
from agent.demo import free_port
from agent.records import Reading
from agent.resilience import jittered
from agent.uplink import Uplink


def test_backoff_is_full_jitter_between_base_and_a_capped_ceiling() -> None:
    delays = [jittered(1.0, 60.0, failures) for failures in (0, 1, 3, 10, 5000) for _ in range(50)]
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert max(jittered(1.0, 60.0, 5000) for _ in range(200)) > 30  # a long outage waits long
    assert {round(jittered(1.0, 60.0, 0), 9) for _ in range(20)} == {1.0}  # ceiling = base


def mqtt_config(tmp_path: Path, **mqtt: object) -> object:
    return parse(
        {
            "agent": {"device_id": "pi", "data_dir": str(tmp_path)},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {"port": 1, **mqtt},
        },
        tmp_path / "t.toml",
    )


def test_a_password_needs_a_username(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        mqtt_config(tmp_path, password_env="PW")
    assert caught.value.lines() == [
        f"{tmp_path / 't.toml'}: mqtt.username: expected a username to go with the password, "
        "got none"
    ]


def test_a_corrupt_state_next_to_the_cursor_does_not_stop_the_start(tmp_path: Path) -> None:
    """Regression: json.loads on the saved state raised, and the agent would not start."""
    config = mqtt_config(tmp_path)
    (tmp_path / "buffer").mkdir()
    state = struct.pack("<Q", 0) + b'{"seq": {"x"'  # the cursor is sound, the state is not
    (tmp_path / "buffer" / "cursor").write_bytes(struct.pack("<I", zlib.crc32(state)) + state)
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path, sensors=[])  # type: ignore[attr-defined]
    assert uplink.open() == {}
    uplink.buffer.close()


def test_a_short_disk_drops_only_what_makes_room(tmp_path: Path) -> None:
    """Regression: dropped segments are deleted at commit, so the space check kept seeing a
    full disk and dropped the whole backlog for one record."""
    free = shutil.disk_usage(tmp_path).free
    record = b"x" * 1000
    with Buffer(tmp_path, segment_bytes=64 << 10, reserve_bytes=free - (2 << 20)) as buffer:
        for _ in range(3_000):  # about 3 MiB: a third more than the disk can spare
            buffer.append(record)
        kept = buffer.pending_bytes
    assert buffer.stats.dropped > 0
    assert kept > 1 << 20  # without the fix: one segment, 64 KiB


def test_the_breaker_cool_down_starts_where_the_retries_left_off(tmp_path: Path) -> None:
    """Regression: once open, the breaker waited base (0.5-1 s), less than the retries before."""
    config = mqtt_config(tmp_path, backoff={"base": 1.0, "cap": 60.0})
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path, sensors=[])  # type: ignore[attr-defined]
    for _ in range(3):
        uplink.breaker.failure()
    wait = uplink.breaker.reopen_at - time.monotonic()
    assert 4.0 - 0.1 <= wait <= 8.0  # equal jitter over 8 s: never below the 4 s of the retries


async def test_a_broker_problem_is_logged_once_per_broker_however_many_rounds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: with failover, the problems of two brokers alternated and each round logged."""
    dead = [free_port(), free_port()]
    config = mqtt_config(
        tmp_path,
        port=dead[0],
        brokers=[f"127.0.0.1:{dead[1]}"],
        backoff={"base": 0.01, "cap": 0.02},
    )
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path, sensors=[])  # type: ignore[attr-defined]
    uplink.open()
    with caplog.at_level("INFO", logger="agent.uplink"):
        task = asyncio.create_task(uplink.run())
        await asyncio.sleep(0.6)
        uplink.stop()
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(uplink.close(), 10)
    warnings = [r for r in caplog.records if r.getMessage() == "broker_unavailable"]
    brokers = sorted(r.fields["broker"] for r in warnings)  # type: ignore[attr-defined]
    assert brokers == sorted([f"localhost:{dead[0]}", f"127.0.0.1:{dead[1]}"])


def test_broker_addresses_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        mqtt_config(tmp_path, brokers=["backup:70000", "no-port"])
    assert [line.split(": ", 1)[1] for line in caught.value.lines()] == [
        'mqtt.brokers[1]: expected a string of the form host:port, got "no-port"'
    ]
    with pytest.raises(ConfigError) as caught:
        mqtt_config(tmp_path, brokers=["backup:70000"])
    assert caught.value.lines()[0].endswith(
        'mqtt.brokers: expected ports from 1 to 65535, got "backup:70000"'
    )
    config = mqtt_config(tmp_path, brokers=["[::1]:1883", "backup:8883"])
    uplink = Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path, sensors=[])  # type: ignore[attr-defined]
    assert uplink.addresses[1:] == [("::1", 1883), ("backup", 8883)]


def test_a_batch_of_records_buffered_in_two_encodings_is_one_valid_message() -> None:
    """Regression: after `payload` changed with a backlog, a batch mixed JSON and msgpack."""
    old = wire.encode(Reading("x", 1.0, 1.0), "pi", "json")
    new = wire.encode(Reading("x", 2.0, 2.0), "pi", "msgpack")
    batch = wire.join([wire.convert(p, "msgpack") for p in (old, new)])
    assert [r["value"] for r in wire.split(batch)] == [1.0, 2.0]
    assert wire.split(wire.mark_replay(wire.convert(new, "json")))[0]["replay"] is True
