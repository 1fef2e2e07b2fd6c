"""A wrong password, a wrong CA: one clear line, spaced retries, no busy loop, and recovery.

Each test runs the agent as a subprocess against a private mosquitto that refuses it, watches
it retry for a few seconds (the broker's own log gives the time of every attempt; /proc gives
the agent's CPU time), then fixes the file the agent reads at each connect (the password, the
CA certificate) and checks that aggregates come through, without restarting the agent.
A password from the environment and a client certificate cannot be fixed under a running
agent: there, one agent has them and gets in, another lacks them and is watched failing (an
unset variable stops it before it reaches the broker, so only its CPU time is watched).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import wire
from tests.broker import Mosquitto, free_port

RIGHT_PASSWORD = "Right-horse-7qX2"
WRONG_PASSWORD = "Wrong-staple-3kP9"
PASSWORD_VARIABLE = "EDGE_TEST_PW"
FAILING = 2.5  # seconds the agent is left to retry against a broker that refuses it


# -- a certificate authority of our own ------------------------------------------------------


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_cert(
    directory: Path, ca: tuple[Path, Path], name: str, subject: str, extensions: str
) -> tuple[Path, Path]:
    """A certificate with these extensions, signed by `ca`: (certificate, key)."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", subject,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", extfile,
    )  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by `ca`: (certificate, key)."""
    return make_cert(
        directory,
        ca,
        "server",
        "/CN=localhost",
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n",
    )


def make_client_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A client certificate for the device, signed by `ca`: (certificate, key)."""
    return make_cert(
        directory,
        ca,
        "client",
        "/CN=edge-agent-pi",
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = clientAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n",
    )


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker's certificate
    other_ca: Path  # an unrelated CA, which did not
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by `ca`, for brokers that ask the agent for a certificate
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "Edge Test CA")
    other, _ = make_ca(directory, "Unrelated CA")
    cert, key = make_server_cert(directory, ca)
    client_cert, client_key = make_client_cert(directory, ca)
    return Pki(
        ca=ca[0],
        other_ca=other,
        server_cert=cert,
        server_key=key,
        client_cert=client_cert,
        client_key=client_key,
    )


def tls_listener(port: int, pki: Pki) -> str:
    return (
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
    )


def client_cert_listener(port: int, pki: Pki) -> str:
    """A TLS listener that lets in only clients with a certificate signed by the test CA
    (anonymous still: the certificate is not made the username)."""
    return tls_listener(port, pki) + "require_certificate true\nuse_identity_as_username false\n"


def replace(path: Path, text: str) -> None:
    """Change a file the way an operator's tool would: whole, never half-written."""
    scratch = path.with_suffix(".new")
    scratch.write_text(text)
    os.replace(scratch, path)


# -- watching the broker and the agent -------------------------------------------------------


class ConnectionLog:
    """The time of each connection mosquitto accepts, from its log file, read as it grows
    (mosquitto's own timestamps are whole seconds)."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.times: list[float] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        position, partial = 0, b""
        while not self._stop.is_set():
            try:
                with self.path.open("rb") as f:
                    f.seek(position)
                    chunk = f.read()
            except FileNotFoundError:  # mosquitto has not opened it yet
                chunk = b""
            now = time.monotonic()
            position += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            with self.lock:
                self.times += [now for line in lines if self.is_attempt(line.decode())]
            time.sleep(0.01)

    def is_attempt(self, line: str) -> bool:
        """A connection to the listener watched. A TLS handshake that fails while mosquitto
        accepts the socket is logged only as "Client connection from ... failed" (no port:
        the test's subscribers never use TLS, so that is the agent too)."""
        message = line.partition(": ")[2]
        return (
            message.startswith("New connection from") and message.endswith(f" on port {self.port}.")
        ) or (message.startswith("Client connection from") and " failed: " in message)

    def since(self, start: float) -> list[float]:
        with self.lock:
            return [t for t in self.times if t >= start]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def logged_broker(directory: Path, *, anonymous: bool = True, extra: str = "") -> Mosquitto:
    """A mosquitto that logs every connection to directory/mosquitto.log."""
    log = f"log_dest file {directory}/mosquitto.log\nlog_type all\n"
    return Mosquitto(directory, anonymous=anonymous, extra=log + extra)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class Agent:
    """`edge-agent run` in a subprocess, its JSON logs (stderr) going to a file we can read."""

    def __init__(
        self,
        tmp_path: Path,
        port: int,
        mqtt_extra: str = "",
        env: dict[str, str] | None = None,  # the agent's environment (default: ours)
    ) -> None:
        tmp_path.mkdir(exist_ok=True)
        self.config = tmp_path / "agent.toml"
        self.config.write_text(
            f"""
[agent]
device_id = "pi"
data_dir = "{tmp_path}/data"

[[sensors]]
name = "ticks"
driver = "counter"
interval = 0.05
window = {{ seconds = 0.5, stats = ["count", "sum", "first", "last"], grace = 0.1 }}

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
backoff = {{ base = 0.2, cap = 0.8 }}
{mqtt_extra}
[buffer]
commit_interval = 0.1
"""
        )
        self.log_path = tmp_path / "agent.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
            )

    @property
    def text(self) -> str:
        return self.log_path.read_text()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.text.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found

    def until(self, name: str) -> list[dict[str, Any]]:
        """The log entries before the first `name` event (all of them if there is none)."""
        entries = [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]
        names = [e.get("event") for e in entries]
        return entries[: names.index(name)] if name in names else entries

    def wait_for(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.events(name):
                return found[0]
            assert self.process.poll() is None, f"the agent exited early:\n{self.text}"
            time.sleep(0.02)
        raise AssertionError(f"no {name} logged in {timeout} s:\n{self.text}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        assert self.process.returncode == 0, self.text
        return self.text


class Subscriber:
    """Collects the aggregates of every device, optionally logging in."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.aggregates: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/+/+/agg", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "the test's subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.aggregates.append(wire.decode(message.payload))

    def wait_for(self, check: Callable[[list[Any]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if check(list(self.aggregates)):
                    return
            time.sleep(0.05)
        raise AssertionError(f"the aggregates expected did not arrive: {self.aggregates}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def check_refused_politely(agent: Agent, connections: ConnectionLog) -> dict[str, Any]:
    """While the broker refuses it: the problem logged once, retries spaced out by the
    backoff (0.1 s at the least), and next to no CPU. Returns the broker_unavailable entry."""
    warning = agent.wait_for("broker_unavailable")
    start, cpu_before = time.monotonic(), cpu_seconds(agent.process.pid)
    time.sleep(FAILING)
    cpu = cpu_seconds(agent.process.pid) - cpu_before
    attempts = connections.since(start)
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in {FAILING} s of retrying: a busy loop"
    # base 0.2, cap 0.8: no wait under base / 2 = 0.1 s or over 0.8 s, about 6 attempts.
    assert 3 <= len(attempts) <= FAILING / 0.1 + 1, (attempts, agent.text)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.08, f"retries closer than the backoff allows: {gaps}"
    assert len(agent.events("broker_unavailable")) == 1, agent.text  # once, not per attempt
    assert not agent.events("connected")
    return warning


# -- the tests -------------------------------------------------------------------------------


def test_a_wrong_password_is_logged_once_retried_gently_and_fixed_by_the_file(
    tmp_path: Path,
) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    passwords = broker_dir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "user", RIGHT_PASSWORD],
        check=True,
        capture_output=True,
    )
    broker = logged_broker(broker_dir, anonymous=False, extra=f"password_file {passwords}\n")
    broker.start()
    connections = ConnectionLog(broker_dir / "mosquitto.log", broker.port)
    subscriber = Subscriber(broker.port, "user", RIGHT_PASSWORD)
    password_file = tmp_path / "pw"
    password_file.write_text(WRONG_PASSWORD + "\n")
    agent = Agent(tmp_path, broker.port, f'username = "user"\npassword_file = "{password_file}"\n')
    try:
        warning = check_refused_politely(agent, connections)
        problem = warning["problem"]
        assert warning["broker"] == f"127.0.0.1:{broker.port}"
        assert "refused the connection" in problem, problem
        assert "not authori" in problem.lower(), problem

        replace(password_file, RIGHT_PASSWORD + "\n")  # the agent reads it at each connect
        agent.wait_for("connected", timeout=5)
        # The windows closed while the broker refused the agent were kept, then sent.
        subscriber.wait_for(lambda got: {1, 2, 3} <= {a["seq"] for a in got})
    finally:
        logs = agent.stop()
        subscriber.close()
        connections.close()
        broker.stop()
    assert WRONG_PASSWORD not in logs
    assert RIGHT_PASSWORD not in logs
    refused = [e for e in agent.until("connected") if e["event"] == "broker_unavailable"]
    assert len(refused) == 1, logs  # once for the whole outage, however many attempts
    assert len(agent.events("connected")) == 1, logs
    assert not agent.events("uplink_error"), logs
    assert not agent.events("tls_unverified"), logs


def test_a_wrong_ca_is_logged_once_retried_gently_and_fixed_by_the_file(
    tmp_path: Path, pki: Pki
) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    tls_port = free_port()
    broker = logged_broker(broker_dir, extra=tls_listener(tls_port, pki))
    broker.start()
    connections = ConnectionLog(broker_dir / "mosquitto.log", tls_port)
    subscriber = Subscriber(broker.port)  # on the plain listener; the agent only has TLS
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(pki.other_ca.read_text())
    agent = Agent(tmp_path, tls_port, f'tls = {{ ca_file = "{ca_file}" }}\n')
    try:
        warning = check_refused_politely(agent, connections)
        problem = warning["problem"]
        assert warning["broker"] == f"127.0.0.1:{tls_port}"
        assert "certificate verify failed" in problem.lower(), problem

        replace(ca_file, pki.ca.read_text())  # read again at the next connect
        agent.wait_for("connected", timeout=5)
        subscriber.wait_for(lambda got: {1, 2, 3} <= {a["seq"] for a in got})
    finally:
        logs = agent.stop()
        subscriber.close()
        connections.close()
        broker.stop()
    refused = [e for e in agent.until("connected") if e["event"] == "broker_unavailable"]
    assert len(refused) == 1, logs  # once for the whole outage, however many attempts
    assert len(agent.events("connected")) == 1, logs
    assert agent.events("connected")[0]["broker"] == f"127.0.0.1:{tls_port}"
    assert not agent.events("uplink_error"), logs
    assert not agent.events("tls_unverified"), logs


def test_a_password_from_the_environment_gets_in_and_a_missing_one_is_logged_once(
    tmp_path: Path,
) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    passwords = broker_dir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "user", RIGHT_PASSWORD],
        check=True,
        capture_output=True,
    )
    broker = logged_broker(broker_dir, anonymous=False, extra=f"password_file {passwords}\n")
    broker.start()
    subscriber = Subscriber(broker.port, "user", RIGHT_PASSWORD)
    settings = f'username = "user"\npassword_env = "{PASSWORD_VARIABLE}"\n'
    ours = {k: v for k, v in os.environ.items() if k != PASSWORD_VARIABLE}
    # Two agents at once, to save time: one given the password, one not (which never gets
    # as far as the broker, so the two do not fight over their client id).
    agent = Agent(
        tmp_path / "given", broker.port, settings, {**ours, PASSWORD_VARIABLE: RIGHT_PASSWORD}
    )
    lost = Agent(tmp_path / "unset", broker.port, settings, ours)
    try:
        warning = lost.wait_for("broker_unavailable")
        start, cpu_before = time.monotonic(), cpu_seconds(lost.process.pid)
        agent.wait_for("connected")
        subscriber.wait_for(lambda got: len(got) >= 1)
        time.sleep(max(0.0, start + FAILING - time.monotonic()))  # the other keeps retrying
        cpu = cpu_seconds(lost.process.pid) - cpu_before
        assert cpu < 0.5, f"{cpu:.2f} s of CPU in {FAILING} s of retrying: a busy loop"
        assert lost.process.poll() is None, lost.text
    finally:
        logs = agent.stop()
        lost_logs = lost.stop()
        subscriber.close()
        broker.stop()
    assert RIGHT_PASSWORD not in logs
    assert not [e for e in agent.until("connected") if e["event"] == "broker_unavailable"], logs
    assert len(agent.events("connected")) == 1, logs
    problem = warning["problem"]
    assert warning["broker"] == f"127.0.0.1:{broker.port}"
    assert f"environment variable {PASSWORD_VARIABLE} is not set" in problem, problem
    assert len(lost.events("broker_unavailable")) == 1, lost_logs  # once, not per attempt
    assert not lost.events("connected"), lost_logs
    assert not lost.events("uplink_error"), lost_logs


def test_a_client_certificate_the_broker_asks_for_gets_the_agent_in(
    tmp_path: Path, pki: Pki
) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    tls_port = free_port()
    broker = Mosquitto(broker_dir, extra=client_cert_listener(tls_port, pki)).start()
    subscriber = Subscriber(broker.port)  # on the plain listener, which asks for no certificate
    tls = f'ca_file = "{pki.ca}", cert_file = "{pki.client_cert}", key_file = "{pki.client_key}"'
    agent = Agent(tmp_path, tls_port, f"tls = {{ {tls} }}\n")
    try:
        agent.wait_for("connected", timeout=5)
        subscriber.wait_for(lambda got: len(got) >= 1)
    finally:
        logs = agent.stop()
        subscriber.close()
        broker.stop()
    assert not [e for e in agent.until("connected") if e["event"] == "broker_unavailable"], logs
    assert agent.events("connected")[0]["broker"] == f"127.0.0.1:{tls_port}"
    assert not agent.events("uplink_error"), logs
    assert not agent.events("tls_unverified"), logs


def test_no_client_certificate_for_a_broker_that_asks_is_one_clear_tls_problem(
    tmp_path: Path, pki: Pki
) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    tls_port = free_port()
    broker = logged_broker(broker_dir, extra=client_cert_listener(tls_port, pki))
    broker.start()
    connections = ConnectionLog(broker_dir / "mosquitto.log", tls_port)
    agent = Agent(tmp_path, tls_port, f'tls = {{ ca_file = "{pki.ca}" }}\n')
    try:
        problem = agent.wait_for("broker_unavailable")["problem"]
        assert "TLS" in problem, problem
        assert "certificate" in problem.lower(), problem
        check_refused_politely(agent, connections)
    finally:
        logs = agent.stop()
        connections.close()
        broker.stop()
    assert len(agent.events("broker_unavailable")) == 1, logs
    assert not agent.events("uplink_error"), logs


def test_an_unverified_tls_connection_works_and_is_warned_about(tmp_path: Path, pki: Pki) -> None:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    tls_port = free_port()
    broker = Mosquitto(broker_dir, extra=tls_listener(tls_port, pki)).start()
    subscriber = Subscriber(broker.port)
    agent = Agent(tmp_path, tls_port, "tls = { insecure = true }\n")  # no CA: nothing checked
    try:
        warning = agent.wait_for("tls_unverified")
        agent.wait_for("connected", timeout=5)
        subscriber.wait_for(lambda got: len(got) >= 1)
    finally:
        logs = agent.stop()
        subscriber.close()
        broker.stop()
    assert warning["level"] == "warning"
    assert len(agent.events("tls_unverified")) == 1, logs
    assert not [e for e in agent.until("connected") if e["event"] == "broker_unavailable"], logs


def test_stopping_soon_after_connecting_logs_no_broker_trouble(
    tmp_path: Path, broker: Mosquitto
) -> None:
    subscriber = Subscriber(broker.port)
    agent = Agent(tmp_path, broker.port)
    try:
        agent.wait_for("connected")
        subscriber.wait_for(lambda got: len(got) >= 1)
    finally:
        logs = agent.stop()
        subscriber.close()
    assert not agent.events("broker_unavailable"), logs
