"""Uplink pieces that need no broker: backoff, state recovery, secrets, the disk reserve."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest

from agent.buffer import Buffer
from agent.config import ConfigError, parse
from agent.uplink import Uplink, jittered


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
