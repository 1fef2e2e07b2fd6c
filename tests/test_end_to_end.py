"""`edge-agent run` as a user runs it: a subprocess on a seeded simulated config."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.random_walk import RandomWalk

CONFIG = """
[agent]
device_id = "e2e"
data_dir = "{data}"
breaker = {{ failures = 2, cooldown = 0.2, max_cooldown = 1.0 }}

[[sensors]]
name = "walk"
driver = "random_walk"
interval = 0.05
start = 10.0
step = 0.5
seed = 5
window = {{ seconds = 0.5, stats = ["count", "mean", "min", "max", "first", "last"], grace = 0.2 }}

[[sensors]]
name = "ticks"
driver = "counter"
interval = 0.1
window = {{ seconds = 1, stats = ["count", "mean", "sum"], grace = 0.2 }}

[[sensors]]
name = "faulty"
driver = "counter"
interval = 0.05
timeout = 0.04
errors = 0.3
hangs = 0.3
seed = 9
window = {{ seconds = 0.5, stats = ["count"] }}

[[sinks]]
type = "jsonl"
path = "{data}/out.jsonl"
"""


def start_agent(tmp_path: Path) -> subprocess.Popen[str]:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG.format(data=tmp_path))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records(tmp_path: Path, sensor: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["sensor"] == sensor]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One agent run of about four seconds, stopped by SIGTERM as systemd would."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    agent = start_agent(tmp_path)
    time.sleep(4.0)
    agent.send_signal(signal.SIGTERM)
    _, logs = agent.communicate(timeout=10)
    assert agent.returncode == 0, logs
    return tmp_path, logs


def test_full_windows_hold_exactly_rate_times_length(run: tuple[Path, str]) -> None:
    tmp_path, _ = run
    for sensor, expected in (("walk", 10), ("ticks", 10)):
        aggregates = records(tmp_path, sensor)
        full = [a for a in aggregates if not a["partial"]]
        assert len(full) >= 2, aggregates
        assert [a["count"] for a in full] == [expected] * len(full)
        assert [a["seq"] for a in aggregates] == list(range(1, len(aggregates) + 1))


def test_means_are_the_ones_the_seeded_signal_implies(run: tuple[Path, str]) -> None:
    tmp_path, _ = run
    aggregates = records(tmp_path, "walk")
    # Regenerate the walk the agent sampled: same driver, same seed.
    walk = RandomWalk(start=10.0, step=0.5, seed=5)
    total = sum(a["count"] for a in aggregates)
    signal_values = [walk.sample() for _ in range(total)]
    offset = 0
    for aggregate in aggregates:  # consecutive windows partition the sampled sequence
        values = signal_values[offset : offset + aggregate["count"]]
        offset += aggregate["count"]
        stats = aggregate["stats"]
        assert stats["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert (stats["min"], stats["max"]) == (min(values), max(values))
        assert (stats["first"], stats["last"]) == (values[0], values[-1])


def test_counter_windows_are_contiguous(run: tuple[Path, str]) -> None:
    tmp_path, _ = run
    aggregates = records(tmp_path, "ticks")
    expected_first = 0
    for aggregate in aggregates:
        n = aggregate["count"]
        assert aggregate["stats"]["sum"] == sum(range(expected_first, expected_first + n))
        assert aggregate["stats"]["mean"] == pytest.approx(expected_first + (n - 1) / 2)
        expected_first += n


def test_sigterm_closes_open_windows_as_partial(run: tuple[Path, str]) -> None:
    tmp_path, _ = run
    for sensor in ("walk", "ticks"):
        aggregates = records(tmp_path, sensor)
        assert aggregates[-1]["partial"]  # the window open at SIGTERM, flushed
        # The first window is partial when the agent started in its middle, and only then.
        first = aggregates[0]
        assert first["partial"] == (first["count"] < 10)


def test_a_faulty_sensor_is_counted_and_logged_not_fatal(run: tuple[Path, str]) -> None:
    _, logs = run
    events = [json.loads(line) for line in logs.splitlines()]
    faulty = next(e for e in events if e["event"] == "sensor_counters" and e["sensor"] == "faulty")
    assert faulty["errors"] + faulty["timeouts"] > 5
    assert faulty["readings"] > 0  # it recovers between faults
    healthy = [e for e in events if e["event"] == "sensor_counters" and e["sensor"] != "faulty"]
    assert all(e["errors"] == e["timeouts"] == e["invalid"] == 0 for e in healthy)
    # Isolated: its breaker opened, and polls were skipped while it was open.
    assert any(e["event"] == "breaker_open" and e["sensor"] == "faulty" for e in events)
    assert faulty["skipped"] > 0
    # Logged once per burst, not once per failure.
    failures = [e for e in events if e["event"] == "read_failed"]
    assert 0 < len(failures) < faulty["errors"] + faulty["timeouts"]
    assert any(e["event"] == "stage_counters" or e["event"] == "window_counters" for e in events)


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    agent = start_agent(tmp_path)
    time.sleep(1.0)
    agent.send_signal(signal.SIGINT)
    _, logs = agent.communicate(timeout=10)
    assert agent.returncode == 0, logs
    assert json.loads(logs.splitlines()[-1])["event"] == "stopped"


def test_a_sink_that_cannot_be_opened_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where a directory should be")
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndevice_id = "e2e"\n[[sensors]]\nname = "c"\ndriver = "counter"\n'
        f'[[sinks]]\ntype = "jsonl"\npath = "{tmp_path}/taken/out.jsonl"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(config), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('edge-agent: cannot open sink "jsonl": ')
    assert "Traceback" not in done.stderr
