"""The running agent: drivers feed a bounded queue; one consumer runs pipelines, windows and sinks.

    driver task ─┐                       ┌─ pipeline ─ window ─┐
    driver task ─┼─> DropOldestQueue ──> ┼─ pipeline ─ window ─┼─> sinks
    driver task ─┘   (bounded)           └─ pipeline ──────────┘   (events)

Only the driver tasks wait on devices; the consumer never does, so a hung
sensor cannot hold up anyone else's readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from agent import __version__, features, homeassistant, log
from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import Config, Mqtt
from agent.health import Vitals
from agent.notify import Notifier
from agent.pipeline import Pipeline, Stage
from agent.queues import DropOldestQueue
from agent.records import Aggregate, Reading
from agent.remote import Discovery, RemoteTuning
from agent.resilience import CircuitBreaker
from agent.sampling import SensorRunner
from agent.sinks import Sink
from agent.tuning import Tuner
from agent.uplink import Uplink
from agent.window import TumblingWindow

_log = log.get("agent")

# How often the consumer looks for results a process pool owes, and how long a stop waits
# for them before closing the windows without them.
OWED_POLL = 0.02
OWED_WAIT = 5.0


class StartupError(Exception):
    """Something the agent needs at start cannot be had; the message says what and why."""


class Route:
    """Where one channel's readings go: its own pipeline, then its window (or straight out)."""

    __slots__ = ("failures", "pipeline", "window")

    def __init__(self, pipeline: Pipeline, window: TumblingWindow | None) -> None:
        self.pipeline = pipeline
        self.window = window
        self.failures = log.Burst()  # of its stages, logged once per burst


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sinks: Sequence[Sink] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.notifier = notifier or Notifier(None)
        # The watchdog pings at half systemd's limit; the consumer goes round at least twice
        # as often, so a healthy idle agent never misses one.
        self.ping_every = self.notifier.watchdog / 2 if self.notifier.watchdog else None
        self.cycles = 0  # rounds of the consumer loop: the pipeline's sign of life
        self.sinks = list(sinks) if sinks is not None else [s.build() for s in config.sinks]
        self.uplink: Uplink | None = None
        if config.mqtt is not None:
            self.uplink = Uplink(
                config.mqtt,
                config.buffer,
                device=config.agent.device_id,
                data_dir=config.agent.data_dir,
                sensors=[s.name for s in config.sensors],
            )
        self.queue: DropOldestQueue[Reading] = DropOldestQueue(config.agent.queue_size)
        self.routes: dict[str, Route] = {}
        self.runners: list[SensorRunner] = []
        self.sink_errors = 0
        self.stage_errors = 0
        self._sink_failures = [log.Burst() for _ in self.sinks]
        self._buffer_failures = log.Burst()
        self._health_failures = log.Burst()
        self._stopping = self._reloading = False
        # Without [mqtt] the snapshot still goes to the log, at the default interval.
        self.health_every = (config.mqtt or Mqtt()).health_interval
        self.vitals = Vitals(self)
        started = clock.time()
        breaker = config.agent.breaker
        for sensor in config.sensors:
            runner = SensorRunner(
                sensor,
                sensor.driver.build(clock=clock),
                self.queue.put,
                clock=clock,
                breaker=CircuitBreaker(
                    failures=breaker.failures,
                    cooldown=breaker.cooldown,
                    max_cooldown=breaker.max_cooldown,
                    clock=clock,
                ),
            )
            self.runners.append(runner)
            for channel, unit in runner.channels.values():
                window = None
                if sensor.window is not None:
                    window = TumblingWindow(
                        channel,
                        seconds=sensor.window.seconds,
                        stats=sensor.window.stats,
                        grace=sensor.window.grace,
                        unit=unit,
                        since=started,
                    )
                self.routes[channel] = Route(Pipeline([s.build() for s in sensor.pipeline]), window)
        # Routes with a stage that may owe results (a process pool's): polled while they do.
        self.owing = {
            channel: route
            for channel, route in self.routes.items()
            if any(type(m.stage).pending is not Stage.pending for m in route.pipeline.meters)
        }
        self.discovery: Discovery | None = None
        if self.uplink is not None and config.mqtt is not None:
            self._remote(config.mqtt, self.uplink)

    def _remote(self, mqtt: Mqtt, uplink: Uplink) -> None:
        """Remote tuning and Home Assistant discovery, when the config asks for them."""
        if mqtt.tuning:
            pipelines = [
                (runner.sensor.name, [m.stage for m in self.routes[channel].pipeline.meters])
                for runner in self.runners
                for channel, _ in runner.channels.values()
            ]
            RemoteTuning(Tuner(pipelines, clock=self.clock), uplink)
        if mqtt.homeassistant is not None:
            entities = []
            for runner in self.runners:
                window = runner.sensor.window
                for ch in runner.driver.channels:
                    channel, unit = runner.channels[ch.name]
                    binary = ch.device_class in homeassistant.BINARY and not unit
                    stat = homeassistant.pick_stat(window.stats, binary) if window else None
                    entities.append(homeassistant.Entity(channel, unit, ch.device_class, stat))
            self.discovery = Discovery(mqtt.homeassistant, entities, uplink)

    def stop(self, *, reloading: bool = False) -> None:
        """Ask `run()` to finish: safe to call from a signal handler. `reloading`: another
        agent takes over at once, with a new config (SIGHUP). A plain stop wins over a reload,
        whichever came first: a service told to stop must not start again."""
        if self._stopping and not self._reloading:
            return
        self._stopping = True
        self._reloading = reloading
        self.queue.wake()

    @property
    def reloading(self) -> bool:
        """Whether `run()` ended for a reload, not for good."""
        return self._reloading

    async def run(self, duration: float | None = None) -> None:
        """Run until `stop()` or for `duration` seconds; then close windows, flush the sinks."""
        with contextlib.ExitStack() as stack:
            for sink in self.sinks:
                try:
                    stack.enter_context(sink)
                except OSError as e:
                    raise StartupError(f'cannot open sink "{sink.name}": {e}') from None
            uplink_task = None
            if self.uplink is not None:
                try:
                    last_seqs = self.uplink.open()
                except OSError as e:
                    raise StartupError(f"cannot open the buffer: {e}") from None
                for channel, route in self.routes.items():
                    if route.window is not None:  # sequence numbers go on across restarts
                        route.window.seq = last_seqs.get(channel, 0)
                uplink_task = asyncio.create_task(self.uplink.run(), name="uplink")
            if self.owing:
                # Worker processes take a while to start: before the sensors, off the loop.
                stages = [m.stage for route in self.owing.values() for m in route.pipeline.meters]
                await asyncio.to_thread(features.start_workers, stages)
            tasks = [
                asyncio.create_task(r.run(), name=f"sensor-{r.sensor.name}") for r in self.runners
            ]
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, self.stop)
            if not self.sinks and self.uplink is None:
                _log.warning(
                    "no_sinks", detail="nothing is written anywhere; add a [[sinks]] table"
                )
            _log.info(
                "started",
                version=__version__,
                device=self.config.agent.device_id,
                sensors=[r.sensor.name for r in self.runners],
            )
            sensors = len(self.runners)
            self.notifier.send("READY=1", f"STATUS=reading {sensors} sensor{'s' * (sensors != 1)}")
            if self.ping_every is not None:
                tasks.append(asyncio.create_task(self._watchdog(self.ping_every), name="watchdog"))
            if self.health_every:
                tasks.append(asyncio.create_task(self.vitals.lag.run(), name="loop-lag"))
                tasks.append(asyncio.create_task(self._health(self.health_every), name="health"))
            try:
                await self._consume()
            finally:
                if self._reloading:
                    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                    self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")
                else:
                    self.notifier.send("STOPPING=1")
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._process(self.queue.take_all())
                waited = 0.0
                while self._collect_owed() and waited < OWED_WAIT:
                    await asyncio.sleep(OWED_POLL)
                    waited += OWED_POLL
                for route in self.routes.values():
                    if route.window is not None and (aggregate := route.window.flush()):
                        self._emit(aggregate)
                if self.uplink is not None and uplink_task is not None:
                    self.uplink.stop()
                    await self.uplink.close()
                    uplink_task.cancel()
                    await asyncio.gather(uplink_task, return_exceptions=True)
                self._log_counters()

    async def _consume(self) -> None:
        owed = False
        while not self._stopping:
            self.cycles += 1
            deadline = min(
                (r.window.deadline for r in self.routes.values() if r.window is not None),
                default=math.inf,
            )
            wait = deadline - self.clock.time()
            if self.ping_every is not None:
                wait = min(wait, self.ping_every / 2)
            if owed:
                wait = min(wait, OWED_POLL)
            if wait > 0 and not len(self.queue):
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with completion, and the agent never stops.
                    async with asyncio.timeout(None if math.isinf(wait) else wait):
                        await self.queue.wait()
            self._process(self.queue.take_all())
            owed = self._collect_owed()
            now = self.clock.time()
            for route in self.routes.values():
                if route.window is not None and (aggregate := route.window.advance(now)):
                    self._emit(aggregate)

    async def _watchdog(self, every: float) -> None:
        """Ping systemd while the consumer goes round. A stalled pipeline, or a blocked event
        loop, stops the pings, and systemd restarts the agent after WatchdogSec."""
        seen = self.cycles - 1
        stalled = False
        while True:
            if self.cycles != seen:
                seen = self.cycles
                self.notifier.send("WATCHDOG=1")
                if stalled:
                    stalled = False
                    _log.info("pipeline_moving_again")
            elif not stalled:
                stalled = True
                _log.warning("pipeline_stalled", detail="no watchdog ping until it moves")
            await asyncio.sleep(every)

    async def _health(self, every: float) -> None:
        """Every `every` seconds: the snapshot, retained on the health topic while connected.
        Without MQTT the log is the only place for it; with MQTT it is logged at debug."""
        while True:
            await asyncio.sleep(every)
            try:
                snapshot = self.vitals.snapshot()
                # The log line has a ts of its own: the snapshot's would replace it.
                fields = {k: v for k, v in snapshot.items() if k != "ts"}
                if self.uplink is None:
                    _log.info("health", **fields)
                else:
                    _log.debug("health", **fields)
                    self.uplink.publish_health(json.dumps(snapshot).encode())
            except Exception as e:  # a bug here must not take the agent down, nor go unsaid
                if self._health_failures.fail():
                    _log.error("health_failed", error=f"{type(e).__name__}: {e}")
            else:
                if self._health_failures.failures:
                    _log.info("health_recovered", failures=self._health_failures.end())

    def _process(self, batch: list[Reading]) -> None:
        by_channel: dict[str, list[Reading]] = {}
        for reading in batch:
            by_channel.setdefault(reading.sensor, []).append(reading)
        for channel, readings in by_channel.items():
            self._run(channel, self.routes[channel], readings)

    def _run(self, channel: str, route: Route, readings: list[Reading]) -> None:
        try:
            passed = route.pipeline.run(readings)
        except Exception as e:  # a faulty stage costs its channel this batch, nothing more
            self.stage_errors += 1
            if route.failures.fail():
                _log.error("stage_failed", channel=channel, error=f"{type(e).__name__}: {e}")
            return
        if route.failures.failures:
            _log.info("stage_recovered", channel=channel, failures=route.failures.end())
        window = route.window
        for record in passed if window is None else window.extend(passed):
            self._emit(record)

    def _collect_owed(self) -> bool:
        """Run the routes whose stages owe results, for those that are ready; whether any
        are still owed."""
        owed = False
        for channel, route in self.owing.items():
            if route.pipeline.pending():
                self._run(channel, route, [])
                owed = owed or bool(route.pipeline.pending())
        return owed

    def _emit(self, record: Reading | Aggregate) -> None:
        if self.discovery is not None:
            self.discovery.state(record)
        if self.uplink is not None:
            try:
                self.uplink.write(record)
            except OSError as e:  # the buffer's disk failed: count it like a sink's
                self.sink_errors += 1
                if self._buffer_failures.fail():
                    _log.error("buffer_write_failed", error=str(e))
            else:
                if self._buffer_failures.failures:
                    _log.info("buffer_write_recovered", failures=self._buffer_failures.end())
        for sink, failures in zip(self.sinks, self._sink_failures, strict=True):
            try:
                sink.write(record)
            except Exception as e:  # a full disk must not stop the other sinks or the sensors
                self.sink_errors += 1
                if failures.fail():
                    _log.error("sink_failed", sink=sink.name, error=f"{type(e).__name__}: {e}")
            else:
                if failures.failures:
                    _log.info("sink_recovered", sink=sink.name, failures=failures.end())

    def _log_counters(self) -> None:
        for runner in self.runners:
            _log.info(
                "sensor_counters",
                sensor=runner.sensor.name,
                breaker=runner.breaker.state.value,
                **runner.stats.as_dict(),
            )
        for channel, route in self.routes.items():
            for stats in route.pipeline.stats():
                _log.info(
                    "stage_counters",
                    channel=channel,
                    stage=stats["stage"],
                    received=stats["received"],
                    passed=stats["passed"],
                    dropped=stats["dropped"],
                    ms=round(stats["seconds"] * 1000, 3),
                    counters=stats["counters"],
                )
            if route.window is not None:
                _log.info(
                    "window_counters",
                    channel=channel,
                    windows=route.window.seq,
                    late=route.window.late,
                )
        if self.uplink is not None:
            _log.info(
                "uplink_counters",
                published=self.uplink.published,
                acknowledged=self.uplink.acknowledged,
                connections=self.uplink.reconnects,
                buffer_dropped=self.uplink.buffer.stats.dropped,
                buffer_pending_bytes=self.uplink.buffer.pending_bytes,
            )
        _log.info(
            "stopped",
            queue_dropped=self.queue.dropped,
            stage_errors=self.stage_errors,
            sink_errors=self.sink_errors,
        )

    def counters(self) -> dict[str, Any]:
        """Everything counted so far, by sensor and by stage: what `run` logs on exit."""
        return {
            "queue_dropped": self.queue.dropped,
            "stage_errors": self.stage_errors,
            "sink_errors": self.sink_errors,
            "sensors": {
                r.sensor.name: {**r.stats.as_dict(), "breaker": r.breaker.state.value}
                for r in self.runners
            },
            "channels": {
                name: {
                    "stages": route.pipeline.stats(),
                    "received": route.pipeline.received,
                    **(
                        {"windows": route.window.seq, "late": route.window.late}
                        if route.window is not None
                        else {}
                    ),
                }
                for name, route in self.routes.items()
            },
        }
