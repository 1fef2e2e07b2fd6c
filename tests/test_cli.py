"""The `edge-agent` command: check, run's refusal of a bad config, describe, --version."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest

import agent
from agent.cli import main
from agent.clock import SYSTEM_CLOCK, Clock
from agent.pipeline import Stage
from agent.records import Reading
from agent.registry import Registry
from agent.schema import Bounds, Injected, Rate
from agent.sinks import Sink
from drivers.base import Driver, Sample
from drivers.simulated import Signal

ROOT = Path(__file__).resolve().parents[1]

AGENT = '[agent]\ndevice_id = "dev-1"\n'
SINE = '[[sensors]]\nname = "air"\ndriver = "sine"\n'

BUILTIN = {
    "drivers": ["counter", "random_walk", "replay", "sine"],
    "stages": ["calibrate", "delta", "ema", "median", "moving_average", "range", "throttle"],
    "sinks": ["console", "jsonl"],
}
SINE_HEADER = (
    "  sine - Simulated sine wave: offset + amplitude × sin(2π t / period), plus optional noise."
)
FAULTS = ["seed", "dropouts", "spikes", "spike_size", "errors", "hangs"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command, in a fresh interpreter."""
    env = dict(os.environ, PYTHONUTF8="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BAD = (
    '[agent]\ndevice_id = "my dev"\n'
    '[[sensors]]\nname = "air"\ndriver = "sin"\n'
    '[[sensors]]\nname = "soil"\ndriver = "sine"\n'
    'pipeline = [{ stage = "moving_average", size = "ten" },'
    ' { stage = "range", min = 2, max = 1 }]\n'
    'window = { seconds = 0, stats = ["mean", "max"] }\n'
    "[agent.breaker]\ncooldown = 10\nmax_cooldown = 5\n"
)


def bad_lines(path: Path) -> list[str]:
    """What `check` and `run` print on stderr for BAD, one line per problem."""
    return [
        f"{path}: agent.device_id: expected a string made of letters, digits, '_' and '-', "
        'got "my dev"',
        f"{path}: agent.breaker.cooldown: expected a number ≤ max_cooldown (5), got 10",
        f'{path}: sensors[0].driver: unknown driver "sin"; did you mean "sine"?',
        f"{path}: sensors[1].window.seconds: expected a number ≥ 0.001, got 0",
        f'{path}: sensors[1].pipeline[0].size: expected an integer from 1 to 10000, got "ten"',
        f"{path}: sensors[1].pipeline[1].min: expected min ≤ max, got min = 2, max = 1",
    ]


# --- --version -----------------------------------------------------------------------------


def test_version_in_a_subprocess(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"edge-agent {agent.__version__}\n"
    assert result.stderr == ""


def test_version_comes_from_the_package(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.cli.__version__", "9.8.7-test")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == "edge-agent 9.8.7-test\n"


# --- check -----------------------------------------------------------------------------------


def test_check_a_valid_config_exits_0(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        AGENT
        + SINE
        + '[[sensors]]\nname = "soil"\ndriver = "counter"\n[[sinks]]\ntype = "console"\n',
    )
    result = cli("check", "-c", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: ok (2 sensors, 1 sink)\n"


def test_check_the_shipped_config(tmp_path: Path) -> None:
    result = cli("check", "--config", str(ROOT / "config" / "simulated.toml"), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{ROOT / 'config' / 'simulated.toml'}: ok (")


def test_check_a_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = cli("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == bad_lines(path)
    assert "Traceback" not in result.stderr


def test_check_prints_the_path_as_given(tmp_path: Path) -> None:
    write(tmp_path, AGENT + SINE + "interval = 0\n", name="relative.toml")
    result = cli("check", "-c", "relative.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "relative.toml: sensors[0].interval: expected a number ≥ 0.001, got 0\n"


def test_check_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = cli("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}: cannot read the file: No such file or directory\n"


def test_check_a_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, AGENT + "[[sensors]\n")
    result = cli("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in line


def test_check_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, AGENT + SINE + 'pipeline = [{ stage = "medain" }]\n')
    assert main(["check", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f'{path}: sensors[0].pipeline[0].stage: unknown stage "medain"; did you mean "median"?\n'
    )
    write(tmp_path, AGENT + SINE)
    assert main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr() == (f"{path}: ok (1 sensor, 0 sinks)\n", "")


# --- run refuses a bad config --------------------------------------------------------------


def test_run_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = f'[[sinks]]\ntype = "jsonl"\npath = "{out / "agg.jsonl"}"\n[[sinks]]\ntype = "console"\n'
    path = write(tmp_path, BAD + sink)
    result = cli("run", "-c", str(path), "--duration", "5", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == bad_lines(path)
    assert not out.exists()  # no sink was opened


def test_run_and_check_report_the_same_lines(tmp_path: Path) -> None:
    path = write(tmp_path, AGENT + '[[sensors]]\nname = "air"\ndriver = "replay"\n')
    checked = cli("check", "-c", str(path), cwd=tmp_path)
    ran = cli("run", "-c", str(path), cwd=tmp_path)
    assert checked.returncode == ran.returncode == 2
    assert ran.stdout == ""
    assert ran.stderr == checked.stderr
    assert (
        ran.stderr == f"{path}: sensors[0].path: expected a path (string), got nothing (missing)\n"
    )


def test_run_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = cli("run", "-c", str(path), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{path}: cannot read the file: No such file or directory\n"


# --- describe --------------------------------------------------------------------------------


def sections(text: str) -> dict[str, dict[str, list[str]]]:
    """describe's output as {kind: {component: [parameter lines]}}."""
    result: dict[str, dict[str, list[str]]] = {}
    kind = component = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            kind = line.removesuffix(":")
            result[kind] = {}
        elif line.startswith("      reports: "):
            continue  # a driver's channels, checked on their own
        elif line.startswith("      "):
            result[kind][component].append(line.strip())
        elif line.startswith("  "):
            component = line[2:].partition(" - ")[0]
            result[kind][component] = []
    return result


def test_describe_lists_every_builtin_component(tmp_path: Path) -> None:
    result = cli("describe", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    listed = sections(result.stdout)
    assert list(listed) == ["drivers", "stages", "sinks"]
    for kind, names in BUILTIN.items():
        assert set(names) <= set(listed[kind]), kind
        assert list(listed[kind]) == sorted(listed[kind])
    assert SINE_HEADER in result.stdout.splitlines()
    assert listed["stages"]["range"] == [
        "min (a number; default none; tunable)",
        "max (a number; default none; tunable)",
        'mode (one of "drop", "clamp"; default "drop")',
    ]
    assert listed["stages"]["median"] == ["size (an integer from 1 to 10000; default 5)"]
    assert listed["stages"]["throttle"] == ["seconds (a number > 0; required; tunable)"]
    assert listed["stages"]["delta"] == [
        "change (a number ≥ 0; required; tunable)",
        "heartbeat (a number > 0; default none; tunable): "
        "re-send the value after this many seconds",
    ]
    assert listed["stages"]["ema"] == ["alpha (a number > 0 and ≤ 1; default 0.1; tunable)"]
    assert listed["sinks"]["jsonl"] == [
        "path (a path (string); required)",
        "max_bytes (an integer ≥ 1024; default 10485760)",
        "backups (an integer ≥ 0; default 3)",
        "readings (true or false; default true): also write forwarded event readings",
    ]
    assert listed["sinks"]["console"] == [
        "readings (true or false; default true): also print forwarded event readings"
    ]
    assert listed["drivers"]["replay"][:2] == [
        "path (a path (string); required)",
        'value (a string; default "value")',
    ]
    for driver in BUILTIN["drivers"]:
        params = [line.split(" ")[0] for line in listed["drivers"][driver]]
        assert params[-len(FAULTS) :] == FAULTS, driver
        assert "clock" not in params


def test_describe_matches_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe"]) == 0
    listed = sections(capsys.readouterr().out)
    kinds: dict[str, Registry[Any]] = {
        "drivers": Driver.registry,
        "stages": Stage.registry,
        "sinks": Sink.registry,
    }
    for kind, registry in kinds.items():
        assert list(listed[kind]) == registry.names()
        for cls in registry:
            assert [line.split(" (")[0] for line in listed[kind][cls.name]] == [
                p.name for p in cls.params()
            ]


def test_describe_one_driver_shows_only_it_with_inherited_faults(tmp_path: Path) -> None:
    result = cli("describe", "sine", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == SINE_HEADER
    assert lines[1] == "      reports: value"
    params = [line.strip() for line in lines[2:]]
    assert all(line.startswith("      ") for line in lines[2:])
    assert [p.split(" ")[0] for p in params] == [
        "amplitude",
        "offset",
        "period",
        "noise",
        "unit",
        *FAULTS,
    ]
    assert "period (a number > 0; default 60.0)" in params
    assert 'unit (a string; default "")' in params
    assert "seed (an integer; default none): makes the signal and the faults repeatable" in params
    assert params[params.index("spike_size (a number; default 100.0)") - 1].startswith(
        "spikes (a number from 0 to 1; default 0.0)"
    )
    assert "clock" not in result.stdout
    for other in ["counter", "random_walk", "replay", "drivers:", "stages:", "sinks:", "median"]:
        assert other not in result.stdout


@pytest.mark.parametrize(
    ("driver", "reports"),
    [
        ("bme280", "temperature °C [temperature], humidity % [humidity], pressure hPa [pressure]"),
        ("pms5003", "pm1_0 µg/m³ [pm1], pm2_5 µg/m³ [pm25], pm10 µg/m³ [pm10], pm1_0_atm µg/m³"),
        ("serial_line", "the channels its parameters name"),
    ],
)
def test_describe_shows_what_a_driver_reports_with_units_and_device_classes(
    driver: str, reports: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", driver]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"      reports: {reports}")


def test_describe_a_sink_hides_its_injected_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "console"]) == 0
    out = capsys.readouterr().out
    assert "stream" not in out
    assert out.splitlines()[1:] == [
        "      readings (true or false; default true): also print forwarded event readings"
    ]


def test_describe_a_module_class_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "drivers.sine:Sine"]) == 0
    by_reference = capsys.readouterr().out
    assert main(["describe", "sine"]) == 0
    assert by_reference == capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        pytest.param("sinee", '; did you mean "sine"?', id="driver"),
        pytest.param("medain", '; did you mean "median"?', id="stage"),
        pytest.param("jsnl", '; did you mean "jsonl"?', id="sink"),
        pytest.param("nosuch", "", id="no-suggestion"),
    ],
)
def test_describe_an_unknown_name_exits_2(
    name: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", name]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("edge-agent: no driver, stage or sink named ")
    assert err.endswith(f'"{name}"{hint}\n')
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        pytest.param("sinee", '; did you mean "sine"?', id="suggested"),
        pytest.param("nosuch", "", id="no-suggestion"),
    ],
)
def test_describe_an_unknown_name_is_double_quoted(
    name: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", name]) == 2
    assert capsys.readouterr().err == f'edge-agent: no driver, stage or sink named "{name}"{hint}\n'


def test_describe_an_unknown_name_in_a_subprocess(tmp_path: Path) -> None:
    result = cli("describe", "movingaverage", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("edge-agent: no driver, stage or sink named ")
    assert "movingaverage" in line
    assert line.endswith('; did you mean "moving_average"?')


def test_describe_is_derived_from_code_for_a_new_stage(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"test_cli_scale_{uuid.uuid4().hex[:8]}"
    assert main(["describe", name]) == 2
    capsys.readouterr()

    class Scale(Stage, name=name):
        """Multiply each value by a factor.

        Only the first line of the docstring is the summary.
        """

        __slots__ = ("clock", "factor", "label")

        def __init__(
            self,
            *,
            factor: Annotated[float, Bounds(gt=0), "what values are multiplied by"],
            label: str = "x",
            clock: Annotated[Clock, Injected] = SYSTEM_CLOCK,
        ) -> None:
            self.factor, self.label, self.clock = factor, label, clock

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
            for reading in readings:
                reading.value *= self.factor
                yield reading

    assert main(["describe", name]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"  {name} - Multiply each value by a factor.",
        "      factor (a number > 0; required): what values are multiplied by",
        '      label (a string; default "x")',
    ]
    assert main(["describe"]) == 0
    listed = sections(capsys.readouterr().out)
    assert name in listed["stages"]
    assert name not in listed["drivers"]
    assert Stage.registry.get(name) is Scale


def test_describe_is_derived_from_code_for_a_new_driver(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"test_cli_square_{uuid.uuid4().hex[:8]}"

    class Square(Signal, name=name):
        """A square wave."""

        def __init__(self, *, high: float = 1.0, duty: float = 0.5, **faults: Any) -> None:
            super().__init__(**faults)
            self.high, self.duty = high, duty

        def sample(self) -> float:
            return self.high

    class Pushed(Driver, name=f"{name}_push"):
        """Pushes values."""

        def __init__(self, *, port: Annotated[str, "the serial port"]) -> None:
            self.port = port

        async def stream(self) -> AsyncIterator[Sample]:
            yield 1.0

    assert main(["describe", name]) == 0
    params = [line.split(" (")[0].strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert params == ["high", "duty", *FAULTS]
    assert main(["describe", f"{name}_push"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"  {name}_push - Pushes values.",
        "      reports: value",
        "      port (a string; required): the serial port",
    ]
    assert Square.mode == "poll"
    assert Pushed.mode == "push"


def test_describe_shows_each_fault_parameters_own_doc(capsys: pytest.CaptureFixture[str]) -> None:
    # Annotated[Rate, "share of reads ..."] flattens into Rate's own metadata, whose generic
    # doc ("a probability per read") must not win over the parameter's.
    assert main(["describe", "sine"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "from 0 to 1" in line] == [
        "      dropouts (a number from 0 to 1; default 0.0): share of reads that return nothing",
        "      spikes (a number from 0 to 1; default 0.0): share of reads offset by spike_size",
        "      errors (a number from 0 to 1; default 0.0): share of reads that raise an error",
        "      hangs (a number from 0 to 1; default 0.0): share of reads that never return",
    ]
    assert "a probability per read" not in "\n".join(lines)


def test_describe_shows_a_nested_alias_doc_only_without_an_own_doc(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"test_cli_gate_{uuid.uuid4().hex[:8]}"

    class Gate(Stage, name=name):
        """Pass a share of the values."""

        __slots__ = ("keep", "skip")

        def __init__(
            self, *, keep: Annotated[Rate, "share of values kept"] = 1.0, skip: Rate = 0.0
        ) -> None:
            self.keep, self.skip = keep, skip

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
            yield from readings

    assert main(["describe", name]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "      keep (a number from 0 to 1; default 1.0): share of values kept",
        "      skip (a number from 0 to 1; default 0.0): a probability per read",
    ]


def test_describe_writes_a_list_default_as_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "mcp3008"]) == 0
    inputs = next(line for line in capsys.readouterr().out.splitlines() if "inputs (" in line)
    assert "; default [0])" in inputs  # what a config would write, not Python's (0,)
