"""The file and console sinks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from agent.records import Aggregate, Reading
from agent.sinks import Console, JsonLines


def aggregate(seq: int, partial: bool = False) -> Aggregate:
    return Aggregate("air", 60.0 * seq, 60.0 * (seq + 1), 10, {"mean": 21.5}, "°C", seq, partial)


def test_jsonl_writes_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    with JsonLines(path=path) as sink:
        sink.write(aggregate(1))
        sink.write(Reading("door", 5.0, 1.0, ""))
    first, second = map(json.loads, path.read_text().splitlines())
    assert first == {
        "type": "aggregate",
        "sensor": "air",
        "start": 60.0,
        "end": 120.0,
        "count": 10,
        "stats": {"mean": 21.5},
        "unit": "°C",
        "seq": 1,
        "partial": False,
    }
    assert second == {"type": "reading", "sensor": "door", "ts": 5.0, "value": 1.0, "unit": ""}


def test_jsonl_is_readable_while_the_agent_runs(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonLines(path=path) as sink:
        sink.write(aggregate(1))
        # Not closed yet: a closed window must already be on disk (a crash loses none).
        assert json.loads(path.read_text())["seq"] == 1


def test_jsonl_rotates_by_size_and_keeps_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonLines(path=path, max_bytes=1024, backups=2) as sink:
        for seq in range(1, 101):
            sink.write(aggregate(seq))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    sizes = [(tmp_path / name).stat().st_size for name in files]
    assert all(size <= 1024 for size in sizes)
    # Nothing is lost inside what is kept: the newest records, in order, without a gap.
    kept = [
        json.loads(line)["seq"]
        for name in ("out.jsonl.2", "out.jsonl.1", "out.jsonl")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert kept == list(range(kept[0], 101))


def test_jsonl_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("x" * 1000 + "\n")
    with JsonLines(path=path, max_bytes=1024, backups=1) as sink:
        sink.write(aggregate(1))
    assert (tmp_path / "out.jsonl.1").read_text().startswith("xxx")
    assert json.loads(path.read_text())["seq"] == 1


def test_jsonl_can_leave_out_event_readings(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonLines(path=path, readings=False) as sink:
        sink.write(Reading("door", 5.0, 1.0, ""))
        sink.write(aggregate(1))
    assert [json.loads(line)["type"] for line in path.read_text().splitlines()] == ["aggregate"]


def test_console_prints_a_line_per_window_and_event() -> None:
    out = io.StringIO()
    with Console(stream=out) as sink:
        sink.write(aggregate(2, partial=True))
        sink.write(Reading("door", 5.0, 1.0, ""))
    window, event = out.getvalue().splitlines()
    assert "air" in window
    assert "#2" in window
    assert "mean=21.5" in window
    assert window.endswith("°C (partial)")
    assert event.endswith("door         event 1")
