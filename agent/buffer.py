"""The durable offline buffer: an append-only log of records awaiting the broker's acknowledgement.

Why a segment log and not SQLite (bench/buffer_choice.py on this project's 2-core machine: one
real aggregate as buffered, 203 bytes, in batches of 50 with an fsync per batch, acknowledged a
batch at a time): SQLite in WAL mode wrote 1,736 bytes to disk per record, the log 377 (1.9 ×
the record). Both far outpace an agent's needs (about 118,000 and 64,000 records/s); on an SD
card the bytes written decide its life.

Layout under the buffer directory:

- `NNNNNNNNNNNNNNNNNNNN.log` segments, named by the log position of their first byte, rolled at
  `segment_bytes`. A record is framed as magic (2 bytes), payload length (u32), CRC-32 of the
  payload (u32), payload. The last segment is preallocated to its full size and written
  through a memory map, so its file ends in zeros after the last frame; a segment is cut back
  to its frames when it is finished (rolled or closed). At start, zeros up to the end of a
  segment are where its data ends (what a crash leaves), not corruption.
- Corrupt bytes found at start (a power cut mid-write, a bad sector) are covered in place by a
  padding frame, so every intact record keeps its position; a torn tail is cut off. A copy of
  the segment as found goes to `quarantine/` (the last few are kept).
- `cursor.0` and `cursor.1`: two slots, each a CRC-32 of the rest, a generation number, the
  position before which every record has been acknowledged, and the owner's own state (`meta`:
  the uplink keeps its sequence numbers there). A commit overwrites the older slot in place and
  fdatasyncs it: a power cut mid-write tears only that slot, and the other still holds the
  commit before. Open takes the valid slot of the highest generation. (A temporary file renamed
  over the state costs three syncs a commit, not one.) Segments that were acknowledged or
  dropped are deleted only after that write, so the state on disk is never older than what was
  deleted.
- `lock`: held (a POSIX lock) while a process has the buffer open; a second process gets a
  clear error, not a buffer written by two.
- `cursor`: the single file of earlier versions (CRC-32, position, meta), still read when no
  slot is valid, and deleted once a slot holds a newer commit.

A position is a byte offset in the whole log; it names a record for `read()` and `release()`.

Durability: `append()` stores the frame into a shared mapping of the segment (MAP_SHARED): the
store lands in the kernel's page cache at once, as a write() would, so a crash of the agent
loses nothing appended. `commit()` makes it durable with fdatasync, which writes back the pages
dirtied through the mapping too (on Linux msync(MS_SYNC) is that same sync of the file); the
caller commits on a timer, so a power cut loses at most what was appended since the last
commit. The directory is synced at the first commit after a segment was made, so its name
survives too. The cursor is written at commit too: after a power cut or a crash, records
acknowledged since the last commit are sent again, and the consumer tells them apart by their
keys.

Why a memory map: with a write() a record, the system call was most of an append's cost
(bench/buffer.py); a store into the map is a memory copy, and the kernel sees the page only
when it is first dirtied (one fault a 4 KiB page, a few records' worth). Why preallocated: a
store into a hole of a sparse file gets its disk block at the page fault or at writeback, and
on a full disk that is a SIGBUS that kills the agent, or a page the kernel cannot write back.
posix_fallocate takes a segment's blocks when it is made, so a full disk is an error there,
handled like the overflow policy's full disk: the record is refused and counted in `dropped`.
The disk the buffer takes is then up to one segment more than its records. Where a filesystem
cannot preallocate or map a file (EOPNOTSUPP, EINVAL, ENODEV; and where Python has no
posix_fallocate), its segments are written with one pwrite() a record instead.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
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
SLOTS = ("cursor.0", "cursor.1")
CRC = struct.Struct("<I")
SLOT = struct.Struct("<QQI")  # after a CRC-32 of the rest: generation, cursor, meta length; meta
LEGACY_CURSOR = "cursor"
DISK_CHECK_BYTES = 64 << 10  # statvfs is a system call: ask for the free disk this often

# Bound once: append() is the hot path, and each lookup there costs a few percent.
_pack, _pack_into, _crc32 = HEADER.pack, HEADER.pack_into, zlib.crc32
_HEAD = HEADER.size
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # EFBIG: over RLIMIT_FSIZE
_CANNOT_MAP = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV}  # the filesystem's "not here"
# fdatasync skips the inode's times, which recovery never needs (fsync where it is missing)
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

Overflow = Literal["drop_oldest", "drop_newest"]

_log = log.get("agent.buffer")


@dataclass
class BufferStats:
    appended: int = 0
    dropped: int = 0  # records lost to the overflow policy
    corrupt_bytes: int = 0  # bytes skipped at start because they framed no valid record


class _DiskFull(OSError):
    """The disk has no room for a new segment's preallocation: the record is refused and
    counted, like one the overflow policy drops. (A segment file that cannot be made at all,
    with no inode left, raises OSError from append() instead.)"""


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
        self._fd = -1  # the last segment, open for appending (-1: closed)
        self._lock_fd = -1  # held while open: one process a buffer
        self._map: mmap.mmap | None = None  # the last segment's shared mapping (None: pwrite)
        self._capacity = 0  # the bytes the last segment was sized for (0: not yet)
        # Where in the last segment frames may end and surely fit it, the limit and the free
        # disk: an append within checks nothing else (0: the next append looks at everything).
        self._limit = 0
        self._disk_until = 0  # the log position up to which the free disk was seen to suffice
        self._slots: list[int] = []  # the two cursor slots, open for writing in place
        self._slot = 0  # the one the next commit overwrites: never the newest valid one
        self._generation = 0  # of the newest valid slot
        self._legacy = False  # an old `cursor` file is there, to delete after a slot write
        self._new_names = False  # a file was made since the directory was last synced

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
        if self._fd >= 0:  # a second recovery would cut back the segment mapped now: SIGBUS
            raise RuntimeError(f"the buffer in {self.directory} is open already")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._obsolete.clear()  # left by a close() whose commit failed: the cursor says again
        self._lock()
        try:
            self._recover_all()
            flags = os.O_RDWR | os.O_CREAT
            # The last segment is mapped at the first append: an open alone takes no disk.
            self._fd = os.open(self.segments[-1].path, flags, 0o600)
            for name in SLOTS:
                self._slots.append(os.open(self.directory / name, flags, 0o600))
        except BaseException:
            self._close_files()
            raise
        self._new_names = True  # the segment and the slots may be new: the first commit says so
        self._committed = (self.cursor, self.meta)
        self._limit = 0

    def _recover_all(self) -> None:
        if self._reserve is None:
            self._reserve = max(16 << 20, shutil.disk_usage(self.directory).free // 20)
        self.cursor, self.meta = self._read_cursor()
        self.segments = []
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

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.commit()
        finally:
            self._close_files()

    # -- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> int | None:
        """Add a record; returns its position, or None if the overflow policy dropped it."""
        length = len(payload)
        segment = self.segments[-1]
        start = segment.size
        end = start + _HEAD + length
        # The hot path: one comparison decides that nothing but the copy is needed.
        if end > self._limit:
            if not self._make_room(_HEAD + length):
                return None
            segment = self.segments[-1]  # a new one, if it rolled
            start = segment.size
            end = start + _HEAD + length
        mapped = self._map
        if mapped is not None:  # into the page cache, no system call: the crash-safe write
            _pack_into(mapped, start, MAGIC, length, _crc32(payload))
            mapped[start + _HEAD : end] = payload
        else:
            try:
                self._write(start, _pack(MAGIC, length, _crc32(payload)) + payload)
            except OSError as e:
                if e.errno not in _NO_SPACE:
                    raise
                self._disk_until = self.end  # another program took the disk: ask again next time
                self._refuse(detail="no disk space for the record")
                return None
        segment.size = end
        segment.records += 1
        self.stats.appended += 1
        return segment.base + start

    def commit(self, meta: bytes | None = None) -> None:
        """Make every append so far, the cursor and `meta` survive a power cut."""
        if meta is not None:
            self.meta = meta
        if self._fd < 0:
            return  # closed: close() committed everything
        _datasync(self._fd)
        if self._new_names:  # a new segment's name must survive a power cut as its bytes do
            _fsync_directory(self.directory)
            self._new_names = False
        if (self.cursor, self.meta) != self._committed:
            self._write_cursor()
        # Deleting needs no directory sync: a segment that comes back after a power cut lies
        # before the cursor on disk, and open() deletes it again.
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

    def _make_room(self, size: int) -> bool:
        """The slow path of append(): check everything, roll or preallocate, make room or
        refuse the record (False); then work out how many bytes the next appends may take
        without coming here."""
        if size - _HEAD > MAX_RECORD:
            raise ValueError(f"a record of {size - _HEAD} bytes is over the {MAX_RECORD} limit")
        assert self._fd >= 0, "append() outside `with buffer:`"
        segment = self.segments[-1]
        rolls = segment.size > 0 and segment.size + size > self.segment_bytes
        fits = not rolls and segment.size + size <= self._capacity
        # The disk this frame takes: a segment to preallocate, or the frame where it is
        # written with pwrite; nothing inside a segment already preallocated.
        wanted = size if self._map is None else 0
        if not fits:
            wanted = max(self.segment_bytes, size)
        while self.pending_bytes + size > self.max_bytes or self._disk_short(wanted):
            if self.overflow == "drop_newest" or not self._drop_oldest_segment():
                return self._refuse(max_bytes=self.max_bytes)
        if not fits:
            try:
                if rolls:
                    self._roll(size)
                else:  # the first append since open, or a record larger than a segment
                    self._remap(segment.size + size)
            except _DiskFull:
                # The disk filled since statvfs was asked (another program took it): refuse
                # the record and ask again at the next append. Segments the policy dropped
                # free their space at the next commit.
                self._disk_until = self.end
                return self._refuse(detail="no disk space for the segment")
            segment = self.segments[-1]
        if self._dropping.failures and self.pending_bytes <= self.max_bytes // 2:  # drained
            # Here, once the record has its room: on a full disk, before it, every refusal
            # would end the burst and the next begin another, a log line each.
            _log.info("buffer_space_again", dropped=self.stats.dropped)
            self._dropping.end()
        if self._dropping.failures:
            self._limit = 0  # come back at each append until drained, to say so
            return True
        room = min(
            self._capacity - segment.size,
            self.max_bytes - self.pending_bytes,
            _HEAD + MAX_RECORD,
        )
        if self._map is None:  # written with pwrite: the disk is taken as it goes
            room = min(room, self._disk_until - self.end)
        self._limit = segment.size + room
        return True

    def _refuse(self, **detail: object) -> bool:
        """Drop the record being appended: counted, and said once a burst."""
        self.stats.dropped += 1
        if self._dropping.fail():
            _log.warning("buffer_full", policy="drop_newest", **detail)
        self._limit = 0
        return False

    def _write(self, start: int, frame: bytes) -> None:
        """Append a frame with pwrite, on a filesystem where the segment could not be mapped."""
        written = os.pwrite(self._fd, frame, start)
        if written != len(frame):  # a full disk: take the torn frame back, refuse the record
            os.ftruncate(self._fd, start)
            self._limit = 0
            raise OSError(errno.ENOSPC, f"short write to the buffer ({written} of {len(frame)})")

    def _roll(self, size: int) -> None:
        """Start the next segment, sized for a frame of `size` at least; finish the last one."""
        segment = Segment(self.directory / f"{self.end:020d}.log", self.end)
        capacity = max(self.segment_bytes, size)
        fd = os.open(segment.path, os.O_RDWR | os.O_CREAT, 0o600)  # may fail: nothing changed
        try:
            mapped = _preallocate(fd, 0, capacity)
        except OSError:
            os.close(fd)
            segment.path.unlink()
            raise
        self._unmap()  # the finished segment: cut back to its frames
        _datasync(self._fd)  # and whole on disk: commit() syncs only the last
        os.close(self._fd)
        self._fd, self._map, self._capacity = fd, mapped, capacity
        self.segments.append(segment)
        self._new_names = True

    def _remap(self, need: int) -> None:
        """Preallocate the last segment for `need` bytes at least, and map it."""
        used = self.segments[-1].size
        self._unmap()
        capacity = max(self.segment_bytes, need)
        self._map = _preallocate(self._fd, used, capacity)
        self._capacity = capacity

    def _unmap(self) -> None:
        """Unmap the last segment and cut its file back to its frames: the zeros after them
        would only take disk."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._capacity > self.segments[-1].size:
            os.ftruncate(self._fd, self.segments[-1].size)
        self._capacity = 0

    def _lock(self) -> None:
        """Take the directory for this process alone. Two agents on one buffer would write
        over each other's records; and one cutting a segment back under the other's memory
        map would kill that one with SIGBUS."""
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # A POSIX lock, not flock(): it is the process's, so a test may open a buffer
            # again after dropping one unclosed, as a crash would leave it.
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            self._lock_fd = -1
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise  # no locks on this filesystem, say: not "in use"
            raise OSError(
                errno.EBUSY,
                f"{self.directory} is in use by another process (an agent with the same data_dir?)",
            ) from None

    def _close_files(self) -> None:
        """Unmap the last segment, and close it, the cursor slots and the lock (also after a
        failed open, with some of them open)."""
        try:
            if self._fd >= 0:
                self._unmap()
        finally:
            for fd in (self._fd, *self._slots, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd, self._slots, self._limit, self._lock_fd = -1, [], 0, -1

    def _write_cursor(self) -> None:
        """Overwrite the older slot in place with the cursor and meta, and sync it."""
        generation = self._generation + 1
        body = SLOT.pack(generation, self.cursor, len(self.meta)) + self.meta
        data = CRC.pack(zlib.crc32(body)) + body
        fd = self._slots[self._slot]
        written = os.pwrite(fd, data, 0)
        if written != len(data):  # a full disk: the torn slot is the older one, and fails its CRC
            raise OSError(errno.ENOSPC, f"short write to the cursor ({written} of {len(data)})")
        _datasync(fd)
        self._generation, self._slot = generation, 1 - self._slot
        self._committed = (self.cursor, self.meta)
        if self._legacy:  # a slot now holds a newer commit than the old file
            (self.directory / LEGACY_CURSOR).unlink(missing_ok=True)
            self._legacy = False

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
        if not wanted or self.end + wanted <= self._disk_until:
            return False
        # Segments already dropped are deleted at the next commit: count them as free.
        freeable = sum(path.stat().st_size for path in self._obsolete if path.exists())
        free = shutil.disk_usage(self.directory).free + freeable - (self._reserve or 0)
        self._disk_until = self.end + min(free, DISK_CHECK_BYTES)
        return free < wanted

    def _read_cursor(self) -> tuple[int, bytes]:
        """The newest valid slot's cursor and meta; else the old `cursor` file's; else none."""
        found = _read_slots(self.directory)
        # Slots with bytes that fail their check: torn by a power cut, or rotten.
        bad = [
            name for name, (data, slot) in zip(SLOTS, found, strict=True) if data and slot is None
        ]
        self._legacy = (self.directory / LEGACY_CURSOR).exists()
        newest = _newest(found)
        if newest is not None:
            self._generation, index, cursor, meta = newest
            self._slot = 1 - index  # the next commit overwrites the other one
            if bad:  # at worst a commit was cut: its acknowledgements are sent again
                _log.warning("buffer_cursor_torn", slot=bad[0], detail="the other slot holds")
            return cursor, meta
        if not self._legacy:
            if bad:  # a bad cursor must not skip records: start again from the oldest
                _log.warning("buffer_cursor_corrupt", detail="resending from the oldest record")
            return 0, b""
        data = (self.directory / LEGACY_CURSOR).read_bytes()
        # A bad cursor must not skip records: start again from the oldest (duplicates, no loss).
        if len(data) < 12 or struct.unpack_from("<I", data)[0] != zlib.crc32(data[4:]):
            _log.warning("buffer_cursor_corrupt", detail="resending from the oldest record")
            return 0, b""
        position: int = struct.unpack_from("<Q", data, 4)[0]
        return position, data[12:]

    def _recover(self, path: Path, base: int) -> Segment:
        """Check every frame of a segment; pad over corrupt bytes and cut a torn tail. Zeros
        to the end of the file are the part of a preallocated segment never written to."""
        data = path.read_bytes()
        written = len(data.rstrip(b"\0"))  # only zeros after it (a record may end in zeros)
        offset = records = last = 0  # last: the end of the last record
        holes: list[tuple[int, int]] = []
        while offset < written:
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
        written = max(written, offset)  # the end of the frames, or of what is cut off
        if offset > last:  # nothing but padding at the end: nothing could ever read past it
            holes = [(a, b) for a, b in holes if b <= last]
            offset = last
        if not holes and offset == written:
            if written < len(data):  # a crash left the segment preallocated: give that back
                os.truncate(path, written)
            return Segment(path, base, written, records)
        self.stats.corrupt_bytes += sum(b - a for a, b in holes) + written - offset
        _log.warning(
            "buffer_corrupt",
            segment=path.name,
            corrupt_bytes=sum(b - a for a, b in holes),
            cut_bytes=written - offset,
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


SlotState = tuple[int, int, bytes]  # generation, cursor, meta


def _parse_slot(data: bytes) -> SlotState | None:
    """(generation, cursor, meta) of a cursor slot, or None if it is empty or fails its CRC."""
    start = CRC.size + SLOT.size
    if len(data) < start:
        return None
    generation, cursor, length = SLOT.unpack_from(data, CRC.size)
    end = start + length
    if end > len(data) or zlib.crc32(data[CRC.size : end]) != CRC.unpack_from(data)[0]:
        return None
    return generation, cursor, data[start:end]


def _read_slots(directory: Path) -> list[tuple[bytes, SlotState | None]]:
    """Each slot's bytes (empty if missing) and what they hold, if valid."""
    found = []
    for name in SLOTS:
        path = directory / name
        data = path.read_bytes() if path.exists() else b""
        found.append((data, _parse_slot(data)))
    return found


def _newest(found: list[tuple[bytes, SlotState | None]]) -> tuple[int, int, int, bytes] | None:
    """(generation, slot index, cursor, meta) of the valid slot of the highest generation."""
    valid = [(slot[0], i, slot[1], slot[2]) for i, (_, slot) in enumerate(found) if slot]
    return max(valid, default=None)


def last_commit(directory: Path) -> tuple[int, bytes] | None:
    """The cursor and meta the last commit left in `directory` (its newest valid slot), or None
    if no slot holds one. It only reads: for tools and tests looking at a buffer in use."""
    newest = _newest(_read_slots(directory))
    return None if newest is None else (newest[2], newest[3])


def _preallocate(fd: int, used: int, size: int) -> mmap.mmap | None:
    """Take the disk blocks for a segment of `size` bytes, and map it (shared). None where the
    filesystem cannot: the segment is then written with pwrite. _DiskFull on a full disk."""
    if not hasattr(os, "posix_fallocate"):  # macOS
        return None
    try:
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except OSError as e:
        os.ftruncate(fd, used)  # a failed preallocation can keep part of what it took
        if e.errno in _NO_SPACE:
            raise _DiskFull(e.errno, e.strerror) from e
        if e.errno not in _CANNOT_MAP:
            raise
        return None


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
