from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.stages  # noqa: F401  # registers the built-in stages
import drivers  # noqa: F401  # registers the built-in drivers
from tests.broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    mosquitto = Mosquitto(tmp_path / "broker").start()
    yield mosquitto
    mosquitto.stop()
