"""The durable offline buffer: an append-only log of records awaiting the broker's acknowledgement.

Why a segment log and not SQLite (bench/buffer_choice.py on this project's 2-core machine: one
real aggregate as buffered, 203 bytes, in batches of 50 with an fsync per batch, acknowledged a
batch at a time): SQLite in WAL mode wrote 1,736 bytes to disk per record, the log 377 (1.9 ×
the record). Both far outpace an agent's needs (about 118,000 and 64,000 records/s); on an SD
card the bytes written decide its life.

Layout under the buffer directory:

- `NNNNNNNNNNNNNNNNNNNN.log` segments, named by the log position of their first byte, rolled at
  `segment_bytes`. A record is framed as magic (2 bytes), payload length (u32), CRC-32 of the
  payload (u32), payload.
- Corrupt bytes found at start (a power cut mid-write, a bad sector) are covered in place by a
  padding frame, so every intact record keeps its position; a torn tail is cut off. A copy of
  the segment as found goes to `quarantine/` (the last few are kept).
- `cursor`: a CRC-32, then the position before which every record has been acknowledged,
  then the owner's own state (`meta`: the uplink keeps its sequence numbers there), rewritten
  atomically at each commit. Segments that were acknowledged or dropped are deleted only after
  that write, so the state on disk is never older than what was deleted.

A position is a byte offset in the whole log; it names a record for `read()` and `release()`.

Durability: `append()` hands the frame to the operating system at once, so a crash of the agent
loses nothing appended; `commit()` makes it durable with fsync (the caller commits on a timer),
so a power cut loses at most what was appended since the last commit. The cursor is written at
commit too: after a power cut or a crash, records acknowledged since the last commit are sent
again, and the consumer tells them apart by their keys.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from agent import log

MAGIC = b"\xea\x42"
PAD = b"\xea\x50"  # a padding frame: covers corrupt bytes, checked by the CRC of its length
HEADER = struct.Struct("<2sII")  # magic, payload length, CRC-32 of the payload
MAX_RECORD = 1 << 20  # a length above this in a header is corruption, not a record
QUARANTINE_KEEP = 3

Overflow = Literal["drop_oldest", "drop_newest"]

_log = log.get("agent.buffer")


@dataclass
class BufferStats:
    appended: int = 0
    dropped: int = 0  # records lost to the overflow policy
    corrupt_bytes: int = 0  # bytes skipped at start because they framed no valid record


class Segment:
    __slots__ = ("base", "path", "records", "size")

    def __init__(self, path: Path, base: int, size: int = 0, records: int = 0) -> None:
        self.path, self.base, self.size, self.records = path, base, size, records

    @property
    def end(self) -> int:
        return self.base + self.size


class Buffer:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 64 << 20,
        overflow: Overflow = "drop_oldest",
        segment_bytes: int = 1 << 20,
        reserve_bytes: int | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.overflow = overflow
        # At least eight segments fit in the limit, so dropping the oldest frees an eighth.
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 8))
        # Free disk the buffer never takes: 5 % of what was free at start (16 MiB at least),
        # so a long outage cannot fill the SD card the rest of the system lives on.
        self._reserve = reserve_bytes
        self.stats = BufferStats()
        self._dropping = log.Burst()
        self.segments: list[Segment] = []
        self.cursor = 0  # everything before it has been acknowledged
        self.meta = b""  # the owner's state, saved with the cursor
        self._committed: tuple[int, bytes] | None = None
        self._obsolete: list[Path] = []  # segments to delete once the cursor is on disk
        self._fd: int | None = None  # the last segment, open for appending

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Buffer:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Recover the log: check every frame, set aside what is corrupt, keep all the rest."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._reserve is None:
            self._reserve = max(16 << 20, shutil.disk_usage(self.directory).free // 20)
        self.cursor, self.meta = self._read_cursor()
        for path in sorted(self.directory.glob("*.log")):
            base = int(path.stem)  # a gap (a cut tail, a lost segment) stays: positions are names
            segment = self._recover(path, base)
            if segment.end <= self.cursor and (segment.size or segment.base < self.cursor):
                path.unlink()  # acknowledged entirely
                continue
            self.segments.append(segment)
        if not self.segments:
            start = self.cursor
            self.segments.append(Segment(self.directory / f"{start:020d}.log", start))
        self.cursor = max(self.cursor, self.segments[0].base)
        self._fd = os.open(self.segments[-1].path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._committed = (self.cursor, self.meta)

    def close(self) -> None:
        if self._fd is not None:
            self.commit()
            os.close(self._fd)
            self._fd = None

    # -- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> int | None:
        """Add a record; returns its position, or None if the overflow policy dropped it."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"a record of {len(payload)} bytes is over the {MAX_RECORD} limit")
        frame = HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        while self.pending_bytes + len(frame) > self.max_bytes or self._disk_short(len(frame)):
            if self.overflow == "drop_newest" or not self._drop_oldest_segment():
                self.stats.dropped += 1
                if self._dropping.fail():
                    _log.warning("buffer_full", policy="drop_newest", max_bytes=self.max_bytes)
                return None
        if self._dropping.failures and self.pending_bytes <= self.max_bytes // 2:  # drained
            _log.info("buffer_space_again", dropped=self.stats.dropped)
            self._dropping.end()
        segment = self.segments[-1]
        if segment.size and segment.size + len(frame) > self.segment_bytes:
            segment = self._roll()
        assert self._fd is not None, "append() outside `with buffer:`"
        written = os.write(self._fd, frame)
        if written != len(frame):  # a full disk: take the torn frame back, refuse the record
            os.ftruncate(self._fd, segment.size)
            raise OSError(errno.ENOSPC, f"short write to the buffer ({written} of {len(frame)})")
        position = segment.end
        segment.size += len(frame)
        segment.records += 1
        self.stats.appended += 1
        return position

    def commit(self, meta: bytes | None = None) -> None:
        """Make every append so far, the cursor and `meta` survive a power cut."""
        if meta is not None:
            self.meta = meta
        if self._fd is not None:
            os.fsync(self._fd)
        if (self.cursor, self.meta) != self._committed:
            tmp = self.directory / "cursor.tmp"
            state = struct.pack("<Q", self.cursor) + self.meta
            with tmp.open("wb") as f:
                f.write(struct.pack("<I", zlib.crc32(state)) + state)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.directory / "cursor")
            _fsync_directory(self.directory)  # the rename, and any new segment, on disk too
            self._committed = (self.cursor, self.meta)
        for path in self._obsolete:
            path.unlink(missing_ok=True)
        self._obsolete.clear()

    # -- reading and acknowledging ---------------------------------------------------------

    @property
    def end(self) -> int:
        """The position the next record will get."""
        return self.segments[-1].end

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk not yet acknowledged (whole segments before the cursor are freed)."""
        return self.end - self.cursor

    @property
    def pending_records(self) -> int:
        """Records not yet acknowledged (reads the first segment's headers: not for hot paths)."""
        return self._unacknowledged(self.segments[0]) + sum(s.records for s in self.segments[1:])

    def _unacknowledged(self, segment: Segment) -> int:
        if segment.base >= self.cursor:
            return segment.records
        return sum(
            1 for p, _, _ in self.read(self.cursor, limit=segment.records) if p < segment.end
        )

    def read(self, position: int, limit: int = 100) -> Iterator[tuple[int, int, bytes]]:
        """Up to `limit` records from `position` on, as (position, next position, payload)."""
        position = max(position, self.cursor, self.segments[0].base)
        for segment in self.segments:
            if limit <= 0 or position >= self.end:
                return
            if position >= segment.end:
                continue
            position = max(position, segment.base)  # across a gap
            with segment.path.open("rb") as f:
                f.seek(position - segment.base)
                while limit > 0 and position < segment.end:
                    magic, length, _ = HEADER.unpack(f.read(HEADER.size))
                    payload = f.read(length)
                    following = position + HEADER.size + length
                    if magic == MAGIC:
                        yield position, following, payload
                        limit -= 1
                    position = following

    def release(self, position: int) -> None:
        """Everything before `position` is acknowledged: it may go."""
        if position <= self.cursor:
            return
        self.cursor = min(position, self.end)
        for segment in self.segments:  # at the end of a segment cut short, step over the gap
            if segment.end > self.cursor:
                self.cursor = max(self.cursor, segment.base)
                break
        while len(self.segments) > 1 and self.segments[0].end <= self.cursor:
            self._obsolete.append(self.segments.pop(0).path)

    # -- inside ----------------------------------------------------------------------------

    def _roll(self) -> Segment:
        assert self._fd is not None
        segment = Segment(self.directory / f"{self.end:020d}.log", self.end)
        fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # may fail
        os.fsync(self._fd)  # a finished segment is whole on disk before the next begins
        os.close(self._fd)
        self._fd = fd
        self.segments.append(segment)
        return segment

    def _drop_oldest_segment(self) -> bool:
        if len(self.segments) < 2:
            return False
        oldest = self.segments[0]
        dropped = self._unacknowledged(oldest)
        self.segments.pop(0)
        self.stats.dropped += dropped
        if self._dropping.fail():
            _log.warning("buffer_full", policy="drop_oldest", max_bytes=self.max_bytes)
        self._obsolete.append(oldest.path)
        self.cursor = max(self.cursor, oldest.end)
        return True

    def _disk_short(self, wanted: int) -> bool:
        if self.stats.appended % 256:  # statvfs is a system call: ask now and then
            return False
        # Segments already dropped are deleted at the next commit: count them as free.
        freeable = sum(path.stat().st_size for path in self._obsolete if path.exists())
        free = shutil.disk_usage(self.directory).free + freeable
        return free < (self._reserve or 0) + wanted

    def _read_cursor(self) -> tuple[int, bytes]:
        try:
            data = (self.directory / "cursor").read_bytes()
        except FileNotFoundError:
            return 0, b""
        # A bad cursor must not skip records: start again from the oldest (duplicates, no loss).
        if len(data) < 12 or struct.unpack_from("<I", data)[0] != zlib.crc32(data[4:]):
            _log.warning("buffer_cursor_corrupt", detail="resending from the oldest record")
            return 0, b""
        cursor: int = struct.unpack_from("<Q", data, 4)[0]
        return cursor, data[12:]

    def _recover(self, path: Path, base: int) -> Segment:
        """Check every frame of a segment; pad over corrupt bytes and cut a torn tail."""
        data = path.read_bytes()
        offset = records = last = 0  # last: the end of the last record
        holes: list[tuple[int, int]] = []
        while offset < len(data):
            frame = _frame_at(data, offset, padding=True)
            if frame is not None:
                records += frame[1]
                offset += frame[0]
                if frame[1]:
                    last = offset
                continue
            following = _next_record(data, offset + 1)
            if following is None or following - offset < HEADER.size:
                break  # a torn tail, or a hole too small to pad: the segment ends here
            holes.append((offset, following))
            offset = following
        if offset > last:  # nothing but padding at the end: nothing could ever read past it
            holes = [(a, b) for a, b in holes if b <= last]
            offset = last
        if not holes and offset == len(data):
            return Segment(path, base, len(data), records)
        self.stats.corrupt_bytes += sum(b - a for a, b in holes) + len(data) - offset
        _log.warning(
            "buffer_corrupt",
            segment=path.name,
            corrupt_bytes=sum(b - a for a, b in holes),
            cut_bytes=len(data) - offset,
            kept_records=records,
        )
        try:
            self._quarantine(path)
        except OSError as e:  # a post-mortem copy is not worth refusing to start over
            _log.warning("buffer_quarantine_failed", segment=path.name, error=str(e))
        with path.open("r+b") as f:
            for start, stop in holes:
                f.seek(start)
                f.write(_padding(stop - start))
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return Segment(path, base, offset, records)

    def _quarantine(self, path: Path) -> None:
        """Keep a copy of a corrupt segment for a post-mortem; only the last few are kept."""
        folder = self.directory / "quarantine"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(path, folder / f"{path.name}.{len(list(folder.iterdir()))}")
        for old in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)[:-QUARANTINE_KEEP]:
            old.unlink()


def _padding(size: int) -> bytes:
    length = size - HEADER.size
    return HEADER.pack(PAD, length, zlib.crc32(struct.pack("<I", length)))


def _frame_at(data: bytes, offset: int, *, padding: bool) -> tuple[int, int] | None:
    """(frame size, 1 for a record or 0 for padding) of the valid frame at `offset`, or None."""
    if offset + HEADER.size > len(data):
        return None
    magic, length, crc = HEADER.unpack_from(data, offset)
    end = offset + HEADER.size + length
    if length > MAX_RECORD or end > len(data):
        return None
    if magic == MAGIC and zlib.crc32(data[offset + HEADER.size : end]) == crc:
        return end - offset, 1
    if padding and magic == PAD and zlib.crc32(struct.pack("<I", length)) == crc:
        return end - offset, 0
    return None


def _next_record(data: bytes, offset: int) -> int | None:
    """Where the next valid record frame begins, at or after `offset`."""
    while (offset := data.find(MAGIC, offset)) >= 0:
        if _frame_at(data, offset, padding=False) is not None:
            return offset
        offset += 1
    return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
