"""Fleet: N agents, each its own `edge-agent run` process, against one local mosquitto.

- per-agent peak RSS (VmHWM before the stop, as bench/footprint.py measures one agent), median
  and max, against the peak RSS of `python -c 'import asyncio, paho.mqtt.client, msgpack'`;
- per-agent CPU (utime + stime from /proc/PID/stat) over the measured period, median and max;
- PUBLISH messages/s the broker received over that period ($SYS/broker/publish/messages/received,
  which mosquitto sends every 1 to 2 s), against the aggregates/s the N configs make;
- how many agents exited 0 on SIGTERM, and how many had every aggregate arrive: a subscriber
  on `edge/+/+/agg` holds each channel's sequence numbers, and after the agents stopped they
  must run 1..last without a gap, where `last` is the number the agent's buffer holds (read
  by the agent's own code), and the buffer must hold nothing the broker did not acknowledge.

Each agent has 3 simulated sensors at 2 Hz with 2 s windows, so aggregates flow within the
run, and its own device id (so its own client id, `edge-agent-{device}`) and data_dir. Agents
start in waves, each waiting for the last wave's "online" statuses, so N Python start-ups on a
small machine do not starve each other into connection time-outs.

Run: .venv/bin/python bench/fleet.py [--quick] [--agents N]   (one JSON line a figure)
"""

from __future__ import annotations

import json
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load
from agent.demo import Mosquitto
from agent.uplink import Uplink
from agent.wire import decode

try:
    from bench.common import Figure, figure, median_of
    from bench.footprint import AGENT, _cpu_seconds, _vm_hwm, _vm_rss, anchor_rss
except ModuleNotFoundError:  # run as `python bench/fleet.py`: bench/ itself is on the path
    from common import Figure, figure, median_of  # type: ignore[import-not-found,no-redef]
    from footprint import (  # type: ignore[import-not-found,no-redef]
        AGENT,
        _cpu_seconds,
        _vm_hwm,
        _vm_rss,
        anchor_rss,
    )

PREFIX = "edge"  # the default topic_prefix
DRIVERS = ("sine", "counter", "random_walk")  # one sensor of each, named s0, s1, s2
INTERVAL = 0.5  # seconds between polls
WINDOW = 2.0  # seconds: short, so a minute's run sees many aggregates per channel
RECEIVED = "$SYS/broker/publish/messages/received"  # PUBLISH packets only, not acks or pings
WAIT = 60.0  # seconds a wave may take to come online, or the agents to stop
ARRIVAL = 10.0  # seconds the last acknowledged aggregates may take to reach the subscriber


def config(scratch: Path, port: int, device: str) -> Path:
    """An agent's config: its own device id and data_dir, 3 windowed simulated sensors."""
    lines = [
        "[agent]",
        f'device_id = "{device}"',
        f'data_dir = "{scratch / device}"',
        'log_level = "warning"',
        "",
    ]
    for i, driver in enumerate(DRIVERS):
        lines += ["[[sensors]]", f'name = "s{i}"', f'driver = "{driver}"', f"interval = {INTERVAL}"]
        lines += [f'window = {{ seconds = {WINDOW}, stats = ["mean", "min", "max", "count"] }}']
        lines.append("")
    # No health messages: the broker's count is then aggregates alone (and the statuses).
    lines += ["[mqtt]", 'host = "127.0.0.1"', f"port = {port}", "health_interval = 0"]
    path = scratch / f"{device}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def missing(arrived: set[int], last: int) -> list[int]:
    """The sequence numbers of 1..last that did not arrive."""
    return [seq for seq in range(1, last + 1) if seq not in arrived]


def last_seqs(config_path: Path) -> tuple[dict[str, int], int]:
    """The last sequence number of each channel and the records not yet acknowledged, from a
    stopped agent's buffer, read by the agent's own uplink code (as it would at its next start),
    so this does not depend on the buffer's disk format."""
    config = load(config_path)
    assert config.mqtt is not None
    uplink = Uplink(
        config.mqtt,
        config.buffer,
        device=config.agent.device_id,
        data_dir=config.agent.data_dir,
        sensors=[s.name for s in config.sensors],
    )
    try:
        return uplink.open(), uplink.buffer.pending_records
    finally:
        uplink.buffer.close()


class Watcher:
    """The subscriber: each device's status and aggregates' numbers, and the broker's count."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.online: set[str] = set()
        self.seqs: dict[tuple[str, str], set[int]] = {}  # (device, channel) -> seqs arrived
        self.received: list[tuple[float, int]] = []  # (monotonic time, the broker's count)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        topics = [(f"{PREFIX}/+/+/agg", 1), (f"{PREFIX}/+/status", 1), (RECEIVED, 0)]
        self.client.subscribe(topics)
        if not self.subscribed.wait(10):
            raise RuntimeError("the bench's subscriber got no SUBACK from mosquitto")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self.lock:
            if msg.topic == RECEIVED:
                self.received.append((now, int(msg.payload)))
            elif msg.topic.endswith("/status"):
                status = json.loads(msg.payload)
                if status["state"] == "online":
                    self.online.add(status["device"])
            else:
                record = decode(bytes(msg.payload))
                key = (record["device"], record["sensor"])
                self.seqs.setdefault(key, set()).add(record["seq"])

    def all_online(self, agents: list[Agent]) -> bool:
        with self.lock:
            return all(a.device in self.online for a in agents)

    def arrived(self, device: str, channel: str) -> set[int]:
        with self.lock:
            return set(self.seqs.get((device, channel), ()))

    def rate(self, start: float, end: float) -> float:
        """PUBLISH messages/s the broker received from about `start` to `end` (monotonic
        times): between its last count before `start` and its first after `end`. Mosquitto
        2.0 sends a count every 1 to 2 s, whatever `sys_interval` says, so this waits for the
        one after `end` while the agents still run."""
        deadline = time.monotonic() + 5
        while not (after := [s for s in self._counts() if s[0] >= end]):
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto sent no $SYS count after the measured period")
            time.sleep(0.1)
        earlier = [s for s in self._counts() if s[0] <= start]
        (t0, n0), (t1, n1) = earlier[-1] if earlier else self._counts()[0], after[0]
        if t1 <= t0:
            raise RuntimeError("mosquitto sent only one $SYS count in the measured period")
        return (n1 - n0) / (t1 - t0)

    def _counts(self) -> list[tuple[float, int]]:
        with self.lock:
            return list(self.received)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Agent:
    device: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    peak_rss: float = 0.0  # bytes, VmHWM before the stop
    cpu: float = 0.0  # % of one core over the measured period


@dataclass
class Result:
    agents: list[Agent]
    startup: float  # seconds from the first spawn to the last agent online
    measured: float  # seconds of the measured period
    stopping: float  # seconds from SIGTERM to the last agent reaped
    rate: float  # PUBLISH messages/s the broker received in the measured period
    broker_cpu: float  # mosquitto's % of one core in the measured period
    broker_rss: float  # mosquitto's VmRSS at its end, bytes
    exited_ok: int = 0
    complete: int = 0  # agents with every aggregate arrived
    aggregates: int = 0  # how many aggregates those agents made, all of which arrived
    problems: list[str] = field(default_factory=list)  # one line per agent that fell short


def spawn(scratch: Path, port: int, device: str) -> Agent:
    path = config(scratch, port, device)
    log = scratch / f"{device}.log"
    with log.open("wb") as out:  # the child keeps its own copy: no fd per agent held here
        process = subprocess.Popen(
            [AGENT, "run", "-c", str(path)], stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    return Agent(device, path, log, process)


def run(agents: int, seconds: float, wave: int, scratch: Path, settle: float = 3.0) -> Result:
    """Start `agents` agents in waves of `wave`, measure `seconds` after `settle`, stop them
    with SIGTERM, and check what arrived. Raises if an agent does not come online or dies."""
    _room_for(agents)
    (scratch / "broker").mkdir()
    broker = Mosquitto(scratch / "broker", extra="sys_interval 1\n").start()
    assert broker.process is not None
    broker_pid = broker.process.pid
    fleet: list[Agent] = []
    watcher: Watcher | None = None
    try:
        watcher = Watcher(broker.port)
        began = time.monotonic()
        for first in range(0, agents, wave):
            batch = [
                spawn(scratch, broker.port, f"fleet-{i:03d}")
                for i in range(first, min(first + wave, agents))
            ]
            fleet += batch
            deadline = time.monotonic() + WAIT
            while not watcher.all_online(batch):
                _alive(fleet)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agents did not come online within {WAIT:g} s")
                time.sleep(0.1)
        startup = time.monotonic() - began
        time.sleep(settle)  # the last wave's start-up work is not steady state

        _alive(fleet)
        pids = [a.process.pid for a in fleet] + [broker_pid]
        cpu_start, start = [_cpu_seconds(pid) for pid in pids], time.monotonic()
        time.sleep(seconds)
        _alive(fleet)
        cpu_end, end = [_cpu_seconds(pid) for pid in pids], time.monotonic()
        broker_rss = float(_vm_rss(broker_pid))
        cpu = [100 * (b - a) / (end - start) for a, b in zip(cpu_start, cpu_end, strict=True)]
        for a, share in zip(fleet, cpu[:-1], strict=True):  # the last is mosquitto's
            a.cpu = share
        rate = watcher.rate(start, end)

        for a in fleet:
            a.peak_rss = float(_vm_hwm(a.process.pid))
        stop_began = time.monotonic()
        for a in fleet:
            a.process.send_signal(signal.SIGTERM)
        deadline = stop_began + WAIT
        for a in fleet:
            _reap(a.process, deadline)
        stopping = time.monotonic() - stop_began
        result = Result(fleet, startup, end - start, stopping, rate, cpu[-1], broker_rss)
        _check(result, watcher)
        return result
    finally:
        for a in fleet:
            if a.process.returncode is None:  # only on an error above
                a.process.kill()
                a.process.wait()
        if watcher is not None:
            watcher.stop()
        broker.stop()


def _check(result: Result, watcher: Watcher) -> None:
    """Count the agents that exited 0, and those whose every aggregate arrived."""
    expected: dict[str, dict[str, int]] = {}
    for a in result.agents:
        if a.process.returncode == 0:
            result.exited_ok += 1
        else:
            result.problems.append(f"{a.device}: exit {a.process.returncode}{_tail(a.log)}")
            continue
        seqs, pending = last_seqs(a.config)
        if pending:
            result.problems.append(f"{a.device}: {pending} records unacknowledged in its buffer")
        elif sorted(seqs) != [f"s{i}" for i in range(len(DRIVERS))]:
            result.problems.append(f"{a.device}: channels {sorted(seqs)} in its buffer")
        elif min(seqs.values()) < 2:  # not a vacuous "complete"
            result.problems.append(f"{a.device}: only {min(seqs.values())} aggregate(s)")
        else:
            expected[a.device] = seqs

    def gaps() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for device, seqs in expected.items():
            for channel, last in seqs.items():
                if lost := missing(watcher.arrived(device, channel), last):
                    found.setdefault(device, []).append(f"{channel} {_span(lost)} of 1-{last}")
        return found

    # The broker acknowledged them all; give it a moment to hand the last ones on.
    deadline = time.monotonic() + ARRIVAL
    while (found := gaps()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for device, channels in sorted(found.items()):
        result.problems.append(f"{device}: missing {', '.join(channels)}")
    result.complete = len(expected) - len(found)
    complete = [seqs for device, seqs in expected.items() if device not in found]
    result.aggregates = sum(sum(seqs.values()) for seqs in complete)


def _room_for(agents: int) -> None:
    """Raise the soft limit on open files, which mosquitto inherits, to fit one socket per
    agent with room to spare; fail early when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * agents + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise RuntimeError(f"{agents} agents need {need} open files; ulimit -Hn is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _alive(fleet: list[Agent]) -> None:
    for a in fleet:
        if a.process.poll() is not None:
            raise RuntimeError(f"{a.device} exited early ({a.process.returncode}){_tail(a.log)}")


def _reap(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for `process` to exit, at most until `deadline` (then kill it), and reap it."""
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()[-3:]
    return "".join(f"\n    {line}" for line in lines)


def _span(seqs: list[int]) -> str:
    return f"{seqs[0]}" if len(seqs) == 1 else f"{len(seqs)} ({seqs[0]}…{seqs[-1]})"


def figures(quick: bool = False, agents: int | None = None) -> list[Figure]:
    count = agents or (5 if quick else 200)
    seconds = 6.0 if quick else 30.0
    with tempfile.TemporaryDirectory(prefix="edge-agent-fleet-") as name:
        began = time.monotonic()
        result = run(count, seconds, wave=min(count, 20), scratch=Path(name))
        took = time.monotonic() - began
    rss_anchor = median_of(anchor_rss, 3)
    print(
        f"fleet: {count} agents online in {result.startup:.1f} s (waves of {min(count, 20)}), "
        f"measured {result.measured:.1f} s, stopped in {result.stopping:.1f} s; "
        f"{took:.0f} s in all; mosquitto used {result.broker_cpu:.2g} % CPU and "
        f"{result.broker_rss / (1 << 20):.1f} MiB RSS; {result.aggregates:,} aggregates "
        "arrived complete",
        file=sys.stderr,
    )
    for problem in result.problems:
        print(f"fleet: {problem}", file=sys.stderr)
    mib = 1 << 20
    rss = [a.peak_rss / mib for a in result.agents]
    cpu = [a.cpu for a in result.agents]
    offered = count * len(DRIVERS) / WINDOW
    load = f"{count} agents, 3 sensors at 2 Hz, 2 s windows, one mosquitto"
    anchor = "python -c 'import asyncio, paho.mqtt.client, msgpack' peak RSS"
    return [
        figure(
            f"agents whose every aggregate arrived, no seq gap ({load})",
            result.complete,
            "agents",
            goal=count,
            better="higher",
            runs=1,
        ),
        figure(
            f"agents that exited 0 on SIGTERM, all at once ({count} agents)",
            result.exited_ok,
            "agents",
            goal=count,
            better="higher",
            runs=1,
        ),
        figure(
            f"PUBLISH messages/s mosquitto received, steady {seconds:g} s ({count} agents)",
            result.rate,
            "msg/s",
            goal=0.95,
            better="higher",
            anchor=f"aggregates/s the configs make: {count} × 3 channels / 2 s",
            anchor_value=offered,
            runs=1,
        ),
        figure(
            f"per-agent peak RSS, median of {count} agents",
            statistics.median(rss),
            "MiB",
            goal=1.3,
            better="lower",
            anchor=anchor,
            anchor_value=rss_anchor / mib,
            runs=count,
        ),
        figure(
            f"per-agent peak RSS, max of {count} agents",
            max(rss),
            "MiB",
            goal=1.3,
            better="lower",
            anchor=anchor,
            anchor_value=rss_anchor / mib,
            runs=count,
        ),
        figure(
            f"per-agent CPU, median of {count} agents, steady {seconds:g} s",
            statistics.median(cpu),
            "%",
            goal=1.0,
            better="lower",
            runs=count,
        ),
        figure(
            f"per-agent CPU, max of {count} agents, steady {seconds:g} s",
            max(cpu),
            "%",
            goal=1.0,
            better="lower",
            runs=count,
        ),
    ]


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--agents") + 1]) if "--agents" in args else None
    for result in figures(quick="--quick" in args, agents=n):
        print(json.dumps(result, ensure_ascii=False))
