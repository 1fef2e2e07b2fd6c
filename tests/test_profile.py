"""`edge-agent profile`: the cProfile top functions of a config's pipelines (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_profile_names_the_pipeline_functions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "-c", str(ROOT / "config/simulated.toml"), "--readings", "200"]) == 0
    out = capsys.readouterr().out
    assert "800 readings (200 for each of 4 channels)" in out
    assert "by cumulative time" in out
    assert "by own time" in out
    for function in ("pipeline.py", "(run)", "stages.py", "(transform)", "window.py"):
        assert function in out


def test_profile_refuses_no_readings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "-c", str(ROOT / "config/simulated.toml"), "--readings", "0"]) == 2
    assert "--readings: expected 1 or more, got 0" in capsys.readouterr().err


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """bench/run.py with `args`, as a user runs it."""
    command = [sys.executable, "bench/run.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bench_runner_smoke(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = bench("--quick", "--only", "wire", "--output", str(results))
    assert done.returncode == 0, done.stderr
    assert "wire bytes per aggregate" in done.stdout
    assert '"figures"' in results.read_text()


def test_bench_only_one_module_keeps_the_others_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    earlier = {"module": "memory", "name": "kept", "value": 1}
    results.write_text(json.dumps({"machine": {}, "quick": True, "figures": [earlier]}))
    done = bench("--quick", "--only", "wire", "--output", str(results))
    assert done.returncode == 0, done.stderr
    figures = json.loads(results.read_text())["figures"]
    assert [f["module"] for f in figures] == ["memory", "wire", "wire"]
    assert figures[0] == earlier
    assert all(f["date"] for f in figures[1:])


def test_the_readme_shows_the_table_of_the_results_file() -> None:
    """The Performance table is bench/run.py --markdown of bench/results.json, so the two
    cannot drift apart: after `make bench`, paste the new table into the README."""
    done = bench("--markdown")
    assert done.returncode == 0, done.stderr
    table = done.stdout.strip()
    assert table.count("\n") >= 10
    assert table in (ROOT / "README.md").read_text()
