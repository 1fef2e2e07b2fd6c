"""A driver packaged on its own is found through its entry point and runs, as a user installs it.

tests/plugin is a separate distribution, edge-agent-tide. pip installs it into the venv
running the tests; the installed `edge-agent` command then describes, checks and runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import FAULTS, sections

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).parent / "plugin"
DISTRIBUTION = "edge-agent-tide"

TIDE_HEADER = (
    "  tide - Simulated tide gauge: water level rising and falling twice a day, plus wave chop."
)

# A tide of 3.6 s instead of 12.42 h, so one short run sees the water rise and fall.
CONFIG = """
[agent]
device_id = "quay"
data_dir = "{tmp}/data"

[[sensors]]
name = "harbour"
driver = "tide"
interval = 0.1
mean_level = 2.0
amplitude = 1.5
period = 0.001
chop = 0.01
seed = 7
window = {{ seconds = 1, stats = ["count", "mean", "min", "max"] }}

[[sinks]]
type = "jsonl"
path = "{tmp}/out.jsonl"
"""

LOAD_TIDE = """
import inspect, json
from drivers import Driver
cls = Driver.registry.get("tide")
channels = [[c.name, c.unit, c.device_class] for c in cls.channels]
print(json.dumps({"module": cls.__module__, "file": inspect.getfile(cls), "mode": cls.mode,
                  "channels": channels}))
"""


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    # A pip config may name index URLs; with --no-index and no version check, pip fetches
    # nothing from anywhere, so the test also runs offline.
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def edge_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The venv's `edge-agent` command, with edge-agent-tide installed until the module ends."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip(f"pip is not installed in {sys.prefix}, so no package can be installed")
    scripts = sysconfig.get_path("scripts")
    command = shutil.which("edge-agent", path=scripts)
    if command is None:
        pytest.fail(f"no edge-agent command in {scripts}: install the project first (make test)")
    # Building writes egg-info and build/ next to the sources: build a copy, not the repository.
    source = tmp_path_factory.mktemp("plugin") / DISTRIBUTION
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    try:
        installed = pip(
            "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source)
        )
        if installed.returncode != 0:
            pytest.fail(
                f"pip could not install {PLUGIN}. It builds without isolation, so this venv's "
                "setuptools must build wheels by itself (setuptools >= 70.1, or an older one "
                f"with the wheel package):\n{installed.stderr}"
            )
        yield Path(command)
    finally:
        removed = pip("uninstall", "--yes", "--quiet", DISTRIBUTION)
        assert removed.returncode == 0, f"{DISTRIBUTION} is still installed:\n{removed.stderr}"


def run(command: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` in a fresh process, on this tree's agent as in test_cli."""
    env = dict(os.environ, PYTHONUTF8="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [str(command), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def test_describe_lists_the_installed_driver(edge_agent: Path, tmp_path: Path) -> None:
    result = run(edge_agent, "describe", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "tide" in sections(result.stdout)["drivers"]

    result = run(edge_agent, "describe", "tide", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    header, reports, *params = result.stdout.splitlines()
    assert header == TIDE_HEADER
    assert reports == "      reports: level m [distance]"
    assert [p.split(" (")[0].strip() for p in params] == [
        "mean_level",
        "amplitude",
        "period",
        "chop",
        *FAULTS,
    ]
    assert params[2] == (
        "      period (a number > 0; default 12.42): hours from one high water to the next"
    )


def test_the_entry_point_loads_the_installed_class(edge_agent: Path, tmp_path: Path) -> None:
    # describe does not show channels: ask the registry, in a fresh interpreter as the CLI does.
    result = run(Path(sys.executable), "-c", LOAD_TIDE, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    loaded = json.loads(result.stdout)
    assert loaded["module"] == "edge_agent_tide"
    # From site-packages, where pip put it, not from the sources under tests/.
    assert Path(loaded["file"]).is_relative_to(sysconfig.get_path("purelib"))
    assert loaded["mode"] == "poll"
    assert loaded["channels"] == [["level", "m", "distance"]]


def test_check_and_run_a_config_that_names_it(edge_agent: Path, tmp_path: Path) -> None:
    config = tmp_path / "quay.toml"
    config.write_text(CONFIG.format(tmp=tmp_path), encoding="utf-8")
    result = run(edge_agent, "check", "-c", str(config), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{config}: ok (1 sensor, 1 sink)\n"

    result = run(edge_agent, "run", "-c", str(config), "--duration", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    counters = next(e for e in events if e["event"] == "sensor_counters")
    assert counters["sensor"] == "harbour"
    assert counters["readings"] >= 20
    assert counters["errors"] == counters["invalid"] == counters["timeouts"] == 0

    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    aggregates = [json.loads(line) for line in lines]
    assert {(a["type"], a["sensor"], a["unit"]) for a in aggregates} == {
        ("aggregate", "harbour", "m")
    }
    assert 20 <= sum(a["count"] for a in aggregates) <= counters["readings"]
    lowest = min(a["stats"]["min"] for a in aggregates)
    highest = max(a["stats"]["max"] for a in aggregates)
    # Within mean ± amplitude, give or take the chop (0.01 m, so 0.1 m is ten sigma) ...
    assert 0.5 - 0.1 < lowest <= highest < 3.5 + 0.1
    # ... and three seconds of a 3.6 s tide span well over half its 3 m range.
    assert highest - lowest > 1.5
