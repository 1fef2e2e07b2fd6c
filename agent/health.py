"""How the agent is doing, in one snapshot: published retained on `{prefix}/{device}/health`
every `mqtt.health_interval` seconds, shown by `edge-agent status`.

Counters are totals since the agent started (a config reload starts them again). The publish
rate, the CPU share, the event-loop lag and a sensor's `degraded` state cover the interval
since the previous snapshot: they say how things are now, not on average since boot.

The fields are documented in docs/wire-format.md (Health).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Literal, TypedDict

from agent import __version__
from agent.resilience import BreakerState

if TYPE_CHECKING:
    from agent.daemon import Agent, Route
    from agent.sampling import SensorRunner

VERSION = 1  # of the health message's layout, as `v` is for records

SensorState = Literal["starting", "ok", "degraded", "breaker_open"]


class SensorHealth(TypedDict):
    state: SensorState
    last_error: str | None
    readings: int
    empty: int
    errors: int
    timeouts: int
    garbled: int
    invalid: int


class StageHealth(TypedDict):
    stage: str
    received: int
    passed: int
    dropped: int


class ChannelHealth(TypedDict):
    received: int
    stages: list[StageHealth]
    late: int | None  # None: the channel has no window


class QueueHealth(TypedDict):
    depth: int
    dropped: int


class BufferHealth(TypedDict):
    records: int
    bytes: int
    oldest_age: float | None  # None: nothing pending


class UplinkHealth(TypedDict):
    connected: bool
    reconnects: int
    published: int
    acknowledged: int
    rate: float


class Drops(TypedDict):
    queue: int
    buffer_overflow: int
    stages: int
    late: int


class Errors(TypedDict):
    stages: int
    sinks: int


class ProcessHealth(TypedDict):
    rss_bytes: int
    cpu_percent: float


class LagHealth(TypedDict):
    max_ms: float
    mean_ms: float


class Health(TypedDict):
    v: int
    device: str
    version: str
    ts: float
    interval: float
    uptime: float
    sensors: dict[str, SensorHealth]
    channels: dict[str, ChannelHealth]
    queue: QueueHealth
    buffer: BufferHealth | None  # None: no [mqtt], so no buffer
    uplink: UplinkHealth | None
    drops: Drops
    errors: Errors
    process: ProcessHealth
    loop_lag: LagHealth


class LoopLag:
    """Sleeps `period` seconds again and again and measures how late it wakes. Anything that
    holds the event loop (a slow stage, a blocking call) delays every task, and shows here."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self._due: float | None = None  # when the sleep in progress should end
        self._max = self._sum = 0.0
        self._count = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._due = loop.time() + self.period
                await asyncio.sleep(self.period)
                self._add(loop.time() - self._due)
        finally:
            self._due = None  # stopped: no wake-up is due, however long it has been

    def take(self) -> LagHealth:
        """Max and mean lag since the last take; starts afresh."""
        if self._due is not None:
            # A wake-up that is due but has not run yet is lag too (a loop blocked all along).
            overdue = asyncio.get_running_loop().time() - self._due
            if overdue > 0:
                self._add(overdue)
                self._due += overdue  # counted now; run() adds only what comes on top
        mean = self._sum / self._count if self._count else 0.0
        lag = LagHealth(max_ms=round(self._max * 1000, 3), mean_ms=round(mean * 1000, 3))
        self._max = self._sum = 0.0
        self._count = 0
        return lag

    def _add(self, late: float) -> None:
        late = max(late, 0.0)  # asyncio may wake a hair early
        self._max = max(self._max, late)
        self._sum += late
        self._count += 1


class Vitals:
    """Takes snapshots of a running agent, remembering the last one for the rates."""

    def __init__(self, agent: Agent, lag: LoopLag | None = None) -> None:
        self.agent = agent
        self.lag = lag or LoopLag()
        self.started = self._since = time.monotonic()
        self._cpu = time.process_time()
        self._acknowledged = 0
        self._failures: dict[str, int] = {}  # per sensor, at the last snapshot

    def snapshot(self) -> Health:
        agent = self.agent
        now, cpu = time.monotonic(), time.process_time()
        elapsed = max(now - self._since, 1e-9)
        channels = {name: _channel(route) for name, route in agent.routes.items()}
        uplink = agent.uplink
        uplink_health = buffer_health = None
        if uplink is not None:
            acknowledged = uplink.acknowledged
            uplink_health = UplinkHealth(
                connected=uplink.connected,
                reconnects=max(uplink.reconnects - 1, 0),  # it counts the first connection too
                published=uplink.published,
                acknowledged=acknowledged,
                rate=round((acknowledged - self._acknowledged) / elapsed, 3),
            )
            self._acknowledged = acknowledged
            if uplink.buffer.segments:  # opened: its counters mean something
                oldest = uplink.oldest_pending()
                buffer_health = BufferHealth(
                    records=uplink.buffer.pending_records,
                    bytes=uplink.buffer.pending_bytes,
                    oldest_age=None if oldest is None else round(agent.clock.time() - oldest, 3),
                )
        health = Health(
            v=VERSION,
            device=agent.config.agent.device_id,
            version=__version__,
            ts=round(agent.clock.time(), 3),
            interval=agent.health_every,
            uptime=round(now - self.started, 3),
            sensors={r.sensor.name: self._sensor(r) for r in agent.runners},
            channels=channels,
            queue=QueueHealth(depth=len(agent.queue), dropped=agent.queue.dropped),
            buffer=buffer_health,
            uplink=uplink_health,
            drops=Drops(
                queue=agent.queue.dropped,
                buffer_overflow=uplink.buffer.stats.dropped if uplink is not None else 0,
                stages=sum(s["dropped"] for c in channels.values() for s in c["stages"]),
                late=sum(c["late"] or 0 for c in channels.values()),
            ),
            errors=Errors(stages=agent.stage_errors, sinks=agent.sink_errors),
            process=ProcessHealth(
                rss_bytes=rss_bytes(),
                cpu_percent=round((cpu - self._cpu) / elapsed * 100, 2),
            ),
            loop_lag=self.lag.take(),
        )
        self._since, self._cpu = now, cpu
        return health

    def _sensor(self, runner: SensorRunner) -> SensorHealth:
        stats = runner.stats
        failures = stats.errors + stats.timeouts + stats.garbled + stats.invalid
        recent = failures - self._failures.get(runner.sensor.name, 0)
        self._failures[runner.sensor.name] = failures
        heard = stats.readings + stats.empty + stats.garbled + stats.invalid
        state: SensorState
        if runner.breaker.state is not BreakerState.CLOSED:  # half-open: probing, still out
            state = "breaker_open"
        elif recent or runner.breaker.failures:
            state = "degraded"
        elif not heard and not (type(runner.driver).mode == "push" and runner.opened):
            state = "starting"  # an open push device may stay quiet for hours and be fine
        else:
            state = "ok"
        return SensorHealth(
            state=state,
            last_error=runner.last_error or None,
            readings=stats.readings,
            empty=stats.empty,
            errors=stats.errors,
            timeouts=stats.timeouts,
            garbled=stats.garbled,
            invalid=stats.invalid,
        )


def _channel(route: Route) -> ChannelHealth:
    return ChannelHealth(
        received=route.pipeline.received,
        stages=[
            StageHealth(
                stage=s["stage"], received=s["received"], passed=s["passed"], dropped=s["dropped"]
            )
            for s in route.pipeline.stats()
        ],
        late=route.window.late if route.window is not None else None,
    )


def rss_bytes() -> int:
    """Resident memory now: /proc/self/statm on Linux; elsewhere the peak, which is all
    getrusage tells (in KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
