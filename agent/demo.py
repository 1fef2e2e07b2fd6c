"""`make demo`: a private mosquitto, the agent on simulated sensors, and what arrives through it.

Also home of `Mosquitto`, the throwaway broker the demo and the tests start on a free
loopback port (never the system's 1883).
"""

from __future__ import annotations

import getpass
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.config import load
from agent.tail import Tail


def free_port() -> int:
    """A free loopback port below Linux's range for outgoing connections (32768 up), so no
    client socket can take it while a broker restarts on it. Never 1883."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    return found or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto:
    """A mosquitto of our own in `directory`, on a free port; stop and start it at will."""

    def __init__(
        self, directory: Path, port: int | None = None, *, anonymous: bool = True, extra: str = ""
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.anonymous = anonymous
        self.extra = extra  # more mosquitto.conf lines: a TLS listener, a password_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        config = self.directory / "mosquitto.conf"
        # Persistence keeps a subscriber's session, and its queued QoS 1 messages, across
        # a restart of the broker. As root, mosquitto would drop to the user "mosquitto",
        # who cannot write here: stay who we are.
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # queue all a sleeping subscriber misses, not 1000
            f"user {getpass.getuser()}\n"
            f"{self.extra}"
        )
        for _ in range(5):  # a port still held for a moment: try again shortly
            self.process = subprocess.Popen(
                [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.process.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) == 0:
                        return self
                time.sleep(0.02)
            self.stop()
            time.sleep(0.3)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS") or 0) or None
    config_path = Path(os.environ.get("DEMO_CONFIG") or "config/simulated.toml")
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as scratch:
        try:
            broker = Mosquitto(Path(scratch)).start()
        except RuntimeError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        address = f"127.0.0.1:{broker.port}"
        log_path = Path(".edge-agent/demo-agent.log")
        log_path.parent.mkdir(exist_ok=True)
        print(f"demo: mosquitto on {address}; the agent's logs go to {log_path}")
        print("demo: what arrives through the broker (Ctrl-C stops):\n")
        with log_path.open("w") as agent_log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(config_path), "--broker", address],
                stdout=agent_log,
                stderr=agent_log,
            )
            config = load(config_path).with_broker("127.0.0.1", broker.port)
            watcher = Tail(config)
            thread = threading.Thread(target=watcher.run)
            thread.start()
            try:
                time.sleep(seconds) if seconds else threading.Event().wait()
            except KeyboardInterrupt:
                pass
            finally:
                agent.send_signal(signal.SIGTERM)  # it flushes its open windows, partial
                agent.wait(30)
                time.sleep(0.5)  # for the last of them to come through
                watcher.stop()
                thread.join()
                broker.stop()
        print(f"\ndemo: {watcher.received} records arrived through the broker.")
        for line in log_path.read_text().splitlines():
            if '"uplink_counters"' in line:
                c = json.loads(line)
                print(
                    f"demo: the agent published {c['published']}, the broker acknowledged "
                    f"{c['acknowledged']}, the buffer dropped {c['buffer_dropped']}; "
                    f"agent and mosquitto stopped (agent exit {agent.returncode})."
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
