"""Footprint: what the running agent costs a Pi owner, beside its physical anchors.

- agent RSS, 10 simulated sensors at 10 Hz with windows and a local mosquitto: the process's
  peak RSS (VmHWM in /proc/PID/status, read while it runs) against the peak RSS of
  `python -c 'import asyncio, paho.mqtt.client, msgpack'` measured the same way, once its
  imports are done. Not ru_maxrss from wait4: Linux carries the parent's RSS over into a
  child's ru_maxrss at exec, so every child of this (large) bench process read the same;
- CPU over that run (utime + stime from /proc/PID/stat over the steady part, after the first
  window closed), as % of one core;
- `edge-agent --version` wall time against `python -c pass` (the same interpreter);
- event reading → subscriber latency on loopback (QoS 1, JSON payload): receive time minus the
  reading's own timestamp, which is the poll grid time the reading was taken at;
- start to READY=1 on a NOTIFY_SOCKET we bind, against the wall time of the import anchor.

Run: .venv/bin/python bench/footprint.py [--quick]   (one JSON line a figure)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.demo import Mosquitto

try:
    from bench.common import Figure, figure, median_of, timed
except ModuleNotFoundError:  # run as `python bench/footprint.py`: bench/ itself is on the path
    from common import Figure, figure, median_of, timed  # type: ignore[import-not-found,no-redef]

PYTHON = sys.executable
AGENT = str(Path(sys.executable).parent / "edge-agent")  # the venv's entry point
IMPORTS = "import asyncio, paho.mqtt.client, msgpack"
SIMULATED = Path(__file__).resolve().parent.parent / "config" / "simulated.toml"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
DEVICE = "bench"


def _config(scratch: Path, port: int, *, sensors: int, interval: float, window: bool) -> Path:
    """A generated config: `sensors` simulated sensors to the private broker, JSON payloads."""
    lines = [
        "[agent]",
        f'device_id = "{DEVICE}"',
        f'data_dir = "{scratch / "data"}"',
        'log_level = "warning"',
        "",
    ]
    for i in range(sensors):
        driver = "sine" if i % 2 else "counter"
        lines += ["[[sensors]]", f'name = "s{i}"', f'driver = "{driver}"', f"interval = {interval}"]
        if window:
            lines.append('window = { seconds = 10, stats = ["mean", "min", "max", "count"] }')
        lines.append("")
    lines += ["[mqtt]", 'host = "127.0.0.1"', f"port = {port}", "qos = 1", 'payload = "json"']
    path = scratch / f"footprint-{sensors}-{window}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _vm_hwm(pid: int) -> int:
    """The peak RSS of `pid` so far in bytes (VmHWM: its own, since its exec), 0 once gone."""
    return _status_kib(pid, "VmHWM:") * 1024


def _cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _vm_rss(pid: int) -> int:
    """The current VmRSS of `pid` in bytes (0 once it is gone)."""
    return _status_kib(pid, "VmRSS:") * 1024


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0  # gone, or a zombie: no memory left to report


def anchor_rss() -> float:
    """Peak RSS of the import anchor, in bytes: read once its imports are done, while it
    waits to be told to exit."""
    process = subprocess.Popen(
        [PYTHON, "-c", IMPORTS + "; print(flush=True); import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdout.readline()
    peak = _vm_hwm(process.pid)
    process.stdin.close()
    process.wait()
    return float(peak)


class Steady:
    """One agent run on the 10-sensor config: its peak RSS, sampled RSS and steady CPU."""

    def __init__(self, config: Path, seconds: float, settle: float) -> None:
        self.config, self.seconds, self.settle = config, seconds, settle
        self.peak = 0.0  # bytes, VmHWM before the stop
        self.sampled_max = 0.0  # bytes, the largest VmRSS sample
        self.sampled_last = 0.0  # bytes, the last VmRSS sample (steady state)
        self.cpu = 0.0  # % of one core over [settle, seconds]

    def run(self) -> Steady:
        process = subprocess.Popen(
            [AGENT, "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        cpu_start = wall_start = None
        samples: list[int] = []
        while (elapsed := time.monotonic() - started) < self.seconds:
            if process.poll() is not None:
                raise RuntimeError(f"the agent exited early ({process.returncode})")
            samples.append(_vm_rss(process.pid))
            if cpu_start is None and elapsed >= self.settle:
                cpu_start, wall_start = _cpu_seconds(process.pid), time.monotonic()
            time.sleep(0.25)
        cpu_end, wall_end = _cpu_seconds(process.pid), time.monotonic()
        samples.append(_vm_rss(process.pid))
        self.peak = float(_vm_hwm(process.pid))
        process.send_signal(signal.SIGTERM)
        process.wait()
        assert cpu_start is not None
        assert wall_start is not None
        self.cpu = 100 * (cpu_end - cpu_start) / (wall_end - wall_start)
        self.sampled_max, self.sampled_last = float(max(samples)), float(samples[-1])
        return self


def latency(port: int, config: Path, readings: int) -> list[float]:
    """Seconds from each event reading's timestamp to its arrival at a subscriber here."""
    arrived: list[float] = []
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        record = json.loads(message.payload)
        if record.get("kind") == "event" and not record.get("replay"):
            arrived.append(now - record["ts"])
            if len(arrived) >= readings:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-footprint")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"edge/{DEVICE}/+/event", qos=1)
    client.loop_start()
    process = subprocess.Popen(
        [AGENT, "run", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        if not done.wait(readings * 0.1 + 30):
            raise RuntimeError(f"only {len(arrived)} of {readings} events arrived")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        client.loop_stop()
        client.disconnect()
    return arrived[5:]  # the first few wait for the agent's own connection


def to_ready(port: int, scratch: Path) -> float:
    """Seconds from spawning `edge-agent run` on the simulated config to its READY=1."""
    address = str(scratch / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=address)
        command = [AGENT, "run", "-c", str(SIMULATED), "--broker", f"127.0.0.1:{port}"]
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while b"READY=1" not in sock.recv(4096).split(b"\n"):
                pass
            elapsed = time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    os.unlink(address)
    return elapsed


def compile_project() -> None:
    """Byte-code for the project's modules, as `pip install` leaves an installed package.
    An editable install relies on Python's own cache instead, which PYTHONDONTWRITEBYTECODE
    turns off (it is set on this project's machine): every start then compiled every module
    again, 80 ms of start-up the anchor's installed modules never pay."""
    import compileall

    for package in ("agent", "drivers"):
        compileall.compile_dir(Path(__file__).resolve().parent.parent / package, quiet=1)


def figures(quick: bool = False) -> list[Figure]:
    compile_project()
    runs = 3 if quick else 5
    seconds = 10.0 if quick else 60.0
    steady_runs = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="edge-agent-footprint-") as name:
        scratch = Path(name)
        broker = Mosquitto(scratch).start()
        try:
            ten = _config(scratch, broker.port, sensors=10, interval=0.1, window=True)
            one = _config(scratch, broker.port, sensors=1, interval=0.1, window=False)

            # 1 and 2: the same runs. CPU counts after the first window closed (10 s), or
            # after 3 s of a quick 10 s run.
            Steady(ten, 3.0, 1.0).run()  # warm-up: byte-code caches, page cache
            steady = [
                Steady(ten, seconds, 3.0 if quick else 12.0).run() for _ in range(steady_runs)
            ]
            rss = statistics.median(s.peak for s in steady)
            cpu = statistics.median(s.cpu for s in steady)
            rss_anchor = median_of(anchor_rss, runs)

            version = median_of(lambda: timed(lambda: _quiet([AGENT, "--version"])), 10)
            bare = median_of(lambda: timed(lambda: _quiet([PYTHON, "-c", "pass"])), 10)

            delays = latency(broker.port, one, 40 if quick else 105)

            ready = median_of(lambda: to_ready(broker.port, scratch), runs)
            imports = median_of(lambda: timed(lambda: _quiet([PYTHON, "-c", IMPORTS])), runs)
        finally:
            broker.stop()
    mib = 1 << 20
    return [
        figure(
            "agent peak RSS, 10 sensors at 10 Hz, windows, local mosquitto",
            rss / mib,
            "MiB",
            goal=1.3,
            better="lower",
            anchor="python -c 'import asyncio, paho.mqtt.client, msgpack' peak RSS",
            anchor_value=rss_anchor / mib,
            runs=steady_runs,
        ),
        figure(
            f"agent CPU, 10 sensors at 10 Hz, steady part of {seconds:g} s",
            cpu,
            "%",
            goal=1.0,
            better="lower",
            runs=steady_runs,
        ),
        figure(
            "edge-agent --version wall time",
            version * 1000,
            "ms",
            goal=4.0,
            better="lower",
            anchor="python -c pass",
            anchor_value=bare * 1000,
            runs=10,
        ),
        figure(
            "event reading → subscriber latency, loopback, QoS 1, median",
            statistics.median(delays) * 1000,
            "ms",
            goal=20.0,
            better="lower",
            runs=len(delays),
        ),
        figure(
            "start to READY=1, simulated config, local broker",
            ready * 1000,
            "ms",
            goal=3.0,
            better="lower",
            anchor="python -c 'import asyncio, paho.mqtt.client, msgpack' wall time",
            anchor_value=imports * 1000,
            runs=runs,
        ),
    ]


def _quiet(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    for result in figures(quick="--quick" in sys.argv[1:]):
        print(json.dumps(result, ensure_ascii=False))
