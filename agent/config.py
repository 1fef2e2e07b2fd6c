"""The config file, parsed once into typed objects.

Everything a user can write is declared here or in a component's constructor.
The loader checks the whole file and reports its problems together, one line
each: `FILE: sensors[2].pipeline[0].size: expected an integer ≥ 1, got "ten"`.
(Checks that relate several values of one table, such as min below max, run
once that table's values are each valid.)
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from agent.pipeline import Stage
from agent.registry import Component, Registry, UnknownComponent
from agent.schema import (
    Bounds,
    Count,
    Invalid,
    Match,
    NonNegative,
    Positive,
    Problem,
    bind,
    found,
    injected_names,
    params_of,
    suggest,
)
from agent.sinks import Sink
from agent.window import STATS, Stat
from drivers.base import Driver

C = TypeVar("C", bound=Component)

MIN_HEALTH_INTERVAL = 0.1  # a snapshot reads the oldest buffer segment: not many a second

Name = Annotated[str, Match(r"[A-Za-z0-9_-]+", "made of letters, digits, '_' and '-'")]


@dataclass(frozen=True)
class Spec(Generic[C]):
    """A checked component: its class and the keyword arguments the config gave it."""

    cls: type[C]
    kwargs: Mapping[str, object]

    def build(self, **resources: object) -> C:
        """A new instance; resources (a clock, a bus) go to the constructors that declare them."""
        wanted = injected_names(self.cls)
        return self.cls(**self.kwargs, **{k: v for k, v in resources.items() if k in wanted})


@dataclass(frozen=True)
class Breaker:
    failures: Annotated[Count, "consecutive failures that open the breaker"] = 5
    cooldown: Annotated[Positive, "seconds before the first probe (jittered down to half)"] = 1.0
    max_cooldown: Annotated[Positive, "cap on the growing cool-down"] = 60.0

    def __post_init__(self) -> None:
        if self.cooldown > self.max_cooldown:
            raise Invalid(
                "cooldown",
                f"expected a number ≤ max_cooldown ({self.max_cooldown:g}), got {self.cooldown:g}",
            )


@dataclass(frozen=True)
class AgentSettings:
    device_id: Name
    data_dir: Path = Path("/var/lib/edge-agent")
    queue_size: Annotated[Count, "readings held between drivers and pipeline"] = 10_000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    breaker: Breaker = field(default_factory=Breaker)


@dataclass(frozen=True)
class Backoff:
    base: Annotated[Positive, "seconds before the first retry"] = 1.0
    cap: Annotated[Positive, "longest wait between retries"] = 60.0

    def __post_init__(self) -> None:
        if self.base > self.cap:
            raise Invalid("base", f"expected a number ≤ cap ({self.cap:g}), got {self.base:g}")


@dataclass(frozen=True)
class Tls:
    ca_file: Annotated[
        Path | None, "CA certificates to verify the broker (default: the system's)"
    ] = None
    cert_file: Annotated[Path | None, "client certificate, for brokers that ask for one"] = None
    key_file: Annotated[Path | None, "the client certificate's private key"] = None
    insecure: Annotated[bool, "skip verifying the broker's certificate (warned at every start)"] = (
        False
    )


@dataclass(frozen=True)
class HomeAssistant:
    discovery_prefix: Annotated[
        str, Match(r"[A-Za-z0-9_/-]+", "made of letters, digits, '_', '-', '/'")
    ] = "homeassistant"


@dataclass(frozen=True)
class Mqtt:
    host: str = "localhost"
    port: Annotated[int, Bounds(ge=1, le=65535)] = 1883
    topic_prefix: Annotated[
        str, Match(r"[A-Za-z0-9_/-]+", "made of letters, digits, '_', '-', '/'")
    ] = "edge"
    brokers: Annotated[
        list[
            Annotated[
                str, Match(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):[0-9]+", "of the form host:port")
            ]
        ],
        "more brokers to fail over to, in order, after host:port",
    ] = field(default_factory=list)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    qos: Literal[0, 1] = 1
    keepalive: Annotated[int, Bounds(ge=1, le=3600), "seconds between pings"] = 30
    message_expiry: Annotated[
        int, Bounds(ge=1), "MQTT 5: seconds a broker keeps a message for an absent consumer"
    ] = 30 * 86400
    username: str | None = None
    password_env: Annotated[str | None, "environment variable holding the password"] = None
    password_file: Annotated[Path | None, "file holding the password"] = None
    payload: Literal["msgpack", "json"] = "msgpack"
    inflight: Annotated[int, Bounds(ge=1, le=1000), "messages awaiting PUBACK at once"] = 64
    batch: Annotated[
        int, Bounds(ge=1, le=1000), "records per message, on {prefix}/{device}/batch (1: none)"
    ] = 1
    batch_wait: Annotated[
        float, Bounds(ge=0, le=60), "seconds a short batch waits for more records"
    ] = 1.0
    health_interval: Annotated[
        float,
        Bounds(ge=0, le=86400),
        "seconds between health messages on {prefix}/{device}/health (0: none)",
    ] = 60.0
    tuning: Annotated[
        bool, "accept changes to tunable stage parameters on {prefix}/{device}/set/..."
    ] = False
    backoff: Backoff = field(default_factory=Backoff)
    tls: Tls | None = None
    homeassistant: HomeAssistant | None = None

    def __post_init__(self) -> None:
        if 0 < self.health_interval < MIN_HEALTH_INTERVAL:
            raise Invalid(
                "health_interval",
                f"expected 0 (off) or a number ≥ {MIN_HEALTH_INTERVAL:g}, "
                f"got {self.health_interval:g}",
            )
        if self.password_env and self.password_file:
            raise Invalid("password_env", "expected password_env or password_file, got both")
        for broker, (_, port) in zip(self.brokers, self.addresses[1:], strict=True):
            if not 1 <= port <= 65535:
                raise Invalid("brokers", f'expected ports from 1 to 65535, got "{broker}"')
        if (self.password_env or self.password_file) and self.username is None:
            raise Invalid("username", "expected a username to go with the password, got none")

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """host:port, then the failover brokers, in the order to try them."""
        return [(self.host, self.port)] + [
            (host.strip("[]"), int(port))
            for host, _, port in (b.rpartition(":") for b in self.brokers)
        ]


@dataclass(frozen=True)
class BufferSettings:
    max_bytes: Annotated[int, Bounds(ge=65536, le=1 << 40), "disk the buffer may use"] = 64 << 20
    overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    commit_interval: Annotated[float, Bounds(ge=0.01, le=1.0), "seconds between fsyncs"] = 1.0
    commit_records: Annotated[Count, "records that force an fsync sooner"] = 1000


@dataclass(frozen=True)
class Window:
    seconds: Annotated[float, Bounds(ge=0.001)]
    stats: tuple[Stat, ...] = ("count", "mean", "min", "max")
    grace: Annotated[NonNegative, "seconds a window stays open for late readings"] = 0.5

    def __post_init__(self) -> None:
        if not self.stats:
            choices = ", ".join(f'"{s}"' for s in STATS)
            raise Invalid("stats", f"expected at least one of {choices}, got an empty list")
        repeated = sorted({s for s in self.stats if self.stats.count(s) > 1})
        if repeated:
            times = ", ".join(f'"{s}" {self.stats.count(s)} times' for s in repeated)
            raise Invalid("stats", f"expected each statistic once, got {times}")


@dataclass(frozen=True)
class SensorSettings:
    name: Name
    interval: Annotated[float, Bounds(ge=0.001), "seconds between polls"] = 1.0
    timeout: Annotated[Positive | None, "seconds a read may take (default: the interval)"] = None
    window: Window | None = None


SENSOR_KEYS = {p.name for p in params_of(SensorSettings)} | {"driver", "pipeline"}


@dataclass(frozen=True)
class Sensor:
    name: str
    driver: Spec[Driver]
    interval: float
    timeout: float
    pipeline: tuple[Spec[Stage], ...]
    window: Window | None


@dataclass(frozen=True)
class Config:
    source: Path
    agent: AgentSettings
    sensors: tuple[Sensor, ...]
    sinks: tuple[Spec[Sink], ...]
    mqtt: Mqtt | None = None
    buffer: BufferSettings = field(default_factory=BufferSettings)

    def with_broker(self, host: str, port: int) -> Config:
        """The same config, publishing to host:port (`--broker`, the demo)."""
        mqtt = dataclasses.replace(self.mqtt or Mqtt(), host=host, port=port)
        return dataclasses.replace(self, mqtt=mqtt)


class ConfigError(Exception):
    """A config with problems; `lines()` gives one line per problem, prefixed by the file."""

    def __init__(self, source: Path | str, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in {source}")
        self.source = source
        self.problems = problems

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {p.path}: {p.message}" if p.path else f"{self.source}: {p.message}"
            for p in self.problems
        ]


def load(source: Path | str) -> Config:
    """Read and check a config file; raises ConfigError listing every problem."""
    path = Path(source)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(path, [Problem("", f"cannot read the file: {e.strerror or e}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, [Problem("", "expected UTF-8 text, got binary data")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [Problem("", f"invalid TOML: {e}")]) from None
    return parse(document, path)


def parse(document: Mapping[str, Any], source: Path) -> Config:
    import agent.stages  # noqa: F401  # registers the built-in stages
    import drivers  # noqa: F401  # registers the built-in drivers

    problems: list[Problem] = []
    tables = ["agent", "sensors", "sinks", "mqtt", "buffer"]
    for key in document:
        if key not in tables:
            problems.append(Problem(key, f"unknown key{suggest(key, tables)}"))

    sections, found_problems = bind(
        [p for p in params_of(Config) if p.name in ("mqtt", "buffer")],
        {k: v for k, v in document.items() if k in ("mqtt", "buffer")},
        "",
    )
    problems += found_problems

    agent_table = document.get("agent", {})
    settings = None
    if not isinstance(agent_table, dict):
        problems.append(Problem.expected("agent", "a table ([agent])", agent_table))
    else:
        kwargs, found_problems = bind(params_of(AgentSettings), agent_table, "agent")
        problems += found_problems
        if not found_problems:
            settings = AgentSettings(**kwargs)  # type: ignore[arg-type]

    sensors: list[Sensor] = []
    seen: set[object] = set()
    for i, table in enumerate(_tables(document, "sensors", problems, required=True)):
        name = table.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(Problem(f"sensors[{i}].name", f'"{name}" is used twice'))
        seen.add(name)
        if (sensor := _sensor(table, f"sensors[{i}]", problems)) is not None:
            sensors.append(sensor)

    sinks = [
        spec
        for i, table in enumerate(_tables(document, "sinks", problems, required=False))
        if (spec := _component(Sink.registry, table, f"sinks[{i}]", "type", problems)) is not None
    ]

    if problems or settings is None:
        raise ConfigError(source, problems)
    return Config(source, settings, tuple(sensors), tuple(sinks), **sections)  # type: ignore[arg-type]


def _tables(
    document: Mapping[str, Any], key: str, problems: list[Problem], *, required: bool
) -> list[dict[str, Any]]:
    value = document.get(key, [])
    if not isinstance(value, list):
        problems.append(Problem.expected(key, f"a list of tables ([[{key}]])", value))
        return []
    strays = [i for i, t in enumerate(value) if not isinstance(t, dict)]
    for i in strays:
        problems.append(Problem.expected(f"{key}[{i}]", "a table", value[i]))
    if strays:
        return []
    if required and not value:
        problems.append(Problem(key, f"expected at least one [[{key}]] table, got none"))
    return value


def _sensor(table: dict[str, Any], path: str, problems: list[Problem]) -> Sensor | None:
    before = len(problems)
    driver_name = table.get("driver")
    cls = _lookup(Driver.registry, driver_name, f"{path}.driver", problems)
    driver_params = cls.params() if cls is not None else []
    own = params_of(SensorSettings)
    # With an unknown driver, its keys cannot be judged: check only the sensor's own.
    known = {"driver", "pipeline"} | (set() if cls is not None else set(table) - SENSOR_KEYS)
    kwargs, found_problems = bind([*own, *driver_params], table, path, known=known)
    problems += found_problems

    stages_value = table.get("pipeline", [])
    stages: list[Spec[Stage]] = []
    if not isinstance(stages_value, list):
        problems.append(
            Problem.expected(
                f"{path}.pipeline", "a list of tables like { stage = ... }", stages_value
            )
        )
        stages_value = []
    for i, stage_table in enumerate(stages_value):
        where = f"{path}.pipeline[{i}]"
        if not isinstance(stage_table, dict):
            problems.append(Problem.expected(where, "a table like { stage = ... }", stage_table))
        elif (
            spec := _component(Stage.registry, stage_table, where, "stage", problems)
        ) is not None:
            stages.append(spec)

    if len(problems) > before or cls is None:
        return None
    settings = SensorSettings(**{k: v for k, v in kwargs.items() if k in SENSOR_KEYS})  # type: ignore[arg-type]
    driver = Spec(cls, {k: v for k, v in kwargs.items() if k not in SENSOR_KEYS})
    if not _builds(driver, path, problems):
        return None
    return Sensor(
        name=settings.name,
        driver=driver,
        interval=settings.interval,
        timeout=settings.timeout or settings.interval,
        pipeline=tuple(stages),
        window=settings.window,
    )


def _component(
    registry: Registry[C], table: dict[str, Any], path: str, key: str, problems: list[Problem]
) -> Spec[C] | None:
    cls = _lookup(registry, table.get(key), f"{path}.{key}", problems)
    if cls is None:
        return None
    kwargs, found_problems = bind(cls.params(), table, path, known={key})
    problems += found_problems
    spec = Spec(cls, kwargs)
    return spec if not found_problems and _builds(spec, path, problems) else None


def _lookup(
    registry: Registry[C], name: object, path: str, problems: list[Problem]
) -> type[C] | None:
    if not isinstance(name, str):
        what = f"the name of a {registry.kind}"
        shown = "nothing (missing)" if name is None else found(name)
        problems.append(Problem(path, f"expected {what}, got {shown}"))
        return None
    try:
        return registry.get(name)
    except UnknownComponent as e:
        problems.append(Problem(path, str(e)))
        return None


def _builds(spec: Spec[Any], path: str, problems: list[Problem]) -> bool:
    """Constructors check what one value alone cannot (two points, min below max)."""
    try:
        spec.build()
    except Invalid as e:
        problems.append(Problem(f"{path}.{e.key}" if e.key else path, str(e)))
        return False
    except (ValueError, TypeError, ArithmeticError) as e:
        problems.append(Problem(path, str(e)))
        return False
    return True
