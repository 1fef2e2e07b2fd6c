"""Faults around the uplink and its buffer, found in review; each test failed before its fix.

Real mosquitto where a broker is needed; nothing of the agent's own code is mocked. Failures of
the operating system (a full disk, a short write) are made real with a small tmpfs (root only,
skipped otherwise) or with RLIMIT_FSIZE in a child process.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer import Buffer
from agent.config import parse
from agent.records import Aggregate, Reading
from agent.uplink import Uplink
from tests.broker import Mosquitto, free_port
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent


def make_uplink(tmp_path: Path, port: int, **mqtt: Any) -> Uplink:
    buffer = mqtt.pop("buffer", {})
    config = parse(
        {
            "agent": {"device_id": "pi", "data_dir": str(tmp_path / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "keepalive": 5,
                "backoff": {"base": 0.05, "cap": 0.2},
                **mqtt,
            },
            "buffer": buffer,
        },
        tmp_path / "t.toml",
    )
    assert config.mqtt is not None
    return Uplink(config.mqtt, config.buffer, device="pi", data_dir=tmp_path / "data", sensors=[])


def aggregate(sensor: str, seq: int) -> Aggregate:
    return Aggregate(sensor, float(seq), seq + 1.0, 10, {"mean": float(seq)}, "u", seq)


async def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


def saved_state(directory: Path) -> tuple[int, dict[str, Any]]:
    """The cursor and the uplink's state as the last commit left them on disk."""
    from agent.buffer import last_commit

    state = last_commit(directory)
    assert state is not None, "no commit on disk"
    return state[0], json.loads(state[1])


def run_child(code: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- 1. MQTT 5: a PUBACK carrying a failure reason code is taken as delivery -----------------


async def test_a_publish_the_broker_refuses_is_not_released(tmp_path: Path) -> None:
    """MQTT 5 brokers say "not delivered" in the PUBACK's reason code (not authorized, quota
    exceeded, implementation error, ...). uplink.py:230 drops the reason code, so _send releases
    the record as if the broker had taken it: gone from the buffer, delivered to nobody.
    (mosquitto 2.0 also closes the connection after the PUBACK 0x87, so which refusals get
    processed before the disconnect is a race; brokers that keep the connection lose every one.)"""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/pi/status\ntopic read #\n")  # no write on the data
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", extra=f"acl_file {acl}\n").start()
    try:
        uplink = make_uplink(tmp_path, broker.port, protocol="5")
        uplink.open()
        for n in range(3):
            uplink.write(Reading("x", float(n), float(n)))
        task = asyncio.create_task(uplink.run())
        await wait_until(lambda: uplink.acknowledged > 0, timeout=3.0)
        acknowledged, pending = uplink.acknowledged, uplink.buffer.pending_records
        uplink.stop()
        await asyncio.wait_for(uplink.close(drain_timeout=0.2), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        broker.stop()
    assert (acknowledged, pending) == (0, 3), "records the broker refused were released: lost"


# -- 2. One failed periodic commit ends periodic commits for good ---------------------------


def test_a_failed_commit_does_not_stop_the_periodic_commits(tmp_path: Path) -> None:
    """uplink.py:207: _commit_periodically has no try/except. One OSError from commit() (a full
    disk, EIO) ends the task silently; from then on nothing is fsynced until commit_records
    records have been written (1000 by default: hours of aggregates), not every
    commit_interval as promised. The commits are made to fail for real, in a child process:
    with RLIMIT_FSIZE below the cursor slot's size, the kernel cuts the slot write short."""
    result = run_child(
        f"""
        import asyncio, resource, signal
        from pathlib import Path
        from tests.broker import free_port
        from tests.test_uplink_faults import aggregate, make_uplink, saved_state, wait_until
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        tmp = Path({str(tmp_path)!r})
        seq = lambda: saved_state(tmp / "data" / "buffer")[1].get("seq", {{}}).get("x")
        async def main():
            uplink = make_uplink(tmp, free_port(), buffer={{"commit_interval": 0.05}})
            uplink.open()
            uplink.commit()
            task = asyncio.create_task(uplink.run())  # no broker: only the committer matters
            uplink.write(aggregate("x", 1))
            saved = await wait_until(lambda: seq() == 1, timeout=1.0)
            uplink.write(aggregate("x", 2))
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # each commit now fails
            await asyncio.sleep(0.3)
            held = seq() == 1  # the commits of x#2 failed (and the slot before still holds)
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # the disk is fine again
            committed = await wait_until(lambda: seq() == 2, timeout=1.0)
            uplink.stop()
            await asyncio.wait_for(uplink.close(drain_timeout=0.1), 5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            print(saved, held, committed)
        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    saved, held, committed = result.stdout.split()
    assert (saved, held) == ("True", "True"), "the commits did not fail: nothing was tested"
    assert committed == "True", (
        "nothing was committed for 1 s (20 commit intervals) after a failure"
    )


# -- 3. A short write (disk full mid-frame) misaligns every later position --------------------


def test_a_short_write_does_not_shift_every_later_record(tmp_path: Path) -> None:
    """buffer.py:159 ignores what os.write returns. On a full disk the kernel writes part of the
    frame and returns the count; append() still books the whole frame, so every later position
    is off: read() yields a garbage "record" spanning the torn frame and the next ones, and the
    records written once space is back never come out (the uplink would publish the garbage,
    then release past them). The disk filling mid-frame is made real with RLIMIT_FSIZE."""
    result = run_child(
        f"""
        import resource, signal
        from pathlib import Path
        from agent.buffer import Buffer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        record = lambda n: f"record-{{n:04d}}".encode() * 4
        with Buffer(Path({str(tmp_path)!r})) as buffer:
            for n in range(3):
                buffer.append(record(n))
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (buffer.end + 20, hard))  # disk full
            try:
                buffer.append(record(3))
            except OSError:
                pass  # refusing the record is fine; losing the next ones is not
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
            for n in range(4, 7):
                buffer.append(record(n))
            print(repr([p for _, _, p in buffer.read(0, 100)]))
        """
    )
    assert result.returncode == 0, result.stderr
    got = ast.literal_eval(result.stdout)
    records = [f"record-{n:04d}".encode() * 4 for n in range(7)]
    assert got in (records, records[:3] + records[4:]), got  # record 3 may be refused, no more


# -- 4. A roll that cannot create its segment leaves the buffer writing to a stale descriptor ---


def test_a_failed_roll_leaves_the_buffer_usable(tmp_path: Path) -> None:
    """buffer.py:238-245: _roll() closes the current descriptor and appends the new Segment
    before os.open() of the new file. When that open fails (no inode or no space left, EMFILE),
    self._fd is a closed descriptor number and segments[-1] a file that does not exist. Once
    the disk has room again, appends "succeed" into whatever file the kernel gave that number
    next (here another file; in the agent a sink's file or paho's socket), and read() fails on
    the missing segment. Real ENOSPC from a tmpfs short of inodes (root only)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "none", str(mount)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        buffer = Buffer(mount / "buffer", max_bytes=1 << 20, segment_bytes=4096, reserve_bytes=0)
        buffer.open()
        record = b"x" * 1000
        for _ in range(4):
            buffer.append(record)
        fillers = []
        for i in range(1000):  # another program takes every inode left
            try:
                (mount / f"fill{i}").touch()
            except OSError:
                break
            fillers.append(mount / f"fill{i}")
        with pytest.raises(OSError, match="No space left"):
            buffer.append(record)  # the roll cannot create the next segment: refused, fine
        for path in fillers:
            path.unlink()  # room again
        other = os.open(mount / "other", os.O_WRONLY | os.O_CREAT, 0o600)  # a sink opens a file
        try:
            for _ in range(3):
                buffer.append(record)
        except OSError:
            pass  # refusing would be acceptable; writing elsewhere is not
        finally:
            os.close(other)
        foreign = (mount / "other").stat().st_size
        missing = [s.path.name for s in buffer.segments if not s.path.exists()]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert foreign == 0, f"the buffer wrote {foreign} bytes of frames into another file"
    assert not missing, f"the buffer lists segments that do not exist: {missing}"


# -- 5. Cutting the tail of a segment that is not the last renames the later ones --------------


def test_a_bad_sector_in_an_older_segment_keeps_later_positions(tmp_path: Path) -> None:
    """buffer.py:118-120 closes the "gap" left when recovery cut a corrupt tail off a segment
    that is not the last, by renaming every later segment to a lower base: their records all
    change position. But positions are saved on disk: the uplink's state keeps `end`, from
    which Uplink.open() (uplink.py:109) scans for sequence numbers appended after the last
    commit. After the shift that scan starts k bytes into a frame, skips what follows, and the
    agent reuses a sequence number it already put in the buffer. (The module docstring promises
    "every intact record keeps its position".) Depending on the sizes, the scan can also raise
    struct.error, which daemon.py:119 does not catch: the agent then never starts again."""
    uplink = make_uplink(tmp_path, free_port(), buffer={"max_bytes": 65536})  # 8 KiB segments
    uplink.open()
    seq = 0
    while len(uplink.buffer.segments) < 2:
        seq += 1
        uplink.write(aggregate("a", seq))
    uplink.commit()
    uplink.write(aggregate("a", seq + 1))  # appended after the last commit, then a crash:
    assert uplink.buffer._fd is not None
    os.close(uplink.buffer._fd)  # no commit, no close
    first = sorted((tmp_path / "data" / "buffer").glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    data[-4:] = bytes(4)  # a bad sector hits the older segment's last record
    first.write_bytes(bytes(data))
    again = make_uplink(tmp_path, free_port(), buffer={"max_bytes": 65536})
    seqs = again.open()
    again.buffer.close()
    assert seqs["a"] == seq + 1, f"aggregate a#{seq + 1} is in the buffer; the next gets it again"


# -- 6. Padding at the end of the log: the sender spins without ever yielding ------------------


def test_padding_at_the_end_of_the_log_does_not_freeze_the_agent(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """read() skips padding frames without yielding them, so _send's `position` never moves
    past a padding frame that has no record after it. `more` (uplink.py:356) stays true, the
    loop neither publishes nor awaits: the event loop is frozen (SIGTERM, windows, acks, all).
    The log ends in padding after two bad sectors in one unacknowledged segment: the first
    record hit is padded at one start, the record after it is cut at the next (buffer.py:292).
    Run in a child process, with a deadline."""
    data = tmp_path / "data"
    uplink = make_uplink(tmp_path, free_port())
    uplink.open()
    positions = [uplink.buffer.end]
    for n in range(3):
        uplink.write(Reading("x", float(n), float(n)))
        positions.append(uplink.buffer.end)
    uplink.buffer.release(positions[1])  # the first record was acknowledged
    uplink.commit()
    uplink.buffer.close()
    [segment] = (data / "buffer").glob("*.log")
    for hit in (1, 2):  # a bad sector in record 1, a start, then one in record 2, a start
        raw = bytearray(segment.read_bytes())
        raw[positions[hit + 1] - 1] ^= 0xFF
        segment.write_bytes(bytes(raw))
        again = make_uplink(tmp_path, free_port())
        again.open()
        again.buffer.close()
    try:
        result = run_child(
            f"""
            import asyncio
            from pathlib import Path
            from tests.test_uplink_faults import make_uplink, wait_until
            async def main():
                uplink = make_uplink(Path({str(tmp_path)!r}), {broker.port})
                uplink.open()
                task = asyncio.create_task(uplink.run())
                await wait_until(lambda: uplink.connected)
                await asyncio.sleep(0.5)
                uplink.stop()
                await uplink.close(drain_timeout=0.5)
                task.cancel()
                print("stopped")
            asyncio.run(main())
            """,
            timeout=8.0,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the agent's event loop froze: _send spins on the trailing padding")
    assert "stopped" in result.stdout, result.stderr


# -- 7. tail: one payload it cannot turn into a record kills its network thread --------------


def test_tail_survives_a_payload_that_is_not_a_record(tmp_path: Path, broker: Mosquitto) -> None:
    """tail.py:105-111 only catches ValueError around wire.split. A payload that decodes to
    something other than a map (a bare msgpack int here) or a map short of a field raises
    AttributeError/KeyError inside paho's on_message; paho re-raises it (suppress_exceptions
    is False) and its loop thread dies. `edge-agent tail` then prints nothing more, silently,
    until its timeout: the person checking the broker concludes the agent sends nothing."""
    from agent import wire
    from agent.tail import Tail

    config = parse(
        {
            "agent": {"device_id": "pi", "data_dir": str(tmp_path / "data")},
            "sensors": [{"name": "x", "driver": "counter"}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        },
        tmp_path / "t.toml",
    )
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        tail = Tail(config, count=1, out=stream)
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(tail.run(timeout=3.0)))
        runner.start()
        time.sleep(0.5)  # subscribed
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("edge/pi/x/agg", b"\x01", qos=1).wait_for_publish(2)  # not a record
        good = wire.encode(Reading("x", 1.0, 42.0, "u"), "pi")
        publisher.publish("edge/pi/x/event", good, qos=1).wait_for_publish(2)
        runner.join(5)
        publisher.loop_stop()
        publisher.disconnect()
    assert result == [0], f"tail missed the good record after the odd one: {out.read_text()!r}"


# -- 8. A full disk and a corrupt segment: the buffer will not open ---------------------------


def test_a_full_disk_does_not_stop_a_corrupt_buffer_from_opening(tmp_path: Path) -> None:
    """buffer.py:306/320: recovery copies a corrupt segment to quarantine/ before repairing it,
    and an OSError from that copy (ENOSPC: a full disk is when torn writes happen) escapes
    open(); daemon.py turns it into StartupError "cannot open the buffer", at every restart,
    until someone frees space. The copy is a post-mortem nicety; the repair needs no space.
    Real ENOSPC from a small tmpfs (root only)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        with Buffer(mount / "buffer", reserve_bytes=0) as buffer:
            for n in range(2000):
                buffer.append(f"record-{n:06d}".encode() * 10)
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # another program fills the disk
            while True:
                os.write(filler, bytes(4096))
        os.close(filler)
        [segment] = (mount / "buffer").glob("*.log")
        with segment.open("r+b") as f:  # the last record is torn (in place: no space needed)
            f.seek(-1, os.SEEK_END)
            f.write(b"\xff")
        again = Buffer(mount / "buffer", reserve_bytes=0)
        try:
            again.open()
            opened = True
            again.close()
        except OSError as e:
            opened = False
            error = e
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert opened, f"the buffer refused to open: {error}"


# -- 9. A fully acknowledged segment that recovers to nothing stays, below the cursor ----------


def test_records_appended_after_an_emptied_segment_can_be_read(tmp_path: Path) -> None:
    """buffer.py:122: a segment entirely before the cursor is deleted at open "if
    segment.size" — one that recovery cut down to nothing (its first frame unreadable: a bad
    sector, a zero-filled block) is kept instead, ending below the cursor. New records are then
    appended at positions below the cursor: read() never returns them, so they are never sent,
    pending_bytes goes negative (max_bytes no longer bounds anything), and at the next start the
    segment ends below the cursor again and is deleted with them: appended records lost."""
    with Buffer(tmp_path) as buffer:
        for n in range(5):
            buffer.append(b"old-%d" % n * 10)
        buffer.release(buffer.end)  # all acknowledged
    [segment] = tmp_path.glob("*.log")
    segment.write_bytes(bytes(segment.stat().st_size))  # the whole block reads back as zeros
    with Buffer(tmp_path) as buffer:
        for n in range(3):
            buffer.append(b"new-%d" % n * 10)
        assert buffer.pending_bytes >= 0
        assert [p[:5] for _, _, p in buffer.read(0, 100)] == [b"new-0", b"new-1", b"new-2"]
    with Buffer(tmp_path) as buffer:  # and they survive a restart
        assert [p[:5] for _, _, p in buffer.read(0, 100)] == [b"new-0", b"new-1", b"new-2"]


# -- 10. Acks that empty a full window at once: the sender waits for an ack that never comes ----


class AckGate:
    """A TCP relay to the broker for one connection. It lets the CONNACK through, then holds
    everything else the broker sends (the PUBACKs) until `release()`: the test decides when
    acknowledgements reach the agent, and how many arrive together."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.holding = True
        self.held = b""
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed before the agent came
            agent, _ = self.listener.accept()
            broker = socket.create_connection(("127.0.0.1", self.target))
            self.agent, self.sockets = agent, [agent, broker]
            threading.Thread(target=self._up, args=(agent, broker), daemon=True).start()
            threading.Thread(target=self._down, args=(broker, agent), daemon=True).start()

    def _up(self, agent: socket.socket, broker: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := agent.recv(65536):
                broker.sendall(data)
        self.close()

    def _down(self, broker: socket.socket, agent: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connack = b""
            while len(connack) < 4:  # MQTT 3.1.1 CONNACK: 0x20, 2, flags, return code
                if not (data := broker.recv(4 - len(connack))):
                    break
                connack += data
            agent.sendall(connack)
            while data := broker.recv(65536):
                with self.lock:
                    if self.holding:
                        self.held += data
                    else:
                        agent.sendall(data)
        self.close()

    def release(self, *, hold: bool) -> None:
        """Send on what is held, all at once; then hold again, or let everything through."""
        with self.lock:
            self.agent.sendall(self.held)
            self.held, self.holding = b"", hold

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


async def test_acks_that_empty_a_full_window_at_once_do_not_stall_the_backlog(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """_send took in the acks that woke it only after its publish step, which, with the window
    full, had sent nothing; the room they freed then waited for the next ack. When they were
    the last in flight there was no next ack: the backlog stayed put until a record was
    written (never, for an idle sensor, or in the drain at shutdown).
    test_live_records_do_not_wait_behind_a_backlog hung on it in about 1 run of 3, and in
    7 of 8 with the other core busy. Without the fix this test fails at one of its waits."""
    gate = AckGate(broker.port)
    uplink = make_uplink(tmp_path, gate.port, inflight=4)
    uplink.open()
    for seq in range(1, 13):  # a backlog of three windows
        uplink.write(aggregate("a", seq))

    def state() -> str:
        return (
            f"published {uplink.published}, acknowledged {uplink.acknowledged}, pending "
            f"{uplink.buffer.pending_records} records, connected {uplink.connected}, "
            f"{len(gate.held)} bytes of acks held"
        )

    task = asyncio.create_task(uplink.run())
    try:
        # Window 1 goes out beside the "online" status, which takes one of the four slots:
        # a1-a3 are sent. Their acks and the status's go through, and a4-a7 fill the room
        # they free; the PUBACKs of a4-a7 (4 bytes each) are held.
        await eventually(lambda: len(gate.held) >= 16, state)
        gate.release(hold=True)
        await eventually(lambda: uplink.published == 7 and len(gate.held) >= 16, state)
        # The window is full and the sender waits. All four acks arrive together: the loop is
        # blocked on purpose until paho has taken them in, so the sender sees them at once.
        gate.release(hold=False)
        time.sleep(0.5)
        await eventually(lambda: uplink.buffer.pending_bytes == 0, state, timeout=5.0)
        assert uplink.published == uplink.acknowledged == 12, state()
    finally:
        uplink.stop()
        await asyncio.wait_for(uplink.close(drain_timeout=0.5), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gate.close()
