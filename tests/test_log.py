"""Structured logs: JSON lines for machines, short lines for people."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent import log


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_event_and_its_fields() -> None:
    out = io.StringIO()
    log.setup("info", out)  # a StringIO is not a terminal: JSON
    log.get("agent.test").warning("read_failed", sensor="air", error="timeout")
    entry = json.loads(out.getvalue())
    assert entry["event"] == "read_failed"
    assert entry["level"] == "warning"
    assert (entry["sensor"], entry["error"]) == ("air", "timeout")


@pytest.mark.usefixtures("restore_logging")
def test_readable_lines_for_a_terminal() -> None:
    out = io.StringIO()
    log.setup("info", out, json_lines=False)
    log.get("agent.test").info("started", device="demo", detail="two words")
    line = out.getvalue().strip()
    assert line.endswith('INFO    started device=demo detail="two words"')


@pytest.mark.usefixtures("restore_logging")
def test_the_level_filters_events() -> None:
    out = io.StringIO()
    log.setup("warning", out)
    log.get("agent.test").info("quiet")
    log.get("agent.test").error("loud")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["loud"]


def test_a_burst_is_logged_at_its_start_and_counted_to_its_end() -> None:
    burst = log.Burst()
    assert [burst.fail() for _ in range(4)] == [True, False, False, False]
    assert burst.end() == 4
    assert burst.end() == 0
    assert burst.fail()
