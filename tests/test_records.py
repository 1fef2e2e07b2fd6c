import sys

from agent.records import Aggregate, Reading, as_dict


def test_reading_is_slotted_and_small() -> None:
    reading = Reading(sys.intern("air"), 1.0, 21.5, "°C")
    assert not hasattr(reading, "__dict__")
    # 4 slots on a GC-tracked object: 64 bytes on 64-bit CPython; the budget is 72.
    assert sys.getsizeof(reading) <= 72


def test_aggregate_is_slotted() -> None:
    aggregate = Aggregate("air", 0.0, 60.0, 3, {"mean": 1.0}, "°C", 1)
    assert not hasattr(aggregate, "__dict__")
    # 8 slots on a GC-tracked object: 96 bytes on 64-bit CPython (its stats dict aside).
    assert sys.getsizeof(aggregate) <= 96
    assert as_dict(aggregate)["seq"] == 1
