"""`edge-agent profile`: the cProfile top functions of a config's pipelines (no timings checked)."""

from __future__ import annotations

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


def test_bench_runner_smoke(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "wire", "--output", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wire bytes per aggregate" in done.stdout
    assert '"figures"' in results.read_text()
