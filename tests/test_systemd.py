"""The systemd unit and its installer.

systemd-analyze judges the unit as it is shipped. install.sh runs for real into a temporary
root, where it skips what needs the live system (the user, systemctl) and says so; the agent
it installed then runs from its own venv. The venv is built with `--no-deps`, so nothing is
downloaded: the agent's dependencies come from this test environment, linked in by name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import agent

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "edge-agent.service"
INSTALL = SYSTEMD / "install.sh"
EXEC_START = "/opt/edge-agent/venv/bin/edge-agent"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is missing (it comes with the systemd package)"
)


def _run(*command: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


# systemd-analyze


@needs_analyze
def test_the_unit_verifies_clean(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: a copy runs this environment's agent.
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1
    here = Path(sys.executable).with_name("edge-agent")
    assert here.exists(), f"{here}: the project is not installed in this environment"
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(EXEC_START, str(here)))
    result = subprocess.run(
        [ANALYZE, "verify", copy], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_the_unit_is_rated_2_or_lower() -> None:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", UNIT], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", result.stdout)
    assert found, f"no overall exposure level (needs systemd 250 or newer):\n{result.stderr}"
    assert float(found[1]) <= 2.0, result.stdout


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is missing")
@pytest.mark.skipif(
    os.geteuid() != 0, reason="systemd-sysusers --root copies file owners: root only"
)
def test_sysusers_makes_the_user_and_only_the_missing_groups(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    conf = (SYSTEMD / "edge-agent.sysusers").read_bytes()
    for _ in range(2):  # the second run finds everything in place
        subprocess.run(
            ["systemd-sysusers", f"--root={tmp_path}", "-"], input=conf, check=True, timeout=30
        )
    user = next(u for u in (etc / "passwd").read_text().splitlines() if u.startswith("edge-agent:"))
    assert user.endswith(":/var/lib/edge-agent:/usr/sbin/nologin")
    groups = {g.split(":")[0]: g.split(":") for g in (etc / "group").read_text().splitlines()}
    assert groups["dialout"][2] == "20"  # the existing group is kept
    for name in ("dialout", "i2c", "gpio", "spi"):
        assert groups[name][3] == "edge-agent"


# install.sh into a temporary root


def _dependencies(venv: Path, into: Path) -> Path:
    """Link the distributions the installed edge-agent requires, as this environment has them."""
    (metadata,) = venv.glob("lib/python*/site-packages/edge_agent-*.dist-info")
    pending = list(Distribution.at(metadata).requires or [])
    seen: set[str] = set()
    into.mkdir()
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.name in seen or not (
            requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        ):
            continue
        seen.add(requirement.name)
        dist = distribution(requirement.name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "bin")}:
            if not (into / top).exists():
                (into / top).symlink_to(Path(str(dist.locate_file(top))))
        pending += dist.requires or []
    return into


def _install(root: Path, *options: str) -> str:
    return _run(INSTALL, "--root", root, "--python", sys.executable, "--no-deps", *options)


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root: its mode, modification time and content. Python's bytecode
    caches are left out, and so are directories' times: running the installed agent (the
    installer's own check does) may write caches, which is no change to the installation."""
    state = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        info = path.lstat()
        mtime = info.st_mtime_ns
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content, mtime = "", 0
        state[str(path.relative_to(root))] = (info.st_mode, mtime, content)
    return state


def _build_leftovers() -> dict[str, int]:
    paths = [*REPO.glob("*.egg-info"), REPO / "build"]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.exists()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    before = _build_leftovers()
    root = tmp_path_factory.mktemp("root")
    output = _install(root)
    assert _build_leftovers() == before, "the installer built inside the repository"
    return root, output


@pytest.fixture(scope="module")
def agent_env(
    installed: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root, _ = installed
    deps = _dependencies(root / "opt/edge-agent/venv", tmp_path_factory.mktemp("deps") / "deps")
    return {**os.environ, "PYTHONPATH": str(deps), "PYTHONDONTWRITEBYTECODE": "1"}


def test_install_puts_each_file_in_place(installed: tuple[Path, str]) -> None:
    root, output = installed
    modes = {
        "etc/systemd/system/edge-agent.service": 0o644,
        "etc/sysusers.d/edge-agent.conf": 0o644,
        "etc/edge-agent": 0o755,
        "etc/edge-agent/agent.toml": 0o644,
        "opt/edge-agent/venv/bin/edge-agent": 0o755,
    }
    assert {p: (root / p).stat().st_mode & 0o7777 for p in modes} == modes
    assert (root / "etc/systemd/system/edge-agent.service").read_text() == UNIT.read_text()
    config = (root / "etc/edge-agent/agent.toml").read_text()
    assert 'data_dir = "/var/lib/edge-agent"' in config
    assert "@DEVICE_ID@" not in config
    # Under a root prefix the installer leaves the live system alone, and says what it skipped.
    assert "skipped creating the user edge-agent" in output
    assert "skipped systemctl: a root prefix was given" in output
    assert not (root / "var/lib/edge-agent").exists()  # systemd makes it (StateDirectory=)


def test_the_installed_agent_runs_from_its_venv(
    installed: tuple[Path, str], agent_env: dict[str, str], tmp_path: Path
) -> None:
    root, _ = installed
    venv = root / "opt/edge-agent/venv"
    assert _run(venv / "bin/edge-agent", "--version").strip() == f"edge-agent {agent.__version__}"
    # Run away from this repository, so that only the venv and the dependencies can be imported.
    code = "import agent, drivers; print(agent.__file__, drivers.__file__)"
    where = _run(venv / "bin/python", "-c", code, env=agent_env, cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    config = root / "etc/edge-agent/agent.toml"
    checked = _run(venv / "bin/edge-agent", "check", "-c", config, env=agent_env, cwd=tmp_path)
    assert checked == f"{config}: ok (1 sensor, 1 sink)\n"


def test_a_second_run_changes_nothing_and_keeps_an_edited_config(
    installed: tuple[Path, str],
) -> None:
    root, _ = installed
    config = root / "etc/edge-agent/agent.toml"
    config.write_text(config.read_text() + "# edited on the board\n")
    before = _snapshot(root)
    output = _install(root)
    assert _snapshot(root) == before
    assert f"kept: {config}" in output
    assert "unchanged: " + str(root / "opt/edge-agent/venv") in output


def test_uninstall_keeps_the_config_and_the_buffer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install(root)
    buffer = root / "var/lib/edge-agent/buffer"
    buffer.mkdir(parents=True)  # what the service leaves behind
    (buffer / "00000001.seg").write_bytes(b"records")
    for _ in range(2):  # the second run has nothing left to do, and succeeds
        output = _run(INSTALL, "--uninstall", "--root", root)
    assert "skipped systemctl" in output
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/sysusers.d/edge-agent.conf").exists()
    assert (root / "etc/edge-agent/agent.toml").is_file()
    assert (buffer / "00000001.seg").read_bytes() == b"records"
