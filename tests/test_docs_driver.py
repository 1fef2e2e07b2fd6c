"""docs/writing-a-driver.md stays true: its complete example runs, and its code compiles.

The example's driver and tests are written into a package of their own and run by pytest in a
subprocess, as a reader would run them. `describe` and `check` must print what the page shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-driver.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DRIVER = "edge_agent_sds011/__init__.py"
TESTS = "tests/test_sds011.py"
DESCRIBE = "$ edge-agent describe sds011"
# A reader's project has no pytest settings: set the one pytest-asyncio warns about.
PYTEST = "-m pytest -q -p no:cacheprovider -o asyncio_default_fixture_loop_scope=function"

# What `edge-agent` does once the example's package is installed: its entry point imports the
# module, which registers "sds011". Importing it here keeps the venv as it is.
CLI = """
import sys
import edge_agent_sds011
from agent.cli import main
sys.exit(main(["describe", "sds011"]) or main(["check", "--config", sys.argv[1]]))
"""


def blocks(language: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [code for lang, code in FENCE.findall(text) if lang == language]


def example() -> dict[str, str]:
    """The page's Python blocks that open with a file name comment, by that name."""
    files = {}
    for code in blocks("python"):
        first = code.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            files[first.removeprefix("# ")] = code
    return files


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """The example written out as a reader's project: the driver's package and its tests."""
    files = example()
    for name in (DRIVER, TESTS):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name], encoding="utf-8")
    return tmp_path


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_every_python_block_compiles() -> None:
    for code in blocks("python"):
        compile(code, f"{DOC.name}: {code.splitlines()[0]}", "exec")
    assert {DRIVER, TESTS} <= set(example())


def test_the_example_passes_its_own_tests(package: Path) -> None:
    result = run([*PYTEST.split(), TESTS], package)
    assert result.returncode == 0, result.stdout + result.stderr


def test_describe_and_check_print_what_the_page_shows(package: Path) -> None:
    [shown] = [code for code in blocks("") if code.startswith(DESCRIBE)]
    [config] = [code for code in blocks("toml") if 'driver = "sds011"' in code]
    site = package / "site.toml"
    site.write_text(f'[agent]\ndevice_id = "pi"\n\n{config}', encoding="utf-8")
    result = run(["-c", CLI, str(site)], package)
    assert result.returncode == 0, result.stderr
    described = shown.removeprefix(DESCRIBE + "\n")
    assert result.stdout == f"{described}{site}: ok (1 sensor, 0 sinks)\n"
