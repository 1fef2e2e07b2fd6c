import asyncio
import io
import os
import signal
import traceback
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType

import pytest

import agent.stages  # noqa: F401  # registers the built-in stages
import drivers  # noqa: F401  # registers the built-in drivers
from tests.broker import Mosquitto

# Seconds one test (setup, call and teardown) may take; the slowest takes about 25. 0: no limit.
TEST_TIMEOUT = float(os.environ.get("EDGE_AGENT_TEST_TIMEOUT", "90"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A test that runs over TEST_TIMEOUT ends the run, saying where it was stuck (and where
    each asyncio task waits), so a hang costs minutes, not the CI's time limit. It raises
    KeyboardInterrupt because asyncio swallows any other exception raised in a callback;
    pytest still tears the fixtures down, so no broker is left running."""

    def overrun(signum: int, frame: FrameType | None) -> None:
        where = io.StringIO()
        traceback.print_stack(frame, limit=4, file=where)
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no event loop running
            tasks = set()
        for task in tasks:
            task.print_stack(file=where)
        stuck = f"{item.nodeid} ran over {TEST_TIMEOUT:g} s, at:\n{where.getvalue()}"
        raise KeyboardInterrupt(stuck)

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
