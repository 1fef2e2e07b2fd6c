"""The config loader: every class of config error, located by key path, one line each.

Most tests go through the public API (`agent.config.load` and `ConfigError.lines()`);
tests/test_cli.py runs a few of the same files through the real `edge-agent check`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

import pytest

from agent.clock import ManualClock
from agent.config import Config, ConfigError, Window, load
from agent.pipeline import Stage
from agent.records import Reading
from agent.schema import Bounds
from agent.sinks import Console, JsonLines
from agent.stages import Calibrate, Median, MovingAverage, Range
from drivers.base import Driver
from drivers.replay import Replay
from drivers.sine import Sine

ROOT = Path(__file__).resolve().parents[1]

AGENT = '[agent]\ndevice_id = "dev-1"\n'
SINE = '[[sensors]]\nname = "air"\ndriver = "sine"\n'
STATS = '"count", "mean", "min", "max", "sum", "stddev", "first", "last"'
NAME_RULE = "a string made of letters, digits, '_' and '-'"


def toml(*parts: str) -> str:
    return "".join(part if part.endswith("\n") else part + "\n" for part in parts)


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_in(tmp_path: Path, text: str) -> list[str]:
    """The problem lines for `text`, each checked for and stripped of its `FILE: ` prefix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = caught.value.lines()
    assert lines, "a ConfigError must carry at least one problem"
    prefix = f"{path}: "
    for line in lines:
        assert line.startswith(prefix), line
        assert "\n" not in line, line
    return [line.removeprefix(prefix) for line in lines]


def valid(tmp_path: Path, text: str) -> Config:
    return load(write(tmp_path, text))


# --- a valid file --------------------------------------------------------------------------


def test_a_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    config = valid(tmp_path, toml(AGENT, SINE))
    assert config.source == tmp_path / "agent.toml"
    assert config.agent.device_id == "dev-1"
    assert config.agent.log_level == "info"
    assert config.agent.queue_size == 10_000
    assert config.agent.breaker.failures == 5
    assert config.sinks == ()
    (sensor,) = config.sensors
    assert sensor.name == "air"
    assert sensor.driver.cls is Sine
    assert dict(sensor.driver.kwargs) == {}
    assert sensor.interval == 1.0
    assert sensor.timeout == 1.0  # defaults to the interval
    assert sensor.pipeline == ()
    assert sensor.window is None


def test_a_full_config_is_parsed_into_typed_objects(tmp_path: Path) -> None:
    config = valid(
        tmp_path,
        toml(
            '[agent]\ndevice_id = "greenhouse_7"\nlog_level = "debug"\nqueue_size = 50',
            "[agent.breaker]\nfailures = 2\ncooldown = 3",
            SINE,
            "interval = 2\ntimeout = 0.5\namplitude = 3\nperiod = 10\nseed = 7\ndropouts = 0.25",
            'pipeline = [{ stage = "calibrate", offset = -1 }, { stage = "median", size = 3 }]',
            'window = { seconds = 60, stats = ["mean", "stddev"] }',
            '[[sinks]]\ntype = "console"\nreadings = false',
            f'[[sinks]]\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\nbackups = 0',
        ),
    )
    assert config.agent.device_id == "greenhouse_7"
    assert config.agent.log_level == "debug"
    assert config.agent.queue_size == 50
    assert config.agent.breaker.failures == 2
    assert config.agent.breaker.cooldown == 3.0
    (sensor,) = config.sensors
    assert (sensor.interval, sensor.timeout) == (2.0, 0.5)
    assert dict(sensor.driver.kwargs) == {
        "amplitude": 3.0,
        "period": 10.0,
        "seed": 7,
        "dropouts": 0.25,
    }
    assert isinstance(sensor.driver.kwargs["period"], float)  # an integer in TOML, a float here
    assert [spec.cls for spec in sensor.pipeline] == [Calibrate, Median]
    assert dict(sensor.pipeline[1].kwargs) == {"size": 3}
    assert sensor.window == Window(seconds=60.0, stats=("mean", "stddev"))
    assert [spec.cls for spec in config.sinks] == [Console, JsonLines]
    assert dict(config.sinks[1].kwargs) == {"path": tmp_path / "out.jsonl", "backups": 0}


def test_specs_build_working_components_and_inject_resources(tmp_path: Path) -> None:
    config = valid(
        tmp_path,
        toml(AGENT, SINE, "amplitude = 2\nperiod = 4", 'pipeline = [{ stage = "range", max = 1 }]'),
    )
    (sensor,) = config.sensors
    clock = ManualClock(start=1.0)  # a quarter period: the sine is at its peak
    driver = sensor.driver.build(clock=clock, unused_resource=object())
    assert isinstance(driver, Sine)
    assert driver.clock is clock
    assert driver.sample() == pytest.approx(2.0)
    stage = sensor.pipeline[0].build(clock=clock)  # a stage that does not take a clock
    assert isinstance(stage, Range)
    assert [r.value for r in stage.transform([Reading("air", 0.0, 2.0, "")])] == []


def test_the_shipped_simulated_config_is_valid() -> None:
    config = load(ROOT / "config" / "simulated.toml")
    names = [sensor.name for sensor in config.sensors]
    assert len(names) == len(set(names)) >= 1
    assert all(isinstance(spec.cls, type) for spec in config.sinks)


# --- reading the file ----------------------------------------------------------------------


def test_toml_syntax_error_is_one_located_line(tmp_path: Path) -> None:
    lines = problems_in(tmp_path, toml(AGENT, "x = = 1"))
    assert len(lines) == 1
    assert lines[0].startswith("invalid TOML: ")
    assert "(at line 3, column 5)" in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.lines() == [f"{path}: cannot read the file: No such file or directory"]
    assert caught.value.source == path


def test_a_directory_is_not_readable_as_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert caught.value.lines() == [f"{tmp_path}: cannot read the file: Is a directory"]


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.lines() == [f"{path}: expected UTF-8 text, got binary data"]


def test_load_accepts_a_string_path_and_reports_it_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, toml(AGENT))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert caught.value.lines() == [
        f"{path}: sensors: expected at least one [[sensors]] table, got none"
    ]
    assert "1 problem(s)" in str(caught.value)


# --- one problem each ----------------------------------------------------------------------

CASES = [
    # top-level tables
    pytest.param(
        toml(AGENT, SINE, "[sensor]\nx = 1"),
        ['sensor: unknown key; did you mean "sensors"?'],
        id="unknown-table-suggested",
    ),
    pytest.param(
        toml('[agnet]\ndevice_id = "x"', AGENT, SINE),
        ['agnet: unknown key; did you mean "agent"?'],
        id="unknown-table-agent-suggested",
    ),
    pytest.param(
        toml(AGENT, SINE, "[zzz]\nx = 1"),
        ["zzz: unknown key"],
        id="unknown-table-no-suggestion",
    ),
    pytest.param(
        toml('sensorz = [{ name = "air", driver = "sine" }]', AGENT, SINE),
        ['sensorz: unknown key; did you mean "sensors"?'],
        id="unknown-top-level-key-suggested",
    ),
    # [agent]
    pytest.param(
        toml("[agent]", SINE),
        [f"agent.device_id: expected {NAME_RULE}, got nothing (missing)"],
        id="device-id-missing",
    ),
    pytest.param(
        toml(SINE),
        [f"agent.device_id: expected {NAME_RULE}, got nothing (missing)"],
        id="agent-table-missing",
    ),
    pytest.param(
        toml('[agent]\ndevice_id = "my dev!"', SINE),
        [f'agent.device_id: expected {NAME_RULE}, got "my dev!"'],
        id="device-id-pattern",
    ),
    pytest.param(
        toml('[agent]\ndevice_id = ""', SINE),
        [f'agent.device_id: expected {NAME_RULE}, got ""'],
        id="device-id-empty",
    ),
    pytest.param(
        toml("[agent]\ndevice_id = 42", SINE),
        [f"agent.device_id: expected {NAME_RULE}, got 42"],
        id="device-id-number",
    ),
    pytest.param(
        toml('agent = "dev-1"', SINE),
        ['agent: expected a table ([agent]), got "dev-1"'],
        id="agent-not-a-table",
    ),
    pytest.param(
        toml(AGENT, 'device = "x"', SINE),
        ['agent.device: unknown key; did you mean "device_id"?'],
        id="agent-unknown-key",
    ),
    pytest.param(
        toml(AGENT, "queue_size = 0", SINE),
        ["agent.queue_size: expected an integer from 1 to 1000000, got 0"],
        id="queue-size-out-of-bounds",
    ),
    pytest.param(
        toml(AGENT, "data_dir = 3", SINE),
        ["agent.data_dir: expected a path (string), got 3"],
        id="data-dir-number",
    ),
    pytest.param(
        toml(AGENT, '[agent.breaker]\nfailures = 0\ncooldown = "x"\nfailure = 1', SINE),
        [
            "agent.breaker.failures: expected an integer from 1 to 1000000, got 0",
            'agent.breaker.cooldown: expected a number > 0, got "x"',
            'agent.breaker.failure: unknown key; did you mean "failures"?',
        ],
        id="breaker-nested-table",
    ),
    pytest.param(
        toml(AGENT, "[agent.breaker]\ncooldown = 10\nmax_cooldown = 5", SINE),
        ["agent.breaker.cooldown: expected a number ≤ max_cooldown (5), got 10"],
        id="breaker-max-cooldown-below-cooldown",
    ),
    pytest.param(
        toml(AGENT, "[agent.breaker]\ncooldown = 0.5\nmax_cooldown = 0.25", SINE),
        ["agent.breaker.cooldown: expected a number ≤ max_cooldown (0.25), got 0.5"],
        id="breaker-max-cooldown-below-fractional-cooldown",
    ),
    pytest.param(
        toml(AGENT, '[agent.breaker]\ncooldown = 10\nmax_cooldown = "x"', SINE),
        ['agent.breaker.max_cooldown: expected a number > 0, got "x"'],
        id="breaker-max-cooldown-judged-alone-first",
    ),
    pytest.param(
        toml(AGENT, "[agent.breaker]\ncooldown = 100", SINE),
        ["agent.breaker.cooldown: expected a number ≤ max_cooldown (60), got 100"],
        id="breaker-cooldown-above-the-default-max",
    ),
    # wrong types and bounds
    pytest.param(
        toml(AGENT, SINE, 'interval = "fast"'),
        ['sensors[0].interval: expected a number ≥ 0.001, got "fast"'],
        id="string-for-number",
    ),
    pytest.param(
        toml(AGENT, SINE, "interval = true"),
        ["sensors[0].interval: expected a number ≥ 0.001, got true"],
        id="bool-for-number",
    ),
    pytest.param(
        toml(AGENT, SINE, "interval = -1"),
        ["sensors[0].interval: expected a number ≥ 0.001, got -1"],
        id="number-below-bound",
    ),
    pytest.param(
        toml(AGENT, SINE, "interval = 0"),
        ["sensors[0].interval: expected a number ≥ 0.001, got 0"],
        id="number-at-exclusive-bound",
    ),
    pytest.param(
        toml(AGENT, SINE, "interval = nan"),
        ["sensors[0].interval: expected a number ≥ 0.001, got nan"],
        id="nan-for-positive",
    ),
    pytest.param(
        toml(AGENT, SINE, "timeout = 0"),
        ["sensors[0].timeout: expected a number > 0, got 0"],
        id="optional-number-out-of-bounds",
    ),
    pytest.param(
        toml(AGENT, SINE, "dropouts = 1.5"),
        ["sensors[0].dropouts: expected a number from 0 to 1, got 1.5"],
        id="rate-above-one-inherited-param",
    ),
    pytest.param(
        toml(AGENT, SINE, "period = 0"),
        ["sensors[0].period: expected a number > 0, got 0"],
        id="driver-param-out-of-bounds",
    ),
    pytest.param(
        toml(AGENT, SINE, 'amplitude = "3"'),
        ['sensors[0].amplitude: expected a number, got "3"'],
        id="driver-param-string-for-number",
    ),
    pytest.param(
        toml(AGENT, SINE, "seed = 1.5"),
        ["sensors[0].seed: expected an integer, got 1.5"],
        id="float-for-integer",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "median" }, { stage = "median", size = "ten" }]'),
        ['sensors[0].pipeline[1].size: expected an integer from 1 to 10000, got "ten"'],
        id="string-for-integer-in-stage",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "moving_average", size = true }]'),
        ["sensors[0].pipeline[0].size: expected an integer from 1 to 10000, got true"],
        id="bool-for-integer-in-stage",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "ema", alpha = 0 }]'),
        ["sensors[0].pipeline[0].alpha: expected a number > 0 and ≤ 1, got 0"],
        id="stage-param-out-of-bounds",
    ),
    pytest.param(
        toml('[agent]\ndevice_id = "d"', '[[sensors]]\nname = "a b"\ndriver = "sine"'),
        [f'sensors[0].name: expected {NAME_RULE}, got "a b"'],
        id="sensor-name-pattern",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\ndriver = "sine"'),
        [f"sensors[0].name: expected {NAME_RULE}, got nothing (missing)"],
        id="sensor-name-missing",
    ),
    # unknown keys
    pytest.param(
        toml(AGENT, SINE, "intervall = 1"),
        ['sensors[0].intervall: unknown key; did you mean "interval"?'],
        id="unknown-sensor-key-suggested",
    ),
    pytest.param(
        toml(AGENT, SINE, "amplitud = 1"),
        ['sensors[0].amplitud: unknown key; did you mean "amplitude"?'],
        id="unknown-key-suggests-driver-param",
    ),
    pytest.param(
        toml(AGENT, SINE, "zzz = 1"),
        ["sensors[0].zzz: unknown key"],
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        toml(AGENT, SINE, "clock = 1"),
        ["sensors[0].clock: unknown key"],
        id="injected-param-is-not-a-key",
    ),
    # drivers
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "sin"'),
        ['sensors[0].driver: unknown driver "sin"; did you mean "sine"?'],
        id="unknown-driver-suggested",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "randomwalk"'),
        ['sensors[0].driver: unknown driver "randomwalk"; did you mean "random_walk"?'],
        id="unknown-driver-suggested-underscore",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"'),
        ["sensors[0].driver: expected the name of a driver, got nothing (missing)"],
        id="driver-missing",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = 3'),
        ["sensors[0].driver: expected the name of a driver, got 3"],
        id="driver-not-a-string",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "replay"'),
        ["sensors[0].path: expected a path (string), got nothing (missing)"],
        id="required-driver-param-missing",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "replay"\npath = 7'),
        ["sensors[0].path: expected a path (string), got 7"],
        id="driver-path-not-a-string",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "replay"\npath = "rec.txt"'),
        ['sensors[0].path: expected a .csv or .jsonl file, got "rec.txt"'],
        id="driver-constructor-error",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "random_walk"\nlow = 10\nhigh = 0.5'),
        ["sensors[0].low: expected low ≤ high, got low = 10, high = 0.5"],
        id="driver-constructor-error-bounds",
    ),
    # stages
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "medain" }]'),
        ['sensors[0].pipeline[0].stage: unknown stage "medain"; did you mean "median"?'],
        id="unknown-stage-suggested",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "median" }, { stage = "movingaverage" }]'),
        [
            'sensors[0].pipeline[1].stage: unknown stage "movingaverage"; '
            'did you mean "moving_average"?'
        ],
        id="unknown-stage-index",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "medain", sise = 3 }]'),
        ['sensors[0].pipeline[0].stage: unknown stage "medain"; did you mean "median"?'],
        id="unknown-stage-keys-not-judged",
    ),
    pytest.param(
        toml(AGENT, SINE, "pipeline = [{ size = 3 }]"),
        ["sensors[0].pipeline[0].stage: expected the name of a stage, got nothing (missing)"],
        id="stage-key-missing",
    ),
    pytest.param(
        toml(AGENT, SINE, "pipeline = [{ stage = 1 }]"),
        ["sensors[0].pipeline[0].stage: expected the name of a stage, got 1"],
        id="stage-not-a-string",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "median", sise = 3 }]'),
        ['sensors[0].pipeline[0].sise: unknown key; did you mean "size"?'],
        id="unknown-stage-key-suggested",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "delta" }]'),
        ["sensors[0].pipeline[0].change: expected a number ≥ 0, got nothing (missing)"],
        id="required-stage-param-missing",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = "median"'),
        ['sensors[0].pipeline: expected a list of tables like { stage = ... }, got "median"'],
        id="pipeline-not-a-list",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [["median"]]'),
        ["sensors[0].pipeline[0]: expected a table like { stage = ... }, got a list"],
        id="pipeline-not-tables",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "median" }, 3, { stage = "medain" }, "ema"]'),
        [
            "sensors[0].pipeline[1]: expected a table like { stage = ... }, got 3",
            'sensors[0].pipeline[2].stage: unknown stage "medain"; did you mean "median"?',
            'sensors[0].pipeline[3]: expected a table like { stage = ... }, got "ema"',
        ],
        id="pipeline-stray-items",
    ),
    # stage constructors: what one value alone cannot tell
    pytest.param(
        toml(
            AGENT,
            SINE,
            'pipeline = [{ stage = "calibrate", offset = 1, points = [[0, 0], [1, 2]] }]',
        ),
        ["sensors[0].pipeline[0].points: expected either points or offset/scale, got both"],
        id="calibrate-points-and-offset",
    ),
    pytest.param(
        toml(
            AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = [[0, 0], [1, 2], [3, 4]] }]'
        ),
        ["sensors[0].pipeline[0].points: expected exactly two [raw, true] pairs"],
        id="calibrate-three-points",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = [[0, 0], [1]] }]'),
        ["sensors[0].pipeline[0].points: expected exactly two [raw, true] pairs"],
        id="calibrate-short-pair",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = [[0, 0], 3] }]'),
        ["sensors[0].pipeline[0].points[1]: expected a list of numbers, got 3"],
        id="calibrate-point-not-a-list",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = 3 }]'),
        ["sensors[0].pipeline[0].points: expected a list of lists of numbers, got 3"],
        id="calibrate-points-not-a-list",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = [[1, 0], [1, 2]] }]'),
        ["sensors[0].pipeline[0].points: the two points need different raw values"],
        id="calibrate-same-raw",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "range", min = 2.5, max = 1 }]'),
        ["sensors[0].pipeline[0].min: expected min ≤ max, got min = 2.5, max = 1"],
        id="range-min-above-max",
    ),
    pytest.param(
        toml(AGENT, SINE, 'pipeline = [{ stage = "median" }, { stage = "range" }]'),
        ["sensors[0].pipeline[1]: expected min, max or both, got neither"],
        id="range-neither",
    ),
    # windows
    pytest.param(
        toml(AGENT, SINE, 'window = { stats = ["mean"] }'),
        ["sensors[0].window.seconds: expected a number ≥ 0.001, got nothing (missing)"],
        id="window-seconds-missing",
    ),
    pytest.param(
        toml(AGENT, SINE, "window = { seconds = 0 }"),
        ["sensors[0].window.seconds: expected a number ≥ 0.001, got 0"],
        id="window-seconds-zero",
    ),
    pytest.param(
        toml(AGENT, SINE, "window = { seconds = -5 }"),
        ["sensors[0].window.seconds: expected a number ≥ 0.001, got -5"],
        id="window-seconds-negative",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = "1m" }'),
        ['sensors[0].window.seconds: expected a number ≥ 0.001, got "1m"'],
        id="window-seconds-string",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = 5, stats = ["mean", 3] }'),
        [f"sensors[0].window.stats[1]: expected one of {STATS}, got 3"],
        id="window-stat-not-a-string",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = 5, stats = "mean" }'),
        [f'sensors[0].window.stats: expected a list of values, each one of {STATS}, got "mean"'],
        id="window-stats-not-a-list",
    ),
    pytest.param(
        toml(AGENT, SINE, "window = { seconds = 5, stats = [] }"),
        [f"sensors[0].window.stats: expected at least one of {STATS}, got an empty list"],
        id="window-stats-empty",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = 5, stats = ["mean", "max", "mean"] }'),
        ['sensors[0].window.stats: expected each statistic once, got "mean" 2 times'],
        id="window-stats-duplicate",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = 5, stats = ["max", "mean", "max", "mean"] }'),
        [
            'sensors[0].window.stats: expected each statistic once, got "max" 2 times, '
            '"mean" 2 times'
        ],
        id="window-stats-two-duplicates",
    ),
    pytest.param(
        toml(AGENT, SINE, 'window = { seconds = 5, stats = ["mean", "mean", "mean"] }'),
        ['sensors[0].window.stats: expected each statistic once, got "mean" 3 times'],
        id="window-stats-three-times",
    ),
    pytest.param(
        toml(AGENT, SINE, "window = { seconds = 5, grase = 1 }"),
        ['sensors[0].window.grase: unknown key; did you mean "grace"?'],
        id="window-unknown-key",
    ),
    pytest.param(
        toml(AGENT, SINE, "window = 5"),
        ["sensors[0].window: expected a table, got 5"],
        id="window-not-a-table",
    ),
    # the sensor list
    pytest.param(
        toml(AGENT, SINE, SINE),
        ['sensors[1].name: "air" is used twice'],
        id="duplicate-sensor-names",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sensors]]\nname = "soil"\ndriver = "sine"', SINE),
        ['sensors[2].name: "air" is used twice'],
        id="duplicate-sensor-names-apart",
    ),
    pytest.param(
        toml(AGENT, SINE, SINE, "interval = -1"),
        [
            'sensors[1].name: "air" is used twice',
            "sensors[1].interval: expected a number ≥ 0.001, got -1",
        ],
        id="duplicate-name-of-an-invalid-sensor",
    ),
    pytest.param(
        toml(AGENT, '[[sensors]]\nname = "a b"\ndriver = "sine"', SINE),
        [f'sensors[0].name: expected {NAME_RULE}, got "a b"'],
        id="invalid-name-once-is-not-a-duplicate",
    ),
    pytest.param(
        toml(AGENT),
        ["sensors: expected at least one [[sensors]] table, got none"],
        id="no-sensors",
    ),
    pytest.param(
        toml("sensors = []", AGENT),
        ["sensors: expected at least one [[sensors]] table, got none"],
        id="empty-sensor-list",
    ),
    pytest.param(
        toml(AGENT, '[sensors]\nname = "air"\ndriver = "sine"'),
        ["sensors: expected a list of tables ([[sensors]]), got a table"],
        id="sensors-a-table",
    ),
    pytest.param(
        toml('sensors = "air"', AGENT),
        ['sensors: expected a list of tables ([[sensors]]), got "air"'],
        id="sensors-a-string",
    ),
    pytest.param(
        toml('sensors = [{ name = "air", driver = "sine" }, 3, "soil"]', AGENT),
        ["sensors[1]: expected a table, got 3", 'sensors[2]: expected a table, got "soil"'],
        id="sensors-a-mixed-list",
    ),
    # sinks
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\ntype = "consol"'),
        ['sinks[0].type: unknown sink "consol"; did you mean "console"?'],
        id="unknown-sink-suggested",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\ntype = "console"', '[[sinks]]\ntype = "jsnl"\npath = "x"'),
        ['sinks[1].type: unknown sink "jsnl"; did you mean "jsonl"?'],
        id="unknown-sink-index",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\npath = "x.jsonl"'),
        ["sinks[0].type: expected the name of a sink, got nothing (missing)"],
        id="sink-type-missing",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\ntype = "jsonl"'),
        ["sinks[0].path: expected a path (string), got nothing (missing)"],
        id="sink-required-param-missing",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\ntype = "jsonl"\npath = "x.jsonl"\nmax_bytes = 10'),
        ["sinks[0].max_bytes: expected an integer ≥ 1024, got 10"],
        id="sink-param-out-of-bounds",
    ),
    pytest.param(
        toml(AGENT, SINE, '[[sinks]]\ntype = "console"\nstream = "stderr"'),
        ["sinks[0].stream: unknown key"],
        id="sink-injected-param-is-not-a-key",
    ),
    pytest.param(
        toml(AGENT, SINE, '[sinks]\ntype = "console"'),
        ["sinks: expected a list of tables ([[sinks]]), got a table"],
        id="sinks-a-table",
    ),
    pytest.param(
        toml('sinks = [{ type = "console" }, "jsonl"]', AGENT, SINE),
        ['sinks[1]: expected a table, got "jsonl"'],
        id="sinks-a-mixed-list",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_each_problem_is_one_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems_in(tmp_path, text) == expected


def test_log_level_gets_a_suggestion_after_the_got_part(tmp_path: Path) -> None:
    assert problems_in(tmp_path, toml(AGENT, 'log_level = "warn"', SINE)) == [
        'agent.log_level: expected one of "debug", "info", "warning", "error", got "warn"; '
        'did you mean "warning"?'
    ]


def test_unknown_stat_has_an_index_path_and_a_suggestion(tmp_path: Path) -> None:
    assert problems_in(
        tmp_path, toml(AGENT, SINE, 'window = { seconds = 5, stats = ["mean", "maen"] }')
    ) == [f'sensors[0].window.stats[1]: expected one of {STATS}, got "maen"; did you mean "mean"?']


def test_literal_suggestion_follows_the_got_part(tmp_path: Path) -> None:
    lines = problems_in(
        tmp_path, toml(AGENT, SINE, 'pipeline = [{ stage = "range", min = 0, mode = "clmap" }]')
    )
    assert lines == [
        'sensors[0].pipeline[0].mode: expected one of "drop", "clamp", got "clmap"; '
        'did you mean "clamp"?'
    ]


def test_bad_item_in_an_optional_list_is_located(tmp_path: Path) -> None:
    # Calibrate.points is list[list[float]] | None: the item keeps its index path.
    lines = problems_in(
        tmp_path,
        toml(AGENT, SINE, 'pipeline = [{ stage = "calibrate", points = [[0, 0], [1, "x"]] }]'),
    )
    assert lines == ['sensors[0].pipeline[0].points[1][1]: expected a number, got "x"']


def test_a_located_item_is_reported_before_the_constructor_runs(tmp_path: Path) -> None:
    # offset and points together is a constructor check; a bad item is found first, alone.
    lines = problems_in(
        tmp_path,
        toml(
            AGENT,
            SINE,
            'pipeline = [{ stage = "calibrate", offset = 1, points = [[0, 0], ["x", 1]] }]',
        ),
    )
    assert lines == ['sensors[0].pipeline[0].points[1][0]: expected a number, got "x"']


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            toml(AGENT, '[[sensors]]\nname = "x"\ndriver = "sin"', SINE, SINE),
            [
                'sensors[0].driver: unknown driver "sin"; did you mean "sine"?',
                'sensors[2].name: "air" is used twice',
            ],
            id="invalid-first",
        ),
        pytest.param(
            toml(AGENT, SINE, '[[sensors]]\nname = "b"\ndriver = "sine"\ninterval = -1', SINE),
            [
                "sensors[1].interval: expected a number ≥ 0.001, got -1",
                'sensors[2].name: "air" is used twice',
            ],
            id="invalid-between",
        ),
        pytest.param(
            toml(AGENT, SINE, '[[sensors]]\nname = "air"\ndriver = "sin"'),
            [
                'sensors[1].name: "air" is used twice',
                'sensors[1].driver: unknown driver "sin"; did you mean "sine"?',
            ],
            id="the-duplicate-is-invalid",
        ),
    ],
)
def test_duplicate_name_after_an_invalid_sensor_names_the_right_table(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert problems_in(tmp_path, text) == expected


def test_replay_needs_an_existing_file(tmp_path: Path) -> None:
    missing = tmp_path / "rec.csv"
    text = toml(AGENT, f'[[sensors]]\nname = "air"\ndriver = "replay"\npath = "{missing}"')
    assert problems_in(tmp_path, text) == [
        f'sensors[0].path: expected an existing file, got "{missing}" (not found)'
    ]
    missing.write_text("ts,value\n1,2\n", encoding="utf-8")
    (sensor,) = valid(tmp_path, text).sensors
    assert sensor.driver.cls is Replay
    assert dict(sensor.driver.kwargs) == {"path": missing}


def test_unknown_driver_still_checks_the_sensors_own_keys(tmp_path: Path) -> None:
    # The driver's keys cannot be judged without the driver; the sensor's own can.
    text = toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "sin"\namplitude = 3\ninterval = "x"')
    assert problems_in(tmp_path, text) == [
        'sensors[0].driver: unknown driver "sin"; did you mean "sine"?',
        'sensors[0].interval: expected a number ≥ 0.001, got "x"',
    ]


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = toml(
        '[agent]\ndevice_id = "my dev"',
        '[[sensors]]\nname = "air"\ndriver = "sin"',
        '[[sensors]]\nname = "soil"\ndriver = "sine"\nintervall = 2',
        'pipeline = [{ stage = "moving_average", size = "ten" }, { stage = "medain" }]',
        'window = { seconds = 0, stats = ["mean", "maen"] }',
        '[[sinks]]\ntype = "jsnl"',
        "[extra]\nx = 1",
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    error = caught.value
    lines = error.lines()
    assert len(lines) == len(error.problems) == 9
    assert all(line.startswith(f"{path}: ") for line in lines)
    stripped = [line.removeprefix(f"{path}: ") for line in lines]
    assert stripped[:4] == [
        "extra: unknown key",
        f'agent.device_id: expected {NAME_RULE}, got "my dev"',
        'sensors[0].driver: unknown driver "sin"; did you mean "sine"?',
        'sensors[1].intervall: unknown key; did you mean "interval"?',
    ]
    assert stripped[4] == "sensors[1].window.seconds: expected a number ≥ 0.001, got 0"
    assert stripped[5] == (
        f'sensors[1].window.stats[1]: expected one of {STATS}, got "maen"; did you mean "mean"?'
    )
    assert stripped[6:] == [
        'sensors[1].pipeline[0].size: expected an integer from 1 to 10000, got "ten"',
        'sensors[1].pipeline[1].stage: unknown stage "medain"; did you mean "median"?',
        'sinks[0].type: unknown sink "jsnl"; did you mean "jsonl"?',
    ]
    assert str(error) == f"9 problem(s) in {path}"


# --- "package.module:Class" references ----------------------------------------------------


def test_a_module_class_reference_to_a_driver(tmp_path: Path) -> None:
    config = valid(
        tmp_path,
        toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "drivers.sine:Sine"\namplitude = 2'),
    )
    (sensor,) = config.sensors
    assert sensor.driver.cls is Sine
    assert dict(sensor.driver.kwargs) == {"amplitude": 2.0}


def test_a_module_class_reference_checks_the_driver_params(tmp_path: Path) -> None:
    text = toml(AGENT, '[[sensors]]\nname = "air"\ndriver = "drivers.sine:Sine"\namplitud = 2')
    assert problems_in(tmp_path, text) == [
        'sensors[0].amplitud: unknown key; did you mean "amplitude"?'
    ]


def test_a_module_class_reference_to_a_stage(tmp_path: Path) -> None:
    config = valid(
        tmp_path, toml(AGENT, SINE, 'pipeline = [{ stage = "agent.stages:Median", size = 3 }]')
    )
    (spec,) = config.sensors[0].pipeline
    assert spec.cls is Median
    assert dict(spec.kwargs) == {"size": 3}


def test_a_module_class_reference_to_an_unregistered_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"edge_test_drv_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from drivers.base import Driver\n\n\n"
        "class Thermo(Driver):\n"
        '    """A thermometer on a port."""\n\n'
        '    def __init__(self, *, port: str = "/dev/ttyS0") -> None:\n'
        "        self.port = port\n\n"
        "    async def read(self) -> float:\n"
        "        return 21.0\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = valid(
        tmp_path,
        toml(AGENT, f'[[sensors]]\nname = "air"\ndriver = "{module}:Thermo"\nport = "/dev/x"'),
    )
    (sensor,) = config.sensors
    assert sensor.driver.cls.__name__ == "Thermo"
    assert issubclass(sensor.driver.cls, Driver)
    assert dict(sensor.driver.kwargs) == {"port": "/dev/x"}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        pytest.param(
            "edge_test_no_such_module:Thing",
            'cannot load driver "edge_test_no_such_module:Thing": '
            "ModuleNotFoundError: No module named 'edge_test_no_such_module'",
            id="missing-module",
        ),
        pytest.param(
            "drivers.sine:Cosine",
            'cannot load driver "drivers.sine:Cosine": '
            "AttributeError: module 'drivers.sine' has no attribute 'Cosine'",
            id="missing-class",
        ),
        pytest.param(
            "agent.stages:Calibrate",
            '"agent.stages:Calibrate" is not a driver class',
            id="a-stage-not-a-driver",
        ),
        pytest.param("math:pi", '"math:pi" is not a driver class', id="not-a-class"),
        pytest.param(
            "drivers.base:Driver",
            "Driver: a driver needs exactly one of an async def read(self), "
            "a plain def read_blocking(self), an async generator stream(self)",
            id="a-driver-without-a-read",
        ),
    ],
)
def test_a_bad_module_class_reference(tmp_path: Path, reference: str, message: str) -> None:
    text = toml(AGENT, f'[[sensors]]\nname = "air"\ndriver = "{reference}"')
    assert problems_in(tmp_path, text) == [f"sensors[0].driver: {message}"]


def test_a_bad_stage_reference(tmp_path: Path) -> None:
    text = toml(AGENT, SINE, 'pipeline = [{ stage = "drivers.sine:Sine" }]')
    assert problems_in(tmp_path, text) == [
        'sensors[0].pipeline[0].stage: "drivers.sine:Sine" is not a stage class'
    ]


def test_a_reference_without_a_module_is_a_config_problem(tmp_path: Path) -> None:
    lines = problems_in(tmp_path, toml(AGENT, '[[sensors]]\nname = "air"\ndriver = ":Sine"'))
    assert lines == ['sensors[0].driver: cannot load driver ":Sine": ValueError: Empty module name']


@pytest.mark.parametrize(
    ("source", "why"),
    [
        # The parser's wording varies between Python versions; the exception type does not.
        pytest.param("def broken(:\n", "SyntaxError: ", id="syntax-error"),
        pytest.param("1 / 0\n", "ZeroDivisionError: division by zero", id="raises"),
        pytest.param(
            'raise RuntimeError("no bus")\n', "RuntimeError: no bus", id="raises-its-own-error"
        ),
    ],
)
def test_a_reference_to_a_broken_module_is_a_config_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, why: str
) -> None:
    module = f"edge_test_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    lines = problems_in(tmp_path, toml(AGENT, f'[[sensors]]\nname = "air"\ndriver = "{module}:X"'))
    assert len(lines) == 1
    assert lines[0].startswith(f'sensors[0].driver: cannot load driver "{module}:X": {why}')


# --- components defined in code are configurable by name --------------------------------


def test_a_stage_defined_in_process_is_configurable_by_name(tmp_path: Path) -> None:
    name = f"test_config_scale_{uuid.uuid4().hex[:8]}"

    class Scale(Stage, name=name):
        """Multiply values by a factor."""

        __slots__ = ("factor",)

        def __init__(self, *, factor: Annotated[float, Bounds(gt=0)] = 2.0) -> None:
            self.factor = factor

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
            for reading in readings:
                reading.value *= self.factor
                yield reading

    config = valid(tmp_path, toml(AGENT, SINE, f'pipeline = [{{ stage = "{name}", factor = 3 }}]'))
    (spec,) = config.sensors[0].pipeline
    assert spec.cls is Scale
    stage = spec.build()
    assert [r.value for r in stage.transform([Reading("air", 0.0, 2.0, "")])] == [6.0]
    bad = toml(AGENT, SINE, f'pipeline = [{{ stage = "{name}", factor = -1, fator = 1 }}]')
    assert problems_in(tmp_path, bad) == [
        "sensors[0].pipeline[0].factor: expected a number > 0, got -1",
        'sensors[0].pipeline[0].fator: unknown key; did you mean "factor"?',
    ]


def test_window_defaults(tmp_path: Path) -> None:
    config = valid(tmp_path, toml(AGENT, SINE, "window = { seconds = 60 }"))
    window = config.sensors[0].window
    assert window is not None
    assert window.seconds == 60.0
    assert window.stats == ("count", "mean", "min", "max")
    assert window.grace == 0.5


# `seconds = inf` would start every window at nan (floor(ts / inf) * inf), and `min = nan`
# would make range drop every value: TOML's inf and nan are not numbers to the config.
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param(
            "window = { seconds = inf }",
            "sensors[0].window.seconds: expected a number ≥ 0.001, got inf",
            id="window-inf",
        ),
        pytest.param(
            "window = { seconds = 5, grace = inf }",
            "sensors[0].window.grace: expected a number ≥ 0, got inf",
            id="window-grace-inf",
        ),
        pytest.param(
            "interval = -inf",
            "sensors[0].interval: expected a number ≥ 0.001, got -inf",
            id="interval-minus-inf",
        ),
        pytest.param(
            "amplitude = inf",
            "sensors[0].amplitude: expected a number, got inf",
            id="unbounded-driver-param-inf",
        ),
        pytest.param(
            'pipeline = [{ stage = "range", min = nan }]',
            "sensors[0].pipeline[0].min: expected a number, got nan",
            id="range-nan",
        ),
        pytest.param(
            'pipeline = [{ stage = "delta", change = 1, heartbeat = inf }]',
            "sensors[0].pipeline[0].heartbeat: expected a number > 0, got inf",
            id="optional-number-inf",
        ),
        pytest.param(
            'pipeline = [{ stage = "calibrate", points = [[0, 0], [1, inf]] }]',
            "sensors[0].pipeline[0].points[1][1]: expected a number, got inf",
            id="list-item-inf",
        ),
    ],
)
def test_non_finite_numbers_are_rejected(tmp_path: Path, setting: str, expected: str) -> None:
    assert problems_in(tmp_path, toml(AGENT, SINE, setting)) == [expected]


def test_non_finite_breaker_cooldown_is_rejected(tmp_path: Path) -> None:
    text = toml(AGENT, "[agent.breaker]\ncooldown = inf\nmax_cooldown = inf", SINE)
    assert problems_in(tmp_path, text) == [
        "agent.breaker.cooldown: expected a number > 0, got inf",
        "agent.breaker.max_cooldown: expected a number > 0, got inf",
    ]


def test_moving_average_spec_is_checked_and_built(tmp_path: Path) -> None:
    config = valid(tmp_path, toml(AGENT, SINE, 'pipeline = [{ stage = "moving_average" }]'))
    (spec,) = config.sensors[0].pipeline
    assert spec.cls is MovingAverage
    assert dict(spec.kwargs) == {}
    assert isinstance(spec.build(), MovingAverage)
