"""systemd's notify protocol, received on a real datagram socket as systemd would receive it."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, parse
from agent.daemon import Agent
from agent.notify import Notifier
from agent.pipeline import Stage
from agent.records import Reading
from drivers.base import Driver, Sample
from tests.test_sampling import Collect


class Systemd:
    """The receiving end of NOTIFY_SOCKET: each datagram with the time it came, taken by a
    thread of its own, so the times hold even while the agent's event loop is blocked."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while (data := self.sock.recv(4096)) != b"end":
            self.messages.append((time.monotonic(), data.decode()))

    def received(self) -> list[tuple[float, str]]:
        time.sleep(0.05)  # the last datagrams sent may still be on their way to the thread
        return list(self.messages)

    def close(self) -> None:
        self.sock.sendto(b"end", self.path)
        self.thread.join(1)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    receiver = Systemd(tmp_path / "notify")
    yield receiver
    receiver.close()


def config(sensors: list[dict[str, Any]]) -> Config:
    return parse({"agent": {"device_id": "t"}, "sensors": sensors}, Path("t.toml"))


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.send("READY=1")
    assert notifier.watchdog is None


def test_the_watchdog_belongs_to_the_process_systemd_named() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environment(env).watchdog == 30.0
    assert Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog == 30.0
    # Set for another process (our parent, say): not ours to feed.
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "1"}).watchdog is None


def test_a_gone_socket_is_no_error(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "absent")).send("WATCHDOG=1")


async def test_ready_then_watchdog_pings_then_stopping(systemd: Systemd) -> None:
    cfg = config([{"name": "c", "driver": "counter", "interval": 0.05}])
    agent = Agent(cfg, sinks=[Collect()], notifier=Notifier(systemd.path, watchdog_usec=200_000))
    await asyncio.wait_for(agent.run(duration=0.65), 5)
    messages = [m for _, m in systemd.received()]
    assert messages[0] == "READY=1\nSTATUS=reading 1 sensor"
    assert messages[-1] == "STOPPING=1"
    pings = messages[1:-1]
    assert set(pings) == {"WATCHDOG=1"}
    assert 5 <= len(pings) <= 9  # one every 0.1 s (half of WatchdogSec) for 0.65 s


class Quiet(Driver, name="test_quiet"):
    """A push device with nothing to say (a door nobody opens)."""

    async def stream(self) -> AsyncIterator[Sample]:
        await asyncio.Event().wait()
        yield None


async def test_an_idle_agent_keeps_pinging(systemd: Systemd) -> None:
    # No readings at all (a push sensor that stays quiet, no windows): the agent is healthy,
    # and its consumer still goes round often enough to show it.
    cfg = config([{"name": "quiet", "driver": "test_quiet", "interval": 1}])
    agent = Agent(cfg, sinks=[Collect()], notifier=Notifier(systemd.path, watchdog_usec=200_000))
    await asyncio.wait_for(agent.run(duration=0.65), 5)
    pings = [m for _, m in systemd.received() if m == "WATCHDOG=1"]
    assert len(pings) >= 5


class Stall(Stage, name="test_stall"):
    """Blocks the event loop once, as a stage stuck in a long computation would."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def transform(self, readings: Iterator[Reading]) -> Iterator[Reading]:
        for reading in readings:
            if not self.done:
                self.done = True
                time.sleep(0.6)
            yield reading


async def test_a_stalled_pipeline_stops_the_pings(systemd: Systemd) -> None:
    cfg = config(
        [
            {
                "name": "c",
                "driver": "counter",
                "interval": 0.05,
                "pipeline": [{"stage": "test_stall"}],
            }
        ]
    )
    agent = Agent(cfg, sinks=[Collect()], notifier=Notifier(systemd.path, watchdog_usec=200_000))
    await asyncio.wait_for(agent.run(duration=1.2), 5)
    times = [t for t, m in systemd.received() if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # systemd would have restarted it: no ping for longer than WatchdogSec (0.2 s) ...
    assert max(gaps) >= 0.55
    # ... and pings came again once it moved.
    assert sum(1 for g in gaps if g < 0.2) >= 3


def test_the_cli_notifies_the_socket_systemd_gives_it(systemd: Systemd, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ndevice_id = "d"\n[[sensors]]\nname = "c"\ndriver = "counter"\ninterval = 0.1\n',
        encoding="utf-8",
    )
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(path), "--duration", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    messages = [m for _, m in systemd.received()]
    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in messages
    assert messages[-1] == "STOPPING=1"
