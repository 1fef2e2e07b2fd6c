"""The durable buffer: what survives a restart, a crash, corruption and a full disk budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.buffer import HEADER, Buffer


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
        kept = contents(buffer)
        assert buffer.pending_bytes <= 40_000
        assert buffer.stats.dropped == 5_000 - len(kept)
        assert buffer.stats.dropped > 0
        assert kept[-1] == payload(4_999)
        assert kept == [payload(n) for n in range(5_000 - len(kept), 5_000)]  # no gap


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


def test_a_corrupt_cursor_resends_everything_rather_than_skip_anything(tmp_path: Path) -> None:
    with Buffer(tmp_path) as buffer:
        for n in range(5):
            buffer.append(payload(n))
        buffer.release(next(iter(buffer.read(0, limit=1)))[1])
        buffer.commit(b"state")
    cursor = tmp_path / "cursor"
    data = bytearray(cursor.read_bytes())
    data[6] ^= 0xFF  # a flipped bit in the position: without a check it could skip records
    cursor.write_bytes(bytes(data))
    with Buffer(tmp_path) as buffer:
        assert contents(buffer) == [payload(n) for n in range(5)]  # 0 again: a duplicate
        assert buffer.meta == b""
