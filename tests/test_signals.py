"""The agent as a service sees it: a real `edge-agent run` process, stopped with SIGTERM and
reloaded with SIGHUP, telling a real notify socket what it is doing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_notify import Systemd

SENSOR = '[[sensors]]\nname = "{name}"\ndriver = "counter"\ninterval = 0.05\n'
WINDOWED = SENSOR + 'window = {{ seconds = 3600, stats = ["count"] }}\n'


def write_config(path: Path, out: Path, sensors: str) -> None:
    path.write_text(
        f'[agent]\ndevice_id = "d"\ndata_dir = "{path.parent / "data"}"\n'
        f'[[sinks]]\ntype = "jsonl"\npath = "{out}"\n{sensors}',
        encoding="utf-8",
    )


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    receiver = Systemd(tmp_path / "notify")
    yield receiver
    receiver.close()


def start(config: Path, systemd: Systemd) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config), "--log-json"],
        env={**os.environ, "NOTIFY_SOCKET": systemd.path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds:g} s for {what}")
        time.sleep(0.02)


def records(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def said(systemd: Systemd, message: str) -> bool:
    return any(m.startswith(message) for _, m in systemd.messages)


def test_sigterm_flushes_open_windows_as_partial_and_exits_0(
    tmp_path: Path, systemd: Systemd
) -> None:
    config, out = tmp_path / "agent.toml", tmp_path / "out.jsonl"
    write_config(config, out, WINDOWED.format(name="c"))
    agent = start(config, systemd)
    wait_for(lambda: said(systemd, "READY=1"), "READY")
    time.sleep(0.3)  # a few readings into an hour-long window
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=20)
    assert agent.returncode == 0, stderr
    [aggregate] = records(out)
    assert aggregate["partial"] is True
    assert isinstance(aggregate["count"], int)
    assert aggregate["count"] >= 3
    assert [m for _, m in systemd.messages][-1] == "STOPPING=1"


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_over_a_bad_one(
    tmp_path: Path, systemd: Systemd
) -> None:
    config, out = tmp_path / "agent.toml", tmp_path / "out.jsonl"
    write_config(config, out, SENSOR.format(name="before"))
    agent = start(config, systemd)
    try:
        wait_for(lambda: any(r.get("sensor") == "before" for r in records(out)), "readings")

        # A bad config: rejected with check's own message; the agent goes on as it was.
        config.write_text(config.read_text().replace("interval = 0.05", 'interval = "fast"'))
        agent.send_signal(signal.SIGHUP)
        count = len(records(out))
        wait_for(lambda: len(records(out)) > count + 5, "readings after a rejected reload")
        assert not said(systemd, "RELOADING=1")

        # A good one: taken, and systemd is told about the reload.
        write_config(config, out, SENSOR.format(name="after"))
        agent.send_signal(signal.SIGHUP)
        wait_for(lambda: any(r.get("sensor") == "after" for r in records(out)), "new readings")
        wait_for(lambda: [m[:8] for _, m in systemd.messages].count("READY=1\n") == 2, "READY")
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=20)
    assert agent.returncode == 0
    assert f'{config}: sensors[0].interval: expected a number ≥ 0.001, got "fast"' in stderr
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert events.count("reload_rejected") == 1
    assert events.count("reloaded") == 1
    messages = [m.split("\n")[0] for _, m in systemd.messages if "WATCHDOG" not in m]
    assert messages == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


def test_a_stop_right_after_a_reload_stops_for_good(tmp_path: Path, systemd: Systemd) -> None:
    config, out = tmp_path / "agent.toml", tmp_path / "out.jsonl"
    write_config(config, out, SENSOR.format(name="c"))
    agent = start(config, systemd)
    wait_for(lambda: said(systemd, "READY=1"), "READY")
    agent.send_signal(signal.SIGHUP)
    agent.send_signal(signal.SIGTERM)  # lands while the old agent is still shutting down
    _, stderr = agent.communicate(timeout=20)
    assert agent.returncode == 0, stderr
    assert [m for _, m in systemd.messages][-1] == "STOPPING=1"


def test_a_reloaded_config_that_cannot_start_falls_back_to_the_running_one(
    tmp_path: Path, systemd: Systemd
) -> None:
    config, out = tmp_path / "agent.toml", tmp_path / "out.jsonl"
    write_config(config, out, SENSOR.format(name="c"))
    agent = start(config, systemd)
    try:
        wait_for(lambda: len(records(out)) > 3, "readings")
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        write_config(config, blocked / "out.jsonl", SENSOR.format(name="c"))  # checks, can't open
        agent.send_signal(signal.SIGHUP)
        wait_for(lambda: [m[:8] for _, m in systemd.messages].count("READY=1\n") == 2, "READY")
        count = len(records(out))
        wait_for(lambda: len(records(out)) > count + 5, "readings on the old config")
        assert agent.poll() is None  # still running: systemd would only restart it into it
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=20)
    assert agent.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e["event"] == "reload_failed"]
    assert "cannot open sink" in failed["error"]
