"""Drivers and stages register by subclassing, and a broken contract fails at definition."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from agent.pipeline import Stage
from agent.records import Reading
from agent.registry import UnknownComponent
from drivers import Driver, Sample


def test_a_named_subclass_registers_itself() -> None:
    class Doubler(Stage, name="test_doubler"):
        """Double each value."""

        __slots__ = ()

        def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
            for r in readings:
                r.value *= 2
                yield r

    assert Stage.registry.get("test_doubler") is Doubler
    assert "test_doubler" in Stage.registry.names()


def test_stage_without_transform_fails_when_defined() -> None:
    with pytest.raises(
        TypeError, match=r"NoTransform: a stage needs a transform\(self, readings\)"
    ):

        class NoTransform(Stage, name="test_no_transform"):
            __slots__ = ()


def test_stage_whose_transform_is_not_a_generator_fails_when_defined() -> None:
    with pytest.raises(TypeError, match=r"ListStage: transform\(\) must be a generator function"):

        class ListStage(Stage, name="test_list_stage"):
            __slots__ = ()

            def transform(self, readings: Iterable[Reading]) -> list[Reading]:  # type: ignore[override]
                return list(readings)


def test_stage_without_slots_fails_when_defined() -> None:
    with pytest.raises(TypeError, match="Loose: a stage keeps fixed-size state; declare __slots__"):

        class Loose(Stage, name="test_loose"):
            def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
                yield from readings


def test_duplicate_name_fails_when_defined() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape('Again: stage name "calibrate" is already taken by agent.stages.Calibrate'),
    ):

        class Again(Stage, name="calibrate"):
            __slots__ = ()

            def transform(self, readings: Iterable[Reading]) -> Iterator[Reading]:
                yield from readings


def test_driver_without_a_read_method_fails_when_defined() -> None:
    with pytest.raises(TypeError, match="Mute: a driver needs exactly one of an async def read"):

        class Mute(Driver, name="test_mute"):
            pass


def test_driver_with_a_sync_read_fails_when_defined() -> None:
    with pytest.raises(TypeError, match="SyncRead: read must be an async def read"):

        class SyncRead(Driver, name="test_sync_read"):
            def read(self) -> Sample:  # type: ignore[override]
                return 1.0


def test_driver_with_two_modes_fails_when_defined() -> None:
    with pytest.raises(TypeError, match=r"Both: .*\(it has read and stream\)"):

        class Both(Driver, name="test_both"):
            async def read(self) -> Sample:
                return 1.0

            async def stream(self) -> AsyncIterator[Sample]:
                yield 1.0


def test_driver_modes_are_derived_from_the_method_defined() -> None:
    class Polled(Driver, name="test_polled"):
        async def read(self) -> Sample:
            return 1.0

    class Blocking(Driver, name="test_blocking"):
        def read_blocking(self) -> Sample:
            return 1.0

    class Pushed(Driver, name="test_pushed"):
        async def stream(self) -> AsyncIterator[Sample]:
            yield 1.0

    assert (Polled.mode, Blocking.mode, Pushed.mode) == ("poll", "blocking", "push")


def test_abstract_bases_without_a_name_are_not_checked_or_registered() -> None:
    class Base(Driver):
        pass

    assert Base not in list(Driver.registry)


def test_unreadable_annotations_fail_when_defined() -> None:
    with pytest.raises(TypeError, match="Odd: its parameters cannot be read"):

        class Odd(Driver, name="test_odd"):
            def __init__(self, *, x: NoSuchType = 1) -> None:  # type: ignore[name-defined]  # noqa: F821
                pass

            async def read(self) -> Sample:
                return 1.0


def test_lookup_by_module_and_class() -> None:
    from drivers.sine import Sine

    assert Driver.registry.get("drivers.sine:Sine") is Sine
    with pytest.raises(UnknownComponent) as caught:
        Driver.registry.get("agent.stages:Calibrate")
    assert str(caught.value) == '"agent.stages:Calibrate" is not a driver class'
    with pytest.raises(UnknownComponent) as caught:
        Driver.registry.get("nosuch.module:X")
    assert str(caught.value) == (
        "cannot load driver \"nosuch.module:X\": ModuleNotFoundError: No module named 'nosuch'"
    )


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        pytest.param(
            ":Sine", 'cannot load driver ":Sine": ValueError: Empty module name', id="no-module"
        ),
        pytest.param(
            "drivers.sine:Cosine",
            'cannot load driver "drivers.sine:Cosine": '
            "AttributeError: module 'drivers.sine' has no attribute 'Cosine'",
            id="no-class",
        ),
        pytest.param("math:pi", '"math:pi" is not a driver class', id="not-a-class"),
    ],
)
def test_a_bad_reference_names_the_exception_type(reference: str, message: str) -> None:
    with pytest.raises(UnknownComponent) as caught:
        Driver.registry.get(reference)
    assert str(caught.value) == message


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UnknownComponent) as caught:
        Driver.registry.get("sinus")
    assert str(caught.value) == 'unknown driver "sinus"; did you mean "sine"?'
    with pytest.raises(UnknownComponent) as caught:
        Stage.registry.get("zzz")
    assert str(caught.value) == 'unknown stage "zzz"'


def test_a_driver_from_an_installed_package_is_found_by_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real (if tiny) installed distribution: a package plus its dist-info on sys.path.
    package = tmp_path / "ep_demo_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from drivers import Driver\n\n"
        "class Thermo(Driver, name='ep_thermo'):\n"
        "    '''A thermometer from a third-party package.'''\n\n"
        "    def __init__(self, *, bias: float = 0.0) -> None:\n"
        "        self.bias = bias\n\n"
        "    async def read(self) -> float:\n"
        "        return 20.0 + self.bias\n"
    )
    info = tmp_path / "ep_demo_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edge_agent.drivers]\nep_thermo = ep_demo_pkg:Thermo\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert "ep_thermo" not in Driver.registry.names()  # not imported until asked for
    with pytest.raises(UnknownComponent, match='did you mean "ep_thermo"'):
        Driver.registry.get("ep_thermos")
    cls = Driver.registry.get("ep_thermo")
    assert cls.__module__ == "ep_demo_pkg"
    assert [p.name for p in cls.params()] == ["bias"]

    from agent.cli import main

    assert main(["describe"]) == 0
    assert "ep_thermo - A thermometer from a third-party package." in capsys.readouterr().out


def test_an_entry_point_whose_module_fails_to_import_is_a_lookup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the import error escaped, and `check` crashed with a traceback."""
    (tmp_path / "ep_broken_pkg.py").write_text("raise RuntimeError('needs hardware')\n")
    info = tmp_path / "ep_broken_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-broken-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edge_agent.drivers]\nep_broken = ep_broken_pkg:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownComponent) as caught:
        Driver.registry.get("ep_broken")
    assert str(caught.value) == (
        'cannot load driver "ep_broken" (ep_broken_pkg:X): RuntimeError: needs hardware'
    )


def test_a_simulated_signal_without_sample_fails_when_defined() -> None:
    from drivers import Signal

    with pytest.raises(TypeError, match=r"Flat: a simulated signal needs a sample\(self\) method"):

        class Flat(Signal, name="test_flat"):
            pass
