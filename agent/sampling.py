"""The loop around one driver: polling on time, cutting off hung reads, isolating failures.

Each sensor runs as its own asyncio task. A polled driver is read on a fixed
grid (`interval` seconds, aligned to the epoch) and its readings carry the
grid time, so a 1 s window of a 10 Hz sensor holds exactly 10 readings. A read
that takes longer than `timeout` is abandoned; consecutive failures open the
sensor's circuit breaker, and probes follow with a growing cool-down while
every other sensor keeps flowing.
"""

from __future__ import annotations

import asyncio
import math
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent import log
from agent.clock import Clock
from agent.config import Sensor
from agent.records import Reading
from agent.resilience import BreakerState, CircuitBreaker
from drivers.base import Driver, Garbled, Sample

_log = log.get("agent.sensor")


class SensorStats:
    __slots__ = (
        "crashes",
        "empty",
        "errors",
        "garbled",
        "invalid",
        "overruns",
        "readings",
        "skipped",
        "timeouts",
    )

    def __init__(self) -> None:
        self.readings = 0  # readings handed to the pipeline
        self.empty = 0  # reads that returned nothing
        self.invalid = 0  # values that were not finite numbers, or named no known channel
        self.garbled = 0  # input the device sent that the driver could not use
        self.errors = 0  # reads that raised
        self.timeouts = 0  # reads cut off after `timeout`
        self.skipped = 0  # polls skipped while the breaker was open (polled drivers)
        self.overruns = 0  # polls missed because the previous one ran late
        self.crashes = 0  # failures of the sampling loop itself (restarted)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class BlockingCaller:
    """Runs a driver's blocking reads on its own daemon thread.

    One thread per driver, so a device that hangs holds up only itself, and a
    daemon thread, so a read that never returns cannot keep the agent from exiting.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._work, name=f"driver-{name}", daemon=True)
        self._thread.start()
        self._current: asyncio.Future[Any] | None = None

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        if self._current is not None and not self._current.done():
            raise TimeoutError("the previous read has not returned yet")
        self._current = asyncio.get_running_loop().create_future()
        # A read abandoned by its timeout may fail later with nobody awaiting it:
        # fetching its exception here keeps asyncio from reporting it as lost.
        self._current.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._jobs.put((fn, self._current))
        return self._current

    async def settle(self, timeout: float) -> None:
        """Wait (up to `timeout`) for the read in progress, so the device is not closed under it."""
        if self._current is not None and not self._current.done():
            await asyncio.wait({self._current}, timeout=timeout)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as e:  # handed to the awaiting task, not lost in the thread
                outcome = (None, e)
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:
                return  # the loop is closed: the agent stopped while this read hung

    def stop(self) -> None:
        self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SensorRunner:
    def __init__(
        self,
        sensor: Sensor,
        driver: Driver,
        put: Callable[[Reading], None],
        *,
        clock: Clock,
        breaker: CircuitBreaker,
    ) -> None:
        self.sensor = sensor
        self.driver = driver
        self.put = put
        self.clock = clock
        self.breaker = breaker
        self.stats = SensorStats()
        self.last_error = ""
        self._failures = log.Burst()
        self._invalid = log.Burst()
        self._garbled = log.Burst()
        self._caller: BlockingCaller | None = None
        self._opened = False
        # One interned name per channel: every reading of the channel shares it.
        self.channels: dict[str, tuple[str, str]] = {
            ch.name: (
                sys.intern(
                    sensor.name if len(driver.channels) == 1 else f"{sensor.name}.{ch.name}"
                ),
                sys.intern(ch.unit),
            )
            for ch in driver.channels
        }
        self._single = next(iter(self.channels.values())) if len(self.channels) == 1 else None

    @property
    def opened(self) -> bool:
        """Is the device open? (For a push device that says nothing yet, that is all we know.)"""
        return self._opened

    async def run(self) -> None:
        """Sample until cancelled. Should the sampling loop itself fail, it is logged and restarted:
        a sensor never goes quiet without a word."""
        try:
            while True:
                try:
                    await (self._push() if type(self.driver).mode == "push" else self._poll())
                    return  # a stream that ended
                except Exception as e:
                    self.stats.crashes += 1
                    _log.error("sensor_crashed", sensor=self.sensor.name, error=_text(e))
                    await asyncio.sleep(self.sensor.interval)
        finally:
            if self._caller is not None:
                await self._caller.settle(self.sensor.timeout)
                self._caller.stop()
            await self._close()

    async def _close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        try:
            async with asyncio.timeout(self.sensor.timeout):
                await self.driver.close()
        except Exception as e:
            _log.warning("driver_close_failed", sensor=self.sensor.name, error=_text(e))

    async def _open(self) -> bool:
        try:
            async with asyncio.timeout(self.sensor.timeout):
                await self.driver.open()
        except Exception as e:
            self._failed(e)
            return False
        self._opened = True
        return True

    async def _poll(self) -> None:
        interval, clock = self.sensor.interval, self.clock
        tick = math.ceil(clock.time() / interval)
        while True:
            now = clock.time()
            due = tick * interval
            late = now - due
            if abs(late) > interval:  # fell behind (never burst to catch up), or the clock stepped
                if late > 0:
                    self.stats.overruns += math.floor(late / interval)
                tick = math.ceil(now / interval)
                continue
            # Sleep even when due already: sleep(0) lets the rest of the agent run.
            await asyncio.sleep(max(0.0, -late))
            tick += 1
            if not self.breaker.allow():
                self.stats.skipped += 1
                continue
            if not self._opened and not await self._open():
                continue
            try:
                # asyncio.timeout, not wait_for: wait_for on 3.11 can swallow the
                # cancellation that stops the agent when it races with a read finishing.
                async with asyncio.timeout(self.sensor.timeout):
                    sample = await self._read()
            except asyncio.CancelledError as e:
                if _stopping():
                    raise
                self._failed(e)  # the driver's own code cancelled its read
            except Exception as e:
                self._failed(e)
            else:
                self._succeeded()
                self._emit(round(due, 6), sample)

    async def _read(self) -> Sample:
        if type(self.driver).mode == "poll":
            return await self.driver.read()
        if self._caller is None:
            self._caller = BlockingCaller(self.sensor.name)
        # shield: a timeout abandons the wait, not the thread's read, so the caller
        # knows the device is still busy and does not stack another read on it.
        result: Sample = await asyncio.shield(self._caller.call(self.driver.read_blocking))
        return result

    async def _push(self) -> None:
        while True:
            while not self.breaker.allow():
                await asyncio.sleep(max(self.breaker.reopen_at - self.clock.monotonic(), 0.01))
            if not self._opened and not await self._open():
                await asyncio.sleep(self.sensor.interval)
                continue
            try:
                async for sample in self.driver.stream():
                    self._succeeded()
                    self._emit(self.clock.time(), sample)
                _log.info("stream_ended", sensor=self.sensor.name)
                return
            except asyncio.CancelledError as e:
                if _stopping():
                    raise
                self._failed(e)  # the driver's own code cancelled its stream
            except Exception as e:
                self._failed(e)
            # Reopen from scratch: a device that vanished (a USB serial adapter
            # unplugged) comes back as a new device; the breaker spaces the attempts.
            await self._close()
            await asyncio.sleep(self.sensor.interval)

    def _emit(self, ts: float, sample: Sample) -> None:
        try:
            self._emit_sample(ts, sample)
        except Exception as e:  # a sample of a shape nobody expected
            self._bad(f"{type(e).__name__}: {e}")

    def _emit_sample(self, ts: float, sample: Sample) -> None:
        if sample is None:
            self.stats.empty += 1
            return
        if isinstance(sample, Garbled):
            self.stats.garbled += 1
            if self._garbled.fail():
                _log.warning("garbled_input", sensor=self.sensor.name, reason=sample.reason)
            return
        if self._garbled.failures:
            _log.info("input_clean_again", sensor=self.sensor.name, garbled=self._garbled.end())
        if isinstance(sample, Mapping):
            for channel, value in sample.items():
                names = self.channels.get(channel)
                if names is None:
                    self._bad(f"unknown channel {channel!r}")
                else:
                    self._put(names, ts, value)
        elif self._single is not None:
            self._put(self._single, ts, sample)
        else:
            self._bad("a driver with several channels must return a mapping")

    def _put(self, names: tuple[str, str], ts: float, value: object) -> None:
        number = _finite(value)
        if number is None:
            self._bad(f"not a finite number: {value!r}")
            return
        if self._invalid.failures:
            _log.info("values_valid_again", sensor=self.sensor.name, invalid=self._invalid.end())
        self.stats.readings += 1
        self.put(Reading(names[0], ts, number, names[1]))

    def _bad(self, why: str) -> None:
        self.stats.invalid += 1
        if self._invalid.fail():
            _log.warning("invalid_value", sensor=self.sensor.name, reason=why)

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, TimeoutError):
            self.stats.timeouts += 1
            error_text = f"no answer within {self.sensor.timeout:g} s"
        else:
            self.stats.errors += 1
            error_text = _text(error)
        self.last_error = error_text
        self.breaker.failure()
        if self._failures.fail():
            _log.warning("read_failed", sensor=self.sensor.name, error=error_text)
        if self.breaker.state is BreakerState.OPEN and self.breaker.trips == 1:
            _log.warning(
                "breaker_open",
                sensor=self.sensor.name,
                failures=self._failures.failures,
                retry_in=round(self.breaker.reopen_at - self.clock.monotonic(), 3),
            )

    def _succeeded(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED or self._failures.failures:
            _log.info("sensor_recovered", sensor=self.sensor.name, failures=self._failures.end())
        self.breaker.success()


def _finite(value: object) -> float | None:
    """`value` as a float if it is a finite number (numpy's included), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _stopping() -> bool:
    """Is the current task being cancelled from outside (the agent stopping)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
