"""Features that cost CPU: the power of a frequency band over blocks of samples.

A vibration sensor sampled at hundreds of hertz says little reading by reading; the power in a
band of its spectrum over a block of samples says whether a bearing wears or a pump cavitates.
A block's spectrum takes milliseconds of pure Python (an FFT of a thousand samples or more):
computed in line it holds up the event loop, and every other sensor and the uplink with it.
With `executor = "process"` each block goes to a pool of worker processes (one per core),
and its result comes out of a later run of the stage: the consumer polls while any are owed.
"""

from __future__ import annotations

import cmath
import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from agent.pipeline import Stage
from agent.records import Reading
from agent.schema import Bounds, Invalid, NonNegative, Positive

if TYPE_CHECKING:  # imported when a pool starts: multiprocessing costs every start 15 ms
    from concurrent.futures import Future, ProcessPoolExecutor

Executor = Literal["inline", "process"]
BlockSize = Annotated[int, Bounds(ge=8, le=65_536), "samples a block, a power of two"]

_pool: ProcessPoolExecutor | None = None


def workers() -> ProcessPoolExecutor:
    """The agent's one pool of feature workers, started on first use."""
    global _pool
    if _pool is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forkserver, not fork: the agent has threads (paho's), and a forked copy of a
        # process with threads can hold a lock forever.
        context = multiprocessing.get_context("forkserver")
        _pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context)
    return _pool


def start_workers(stages: Iterable[Stage]) -> None:
    """Start the pool and its workers now if any of `stages` computes in it: the first
    start takes tens of milliseconds, too long to spend on the event loop."""
    if any(isinstance(s, BandPower) and s.executor == "process" for s in stages):
        pool = workers()
        for done in [pool.submit(int) for _ in range(os.cpu_count() or 1)]:
            done.result()


def _pool_broke() -> None:
    """A worker died (killed, out of memory): the next block starts a fresh pool."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
    _pool = None


class BandPower(Stage, name="band_power"):
    """Mean-square power between `low` and `high` Hz, one value per block of `size` samples.

    The value is in the square of the channel's unit; the sample rate is taken from the
    block's timestamps. A block that finds the pool owing `max_pending` results is dropped
    and counted: the pool is not keeping up."""

    __slots__ = (
        "blocks",
        "dropped",
        "executor",
        "first_ts",
        "high",
        "low",
        "max_pending",
        "owed",
        "size",
        "values",
    )

    def __init__(
        self,
        *,
        low: NonNegative,
        high: Positive,
        size: BlockSize = 1024,
        executor: Annotated[Executor, "process: compute off the event loop"] = "inline",
        max_pending: Annotated[int, Bounds(ge=1, le=64), "blocks the pool may owe"] = 4,
    ) -> None:
        if size & (size - 1):
            raise Invalid("size", f"expected a power of two, got {size}")
        if low >= high:
            raise Invalid("low", f"expected low < high, got low = {low:g}, high = {high:g}")
        self.low, self.high, self.size = low, high, size
        self.executor, self.max_pending = executor, max_pending
        self.values: list[float] = []  # the block being filled: at most `size` values
        self.first_ts = 0.0
        self.owed: deque[tuple[Future[float], Reading]] = deque()  # at most max_pending
        self.blocks = self.dropped = 0

    def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
        for reading in readings:
            if not self.values:
                self.first_ts = reading.ts
            self.values.append(reading.value)
            if len(self.values) == self.size:
                block, self.values = self.values, []
                if (result := self._compute(block, reading)) is not None:
                    yield result
        yield from self._collect()

    def _compute(self, block: list[float], last: Reading) -> Reading | None:
        span = last.ts - self.first_ts
        if span <= 0:  # no rate to speak of: timestamps that do not move
            self.dropped += 1
            return None
        rate = (len(block) - 1) / span
        self.blocks += 1
        if self.executor == "inline":
            last.value = band_power(block, rate, self.low, self.high)
            return last
        if len(self.owed) >= self.max_pending:
            self.dropped += 1
            return None
        from concurrent.futures.process import BrokenProcessPool

        try:
            future = workers().submit(band_power, block, rate, self.low, self.high)
        except BrokenProcessPool:
            _pool_broke()
            future = workers().submit(band_power, block, rate, self.low, self.high)
        self.owed.append((future, last))
        return None

    def _collect(self) -> Iterator[Reading]:
        """The results the pool has finished, in the order of their blocks."""
        if not self.owed:
            return
        from concurrent.futures.process import BrokenProcessPool

        while self.owed and self.owed[0][0].done():
            future, reading = self.owed.popleft()
            try:
                reading.value = future.result()
            except BrokenProcessPool:
                _pool_broke()
                raise
            yield reading

    def pending(self) -> int:
        return len(self.owed)

    def counters(self) -> dict[str, int]:
        return {"blocks": self.blocks, "dropped_blocks": self.dropped}


def band_power(values: list[float], rate: float, low: float, high: float) -> float:
    """Mean-square power of `values` (sampled at `rate` Hz) in [low, high) Hz.

    The one-sided power spectrum of all the bins adds up to the mean of the squares
    (Parseval), so a sine of amplitude A inside the band gives A² / 2."""
    n = len(values)
    spectrum = fft(values)
    total = 0.0
    for k in range(n // 2 + 1):
        if low <= k * rate / n < high:
            weight = 1.0 if k == 0 or 2 * k == n else 2.0  # each other bin has a mirror
            total += weight * abs(spectrum[k]) ** 2
    return total / (n * n)


def fft(values: list[float]) -> list[complex]:
    """The discrete Fourier transform of a power-of-two number of values (radix-2 FFT)."""
    n = len(values)
    out = [complex(v) for v in values]
    j = 0
    for i in range(1, n):  # bit-reversed order, so the butterflies work in place
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            out[i], out[j] = out[j], out[i]
    size = 2
    while size <= n:
        half = size // 2
        twiddles = [cmath.exp(-2j * cmath.pi * k / size) for k in range(half)]
        for start in range(0, n, size):
            for k in range(half):
                a, b = out[start + k], out[start + k + half] * twiddles[k]
                out[start + k], out[start + k + half] = a + b, a - b
        size *= 2
    return out
