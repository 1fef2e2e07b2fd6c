"""The durable buffer: what survives a restart, a crash, corruption and a full disk budget."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from agent.buffer import HEADER, SLOTS, Buffer

ROOT = Path(__file__).resolve().parent.parent


def payload(n: int) -> bytes:
    return f"record-{n:06d}".encode() * 3


def contents(buffer: Buffer) -> list[bytes]:
    return [p for _, _, p in buffer.read(0, limit=1_000_000)]


def test_records_come_back_in_order_until_released(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        positions = [buffer.append(payload(n)) for n in range(10)]
        assert positions == sorted(positions)
        assert contents(buffer) == [payload(n) for n in range(10)]
        third = list(buffer.read(0, limit=3))
        buffer.release(third[-1][1])  # the broker acknowledged the first three
        assert contents(buffer) == [payload(n) for n in range(3, 10)]
        assert buffer.pending_records == 7
        resumed = list(buffer.read(positions[5], limit=2))  # reading from any record position
        assert [p for _, _, p in resumed] == [payload(5), payload(6)]


def test_a_restart_keeps_what_was_not_acknowledged(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(5):
            buffer.append(payload(n))
        buffer.release(next(iter(buffer.read(0, limit=1)))[1])
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [payload(n) for n in range(1, 5)]
        buffer.append(payload(5))
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [payload(n) for n in range(1, 6)]


def test_a_crash_loses_no_append_and_resends_what_was_acknowledged_since_the_last_commit(
    tmp_path: Path,
) -> None:
    buffer = Buffer(tmp_path)
    buffer.open()
    for n in range(4):
        buffer.append(payload(n))
    buffer.commit()
    buffer.release(next(iter(buffer.read(0, limit=1)))[1])  # acknowledged, not yet committed
    buffer.append(payload(4))  # appended, not yet committed
    # The process dies here: no close(), no commit().
    with Buffer(tmp_path) as again:
        assert contents(again) == [payload(n) for n in range(5)]  # 0 comes again: a duplicate


def test_a_torn_tail_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(5):
            buffer.append(payload(n))
    [segment] = tmp_path.glob("*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # power lost in the middle of the last record
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [payload(n) for n in range(4)]
        assert buffer.stats.corrupt_bytes == len(payload(4)) + HEADER.size - 7
        buffer.append(payload(5))  # and the log goes on from there
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [*(payload(n) for n in range(4)), payload(5)]


def test_flipped_bytes_cost_only_the_record_they_hit(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        positions = [buffer.append(payload(n)) for n in range(6)]
    [segment] = tmp_path.glob("*.log")
    data = bytearray(segment.read_bytes())
    assert positions[2] is not None
    data[positions[2] + HEADER.size + 3] ^= 0xFF  # a bad bit in record 2's payload
    segment.write_bytes(bytes(data))
    with Buffer(tmp_path) as buffer:
        kept = list(buffer.read(0, limit=100))
        assert [p for _, _, p in kept] == [payload(n) for n in (0, 1, 3, 4, 5)]
        assert [pos for pos, _, _ in kept] == [positions[n] for n in (0, 1, 3, 4, 5)]
        assert buffer.stats.corrupt_bytes == len(payload(2)) + HEADER.size
    assert len(list((tmp_path / "quarantine").iterdir())) == 1  # evidence kept
    with Buffer(tmp_path) as buffer:  # the repair holds: nothing more is found
        assert buffer.stats.corrupt_bytes == 0
        assert len(contents(buffer)) == 5


def test_garbage_between_records_is_skipped(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(3):
            buffer.append(payload(n))
    [segment] = tmp_path.glob("*.log")
    data = segment.read_bytes()
    cut = len(data) // 3 * 2
    segment.write_bytes(data[:cut] + b"\xea\x42garbage!" * 3 + data[cut:])
    with Buffer(tmp_path) as buffer:
        assert payload(0) in contents(buffer)
        assert payload(2) in contents(buffer)


def test_full_buffer_drops_the_oldest_counts_exactly_and_keeps_the_newest(tmp_path: Path) -> None:
    with Buffer(tmp_path, max_bytes=40_000, segment_bytes=4096) as buffer:
        for n in range(5_000):
            buffer.append(payload(n))
            assert buffer.pending_bytes <= 40_000  # after every append, not only at the end
        kept = contents(buffer)
        assert buffer.pending_bytes <= 40_000
        assert buffer.stats.dropped == 5_000 - len(kept)
        assert buffer.stats.dropped > 0
        assert kept[-1] == payload(4_999)
        assert kept == [payload(n) for n in range(5_000 - len(kept), 5_000)]  # no gap


def test_a_drained_buffer_says_so_at_the_next_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Buffer(tmp_path, max_bytes=40_000, segment_bytes=4096) as buffer:
        for n in range(2_000):
            buffer.append(payload(n))
        assert buffer.stats.dropped > 0
        buffer.release(buffer.end)
        caplog.clear()
        with caplog.at_level("INFO", logger="agent.buffer"):
            buffer.append(payload(2_000))
        assert [r.getMessage() for r in caplog.records] == ["buffer_space_again"]


def test_full_buffer_can_refuse_the_newest_and_recovers_once_drained(tmp_path: Path) -> None:
    with Buffer(tmp_path, max_bytes=8192, segment_bytes=4096, overflow="drop_newest") as buffer:
        accepted = [n for n in range(1_000) if buffer.append(payload(n)) is not None]
        assert accepted == list(range(len(accepted)))  # the first ones, in order
        assert buffer.stats.dropped == 1_000 - len(accepted)
        assert buffer.append(payload(-1)) is None
        buffer.release(buffer.end)  # the broker took everything
        assert buffer.append(payload(1_000)) is not None
        assert contents(buffer) == [payload(1_000)]


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        for n in range(1_000):
            buffer.append(payload(n))
        assert len(list(tmp_path.glob("*.log"))) > 5
        buffer.release(buffer.end)
        assert buffer.pending_records == 0
        before = len(list(tmp_path.glob("*.log")))
        buffer.commit()  # deleted only once the cursor that frees them is on disk
        assert before > 5
        assert len(list(tmp_path.glob("*.log"))) == 1
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == []


def test_an_oversized_record_is_refused(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer, pytest.raises(ValueError, match="over the"):
        buffer.append(b"x" * (2 << 20))


def test_the_owners_state_is_saved_with_the_cursor(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b""
        buffer.append(payload(1))
        buffer.commit(b'{"seq": {"air": 41}}')
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b'{"seq": {"air": 41}}'


def newest_slot(directory: Path) -> Path:
    """The cursor slot the last commit wrote: the one of the highest generation."""
    slots = [directory / name for name in SLOTS]
    return max(slots, key=lambda path: int.from_bytes(path.read_bytes()[4:12], "little"))


def committed(directory: Path, acknowledged: int, meta: bytes) -> None:
    """Acknowledge the first `acknowledged` records still pending, and commit with `meta`."""
    with Buffer(directory) as buffer:
        *_, (_, following, _) = buffer.read(0, limit=acknowledged)
        buffer.release(following)
        buffer.commit(meta)


def test_a_corrupt_cursor_resends_everything_rather_than_skip_anything(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(5):
            buffer.append(payload(n))
        for state in (b"state", b"state 2"):  # two commits: both slots hold one
            buffer.release(next(iter(buffer.read(0, limit=1)))[1])
            buffer.commit(state)
    for slot in SLOTS:  # both: with one left, it would be used
        data = bytearray((tmp_path / slot).read_bytes())
        data[14] ^= 0xFF  # a flipped bit in the position: without a check it could skip records
        (tmp_path / slot).write_bytes(bytes(data))
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [payload(n) for n in range(5)]  # 0 again: a duplicate
        assert buffer.meta == b""


def test_a_torn_newest_cursor_slot_falls_back_to_the_commit_before(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(6):
            buffer.append(payload(n))
        for state in (b"one", b"two"):
            buffer.release(next(iter(buffer.read(0, limit=1)))[1])
            buffer.commit(state)
    torn = newest_slot(tmp_path)
    data = torn.read_bytes()
    torn.write_bytes(data[:12] + b"\0" * (len(data) - 12))  # power lost mid-write
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b"one"
        assert contents(buffer) == [payload(n) for n in range(1, 6)]  # 1 again: a duplicate
        buffer.release(next(iter(buffer.read(0, limit=1)))[1])
        buffer.commit(b"three")  # overwrites the torn slot, not the one that held
    assert newest_slot(tmp_path) == torn
    torn.write_bytes(b"\xff" * len(torn.read_bytes()))  # torn again: "one" must still be there
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b"one"
        assert contents(buffer) == [payload(n) for n in range(1, 6)]


def test_reopening_again_and_again_keeps_every_record_not_acknowledged(tmp_path: Path) -> None:
    """Commits alternate between the slots: each open must take the newest, whichever it is."""
    sent = 0
    for round_ in range(5):
        buffer = Buffer(tmp_path, segment_bytes=4096)
        buffer.open()
        assert buffer.meta == (f"round {round_ - 1}".encode() if round_ else b"")
        assert contents(buffer) == [payload(n) for n in range(sent, round_ * 100)]
        for n in range(round_ * 100, (round_ + 1) * 100):
            buffer.append(payload(n))
        for _ in range(round_ + 1):  # one more commit each round: both slots get to be newest
            *_, (_, following, _) = buffer.read(0, limit=13)
            buffer.release(following)
            sent += 13
            buffer.commit(f"round {round_}".encode())
        buffer.release(buffer.end)  # acknowledged, not committed: the crash below undoes it
        buffer.append(payload(-1))  # appended, not committed: a crash keeps it anyway
        buffer.release(buffer.end)  # ...and so it comes again as well
        # The process dies here: no close(), no commit().
        buffer = Buffer(tmp_path, segment_bytes=4096)
        buffer.open()
        pending = [payload(n) for n in range(sent, (round_ + 1) * 100)] + [payload(-1)]
        assert contents(buffer) == pending
        *_, (_, following, _) = buffer.read(0, limit=len(pending) - 1)
        buffer.release(following)  # everything but the stray record
        buffer.commit()
        buffer.close()
        buffer = Buffer(tmp_path, segment_bytes=4096)
        buffer.open()
        assert contents(buffer) == [payload(-1)]
        buffer.release(buffer.end)
        buffer.close()
        sent = (round_ + 1) * 100


def test_an_old_cursor_file_is_read_after_an_upgrade_then_replaced(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        positions = [buffer.append(payload(n)) for n in range(5)]
    for slot in SLOTS:  # the layout of earlier versions: one `cursor` file, no slots
        (tmp_path / slot).unlink()
    assert positions[2] is not None
    state = struct.pack("<Q", positions[2]) + b"old state"
    (tmp_path / "cursor").write_bytes(struct.pack("<I", zlib.crc32(state)) + state)
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b"old state"
        assert contents(buffer) == [payload(n) for n in range(2, 5)]  # 0 and 1 were acknowledged
    assert (tmp_path / "cursor").exists()  # nothing was committed: it is still the only state
    committed(tmp_path, 1, b"new state")
    assert not (tmp_path / "cursor").exists()
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b"new state"
        assert contents(buffer) == [payload(n) for n in range(3, 5)]
    # A power cut can undo the deletion of the old file: the slot, newer, still wins.
    (tmp_path / "cursor").write_bytes(struct.pack("<I", zlib.crc32(state)) + state)
    with Buffer(tmp_path) as buffer:
        assert buffer.meta == b"new state"


# -- the memory-mapped last segment ------------------------------------------------------------


def run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_process_loses_nothing_it_appended(tmp_path: Path) -> None:
    """A real process appends through the map, never commits, and is killed (SIGKILL): every
    record it appended is there, across the segments it rolled through."""
    child = run_child(
        f"""
        import sys, time
        from pathlib import Path
        from agent.buffer import Buffer
        buffer = Buffer(Path({str(tmp_path)!r}), segment_bytes=4096)
        buffer.open()
        for n in range(500):
            buffer.append(f"record-{{n:06d}}".encode() * 3)
        assert buffer._map is not None, "not the mapped path"
        print("appended", flush=True)
        time.sleep(60)
        """
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "appended\n", child.stderr.read() if child.stderr else ""
        child.kill()
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob("*.log"))) > 5
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        assert contents(buffer) == [payload(n) for n in range(500)]
        assert buffer.stats.corrupt_bytes == 0


def test_a_preallocated_tail_is_the_end_of_the_data_not_corruption(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path)
    buffer.open()
    positions = [buffer.append(payload(n)) for n in range(5)]
    end = buffer.end
    [segment] = tmp_path.glob("*.log")
    assert segment.stat().st_size == buffer.segment_bytes  # preallocated: zeros after the data
    # The process dies here: no close(), the zeros stay.
    with Buffer(tmp_path) as again:
        assert again.stats.corrupt_bytes == 0
        assert not (tmp_path / "quarantine").exists()
        assert contents(again) == [payload(n) for n in range(5)]
        assert again.append(payload(5)) == end  # right after the last record
        assert [p for p, _, _ in again.read(0)] == [*positions, end]
    assert segment.stat().st_size == end + HEADER.size + len(payload(5))  # cut back at close
    with Buffer(tmp_path) as again:
        assert contents(again) == [payload(n) for n in range(6)]


@pytest.mark.parametrize(
    "junk",
    [b"\xff" * 40, HEADER.pack(b"\xea\x42", 60, 1234) + b"torn"],  # garbage; a torn record
)
def test_junk_after_the_data_is_still_cut_and_kept_for_a_post_mortem(
    tmp_path: Path, junk: bytes
) -> None:
    buffer = Buffer(tmp_path)
    buffer.open()
    for n in range(5):
        buffer.append(payload(n))
    end = buffer.end
    [segment] = tmp_path.glob("*.log")
    with segment.open("r+b") as f:  # into the zeros the crash left after the data
        f.seek(end)
        f.write(junk + b"\0\0\0\1")  # and a stray byte further on
    with Buffer(tmp_path) as again:
        assert again.stats.corrupt_bytes == len(junk) + 4  # not the zeros after it
        assert len(list((tmp_path / "quarantine").iterdir())) == 1
        assert contents(again) == [payload(n) for n in range(5)]
        assert again.append(payload(5)) == end
    with Buffer(tmp_path) as again:
        assert again.stats.corrupt_bytes == 0
        assert contents(again) == [payload(n) for n in range(6)]


def test_segments_roll_and_are_cut_back_to_their_frames(tmp_path: Path) -> None:
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        for n in range(1000):
            buffer.append(payload(n))
        big = b"B" * 10_000  # larger than a segment: a segment of its own
        buffer.append(big)
        buffer.append(payload(1000))
        *finished, last = buffer.segments
        assert len(finished) > 5
        assert finished[-1].size == HEADER.size + len(big)
        for segment in finished:  # each finished segment holds its frames and nothing more
            assert segment.path.stat().st_size == segment.size <= max(4096, segment.size)
            assert segment.end == (buffer.segments[buffer.segments.index(segment) + 1]).base
        assert last.path.stat().st_size == 4096  # the last one, preallocated
        assert contents(buffer) == [*(payload(n) for n in range(1000)), big, payload(1000)]
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        assert contents(buffer) == [*(payload(n) for n in range(1000)), big, payload(1000)]
        assert buffer.stats.corrupt_bytes == 0


def test_no_disk_for_a_new_segment_refuses_the_record_and_counts_it(tmp_path: Path) -> None:
    """The disk is full when a segment is preallocated (RLIMIT_FSIZE in a child process: the
    kernel refuses the preallocation, as a full disk would): the record is refused and counted,
    the records before it stay readable, and appends go on once there is room again."""
    child = run_child(
        f"""
        import json, resource, signal
        from pathlib import Path
        from agent.buffer import Buffer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        full = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4000, hard))
        room = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        record = lambda n: f"record-{{n:06d}}".encode() * 3
        accepted = []
        with Buffer(Path({str(tmp_path)!r}), segment_bytes=4096) as buffer:
            takes = lambda n: buffer.append(record(n)) is not None
            # The first segment cannot be preallocated, later another one; then room again.
            for first, stop, make in [(0, 1, full), (1, 100, room), (100, 300, full)]:
                make()
                accepted += [n for n in range(first, stop) if takes(n)]
            room()
            accepted += [n for n in range(300, 400) if takes(n)]
            kept = [p for _, _, p in buffer.read(0, 1000)] == [record(n) for n in accepted]
            print(json.dumps([accepted, buffer.stats.dropped, kept, len(buffer.segments)]))
        """
    )
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    accepted, dropped, kept, segments = json.loads(out)
    assert 0 not in accepted
    assert accepted[:99] == list(range(1, 100))
    assert 100 in accepted  # the segment preallocated before the disk filled takes more
    refused = [n for n in range(400) if n not in accepted]
    assert refused == [0, *range(refused[1], 300)]  # once it is full, every one until room
    assert accepted[-100:] == list(range(300, 400))
    assert dropped == len(refused)
    assert kept
    assert err.count("buffer_full") == 2  # said once a burst: record 0, then 100 on
    assert len(list(tmp_path.glob("*.log"))) == segments  # no file left by a failed one
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        assert contents(buffer) == [payload(n) for n in accepted]


def test_where_a_segment_cannot_be_preallocated_it_is_written_frame_by_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filesystems without fallocate: no filesystem here lacks it (and glibc emulates it), so
    the answer such a filesystem gives is made up."""

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        for n in range(1000):
            buffer.append(payload(n))
        assert buffer._map is None
        assert len(buffer.segments) > 5
        for segment in buffer.segments:  # written as they go: no zeros after the frames
            assert segment.path.stat().st_size == segment.size
        assert contents(buffer) == [payload(n) for n in range(1000)]
    monkeypatch.undo()
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        assert contents(buffer) == [payload(n) for n in range(1000)]
        buffer.append(payload(1000))  # and mapped again where it can be
        assert buffer._map is not None
        assert contents(buffer) == [payload(n) for n in range(1001)]


def test_a_failed_open_leaves_nothing_open(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        buffer.append(payload(0))
    (tmp_path / SLOTS[1]).unlink()
    # The second slot cannot be opened, after the segment and the first slot were.
    (tmp_path / SLOTS[1]).symlink_to(tmp_path / "missing" / "slot")
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        Buffer(tmp_path).open()
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_second_process_cannot_open_a_buffer_in_use(tmp_path: Path) -> None:
    """Two agents on one data_dir would write over each other's records, and one cutting a
    segment back under the other's memory map would kill it with SIGBUS."""
    with Buffer(tmp_path / "buffer") as buffer:
        buffer.append(b"mine")
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from agent.buffer import Buffer; "
                "Buffer(Path(sys.argv[1])).open()",
                str(tmp_path / "buffer"),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.returncode != 0
        assert "is in use by another process" in other.stderr
    with Buffer(tmp_path / "buffer") as again:  # closed: free to open
        assert [p for _, _, p in again.read(again.cursor)] == [b"mine"]


def test_a_full_disk_under_the_pwrite_path_refuses_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where segments are written frame by frame, a full disk refuses the record and counts
    it, as the mapped path does, instead of raising out of append()."""

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    real_pwrite = os.pwrite
    full = False

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with Buffer(tmp_path, segment_bytes=4096) as buffer:
        assert buffer.append(payload(0)) is not None
        full = True
        assert buffer.append(payload(1)) is None
        full = False
        assert buffer.append(payload(2)) is not None
        assert buffer.stats.dropped == 1
        assert contents(buffer) == [payload(0), payload(2)]


def test_opening_an_open_buffer_again_is_refused(tmp_path: Path) -> None:
    """A second recovery would cut back the segment mapped now: the next append, SIGBUS."""
    with Buffer(tmp_path) as buffer:
        buffer.append(payload(0))
        with pytest.raises(RuntimeError, match="open already"):
            buffer.open()
        buffer.append(payload(1))
        assert contents(buffer) == [payload(0), payload(1)]
