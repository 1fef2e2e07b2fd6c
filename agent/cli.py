"""The `edge-agent` command: run, tail, status, check, describe, profile.

Imports stay inside the commands so `edge-agent --version` starts in a blink.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:
    from agent.config import Config

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Read sensors, aggregate on the board, forward the results."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent in the foreground")
    run.add_argument("-c", "--config", type=Path, required=True, help="the TOML config file")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    run.add_argument("--broker", metavar="HOST:PORT", help="use this MQTT broker instead")

    tail = commands.add_parser("tail", help="print the records arriving at the broker")
    tail.add_argument("-c", "--config", type=Path, required=True)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--count", type=int, help="exit after this many records")
    tail.add_argument("--sensor", help="only this sensor")
    tail.add_argument("--broker", metavar="HOST:PORT", help="use this MQTT broker instead")
    tail.add_argument("--timeout", type=float, help="give up after this many seconds")

    status = commands.add_parser("status", help="print a device's last health message")
    status.add_argument("-c", "--config", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="the message as it came (JSON)")
    status.add_argument("--broker", metavar="HOST:PORT", help="use this MQTT broker instead")
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for it (default 5)"
    )

    check = commands.add_parser("check", help="check a config file and exit (0: valid, 2: not)")
    check.add_argument("-c", "--config", type=Path, required=True)

    describe = commands.add_parser(
        "describe", help="list drivers, stages and sinks with their parameters"
    )
    describe.add_argument("name", nargs="?", help="show only this driver, stage or sink")

    profile = commands.add_parser(
        "profile", help="profile the config's pipelines on simulated data (cProfile top functions)"
    )
    profile.add_argument("-c", "--config", type=Path, required=True)
    profile.add_argument(
        "--readings", type=int, default=10_000, help="readings per channel (default 10,000)"
    )
    profile.add_argument("--top", type=int, default=15, help="functions to list (default 15)")

    args = parser.parse_args(argv)
    if args.command == "profile":
        return _profile(args)
    if args.command == "describe":
        try:
            return _describe(args.name)
        except BrokenPipeError:  # `edge-agent describe | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
            return 0
    if args.command == "tail":
        return _tail(args)
    if args.command == "status":
        return _status(args)
    return _check(args.config) if args.command == "check" else _run(args)


def _load(path: Path, broker: str | None = None):  # type: ignore[no-untyped-def]  # lazy import
    from agent.config import ConfigError, load

    try:
        config = load(path)
    except ConfigError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        return None
    if broker is None:
        return config
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        print(f'edge-agent: --broker: expected HOST:PORT, got "{broker}"', file=sys.stderr)
        return None
    return config.with_broker(host, int(port))


def _tail(args: argparse.Namespace) -> int:
    from agent.tail import Tail

    config = _load(args.config, args.broker)
    if config is None:
        return EXIT_CONFIG
    if config.mqtt is None:
        print(f"{args.config}: mqtt: expected an [mqtt] table to tail, got none", file=sys.stderr)
        return EXIT_CONFIG
    watcher = Tail(config, as_json=args.json, count=args.count, sensor=args.sensor)
    return watcher.run(timeout=args.timeout)


def _status(args: argparse.Namespace) -> int:
    from agent.status import show

    config = _load(args.config, args.broker)
    if config is None:
        return EXIT_CONFIG
    if config.mqtt is None:
        print(f"{args.config}: mqtt: expected an [mqtt] table to ask, got none", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return show(config, as_json=args.json, timeout=args.timeout)
    except KeyboardInterrupt:
        return 130


def _profile(args: argparse.Namespace) -> int:
    from agent.profile import run

    if args.readings < 1:
        print(
            f"edge-agent profile: --readings: expected 1 or more, got {args.readings}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return run(config, args.readings, top=args.top)


def _check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    sensors, sinks = len(config.sensors), len(config.sinks)
    print(f"{path}: ok ({sensors} sensor{'s' * (sensors != 1)}, {sinks} sink{'s' * (sinks != 1)})")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from agent import log
    from agent.daemon import Agent, StartupError
    from agent.notify import Notifier

    config = _load(args.config, args.broker)
    if config is None:
        return EXIT_CONFIG
    log.setup(args.log_level or config.agent.log_level, json_lines=True if args.log_json else None)
    notifier = Notifier.from_environment()

    async def main() -> None:
        nonlocal config
        loop = asyncio.get_running_loop()
        deadline = None if args.duration is None else loop.time() + args.duration
        running: Config | None = None  # the last config that started
        while True:
            agent = Agent(config, notifier=notifier)
            newer: list[Config] = []

            def reload(agent: Agent = agent, newer: list[Config] = newer) -> None:
                # A bad new config is reported as `check` reports it; the agent runs on.
                if (fresh := _load(args.config, args.broker)) is None:
                    log.get("agent").error("reload_rejected", config=str(args.config))
                    return
                newer.append(fresh)
                agent.stop(reloading=True)

            loop.add_signal_handler(signal.SIGHUP, reload)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, agent.stop)
            try:
                await agent.run(None if deadline is None else max(0.0, deadline - loop.time()))
            except StartupError as e:
                if running is None:
                    raise
                # A reloaded config that checks but cannot start (a sink's folder is not
                # writable): back to the one that ran, rather than exit and be restarted
                # by systemd into the same failure, again and again.
                log.get("agent").error("reload_failed", error=str(e), config=str(args.config))
                config = running
                continue
            running = config
            if not (newer and agent.reloading):
                return
            config = newer[-1]
            log.setup(args.log_level or config.agent.log_level, json_lines=args.log_json or None)
            log.get("agent").info("reloaded", config=str(args.config))

    try:
        asyncio.run(main())
    except StartupError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    return 0


def _describe(name: str | None) -> int:
    import agent.stages  # noqa: F401  # registers the built-in stages
    import drivers  # noqa: F401  # registers the built-in drivers
    from agent.pipeline import Stage
    from agent.registry import Registry, UnknownComponent
    from agent.sinks import Sink
    from drivers.base import Driver

    kinds: list[tuple[str, Registry[Any]]] = [
        ("drivers", Driver.registry),
        ("stages", Stage.registry),
        ("sinks", Sink.registry),
    ]
    for _, registry in kinds:
        for failure in registry.discover():
            print(f"edge-agent: cannot load {failure}", file=sys.stderr)
    if name is not None:
        for _, registry in kinds:
            try:
                print(_component_text(registry.get(name)))
                return 0
            except UnknownComponent:
                continue
        from agent.schema import suggest

        every = [n for _, registry in kinds for n in registry.names()]
        print(
            f'edge-agent: no driver, stage or sink named "{name}"{suggest(name, every)}',
            file=sys.stderr,
        )
        return EXIT_CONFIG
    for title, registry in kinds:
        print(f"{title}:\n")
        for cls in registry:
            print(_component_text(cls), end="\n\n")
    return 0


def _component_text(cls: type) -> str:
    from agent.registry import Component
    from agent.tunable import tunables
    from drivers.base import Driver

    assert issubclass(cls, Component)
    lines = [f"  {cls.name} - {cls.summary()}"]
    if issubclass(cls, Driver):
        reports = ", ".join(
            " ".join(filter(None, (c.name, c.unit, c.device_class and f"[{c.device_class}]")))
            for c in cls.channels
        )
        lines.append(f"      reports: {reports or 'the channels its parameters name'}")
    tunable = tunables(cls)  # changeable at run time (mqtt.tuning)
    for p in cls.params():
        default = "required" if p.required else f"default {_toml(p.default)}"
        more = "; tunable" if p.name in tunable else ""
        doc = f": {p.doc}" if p.doc else ""
        lines.append(f"      {p.name} ({p.type_text}; {default}{more}){doc}")
    return "\n".join(lines)


def _toml(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
