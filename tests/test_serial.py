"""The serial drivers through real pseudo-terminals: the test writes bytes as the device, the
driver opens `pty.path` through pyserial-asyncio exactly as it opens /dev/ttyUSB0.

First each driver on its own (line framing, parsing, damaged input), then the agent around
them: an adapter unplugged and plugged back, a silent and a flooding port beside a polled
sensor, and the three simulated twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import os
import struct
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import Config, parse
from agent.daemon import Agent
from agent.sampling import SensorRunner
from drivers.base import Channel, Garbled, Sample
from drivers.nmea import NMEA
from drivers.pms5003 import PMS5003
from drivers.serial_line import SerialLine
from drivers.serial_port import Pty, SerialDevice
from tests.test_sampling import Collect

WAIT = 2.0  # seconds: the longest a test waits for anything it expects


@contextlib.asynccontextmanager
async def streaming(driver: SerialDevice) -> AsyncIterator[AsyncIterator[Sample]]:
    """The driver's port opened and its stream started, both closed afterwards."""
    await driver.open()
    samples = driver.stream()
    try:
        yield samples
    finally:
        if isinstance(samples, AsyncGenerator):
            await samples.aclose()
        await driver.close()


async def take(samples: AsyncIterator[Sample], n: int = 1) -> list[Sample]:
    """The next `n` samples, failing the test if they do not come within WAIT seconds."""
    got: list[Sample] = []
    for _ in range(n):
        try:
            got.append(await asyncio.wait_for(anext(samples), WAIT))
        except TimeoutError:
            pytest.fail(f"sample {len(got) + 1} of {n} did not come; got {got}")
    return got


async def take_until_values(samples: AsyncIterator[Sample], limit: int = 5) -> list[Sample]:
    """Samples up to and including the first one with values (a resync may cost several
    Garbled ones, and how many is the driver's business)."""
    got: list[Sample] = []
    while not got or not isinstance(got[-1], dict):
        if len(got) == limit:
            pytest.fail(f"no values in the first {limit} samples: {got}")
        got += await take(samples)
    return got


async def write_apart(pty: Pty, chunks: Sequence[bytes]) -> None:
    """Each chunk its own write, a pause between them, so the driver reads them one by one."""
    for chunk in chunks:
        pty.write(chunk)
        await asyncio.sleep(0.02)


def garbled(sample: Sample, why: str) -> bool:
    return isinstance(sample, Garbled) and why in sample.reason


# --- serial_line: parsing --------------------------------------------------------------------


async def test_csv_reads_named_columns_and_skips_an_unnamed_one() -> None:
    with Pty() as pty:
        driver = SerialLine(
            port=pty.path, fields=("temperature", "", "humidity"), units={"temperature": "°C"}
        )
        assert driver.channels == (Channel("temperature", "°C"), Channel("humidity"))
        async with streaming(driver) as samples:
            pty.write(b"21.5,node-7,40\n-3.25,x,99.5\n")
            assert await take(samples, 2) == [
                {"temperature": 21.5, "humidity": 40.0},
                {"temperature": -3.25, "humidity": 99.5},
            ]


async def test_csv_a_wrong_column_count_or_a_word_is_garbled_and_the_next_line_reads() -> None:
    with Pty() as pty:
        driver = SerialLine(port=pty.path, fields=("a", "", "c"), delimiter=";")
        async with streaming(driver) as samples:
            pty.write(b"1;2\n1;2;3;4\n1;2;warm\n1;;3\n")
            short, long, word, good = await take(samples, 4)
    assert garbled(short, "2 columns, expected 3")
    assert garbled(long, "4 columns, expected 3")
    assert garbled(word, "could not convert string to float: 'warm'")
    assert good == {"a": 1.0, "c": 3.0}  # the skipped column may be empty


async def test_key_value_pairs_read_only_the_listed_keys_with_either_separator() -> None:
    with Pty() as pty:
        async with streaming(SerialLine(port=pty.path, format="kv", fields=("t", "rh"))) as samples:
            pty.write(b"id=abc t=21.5, rh: 40 fw=1.2\nrh=41;t=22\nid=abc fw=1.2\nt=warm\n")
            both, reordered, none_listed, word = await take(samples, 4)
    assert both == {"t": 21.5, "rh": 40.0}  # "id=abc" is not listed, so not a problem
    assert reordered == {"t": 22.0, "rh": 41.0}
    assert garbled(none_listed, "nothing to read in 'id=abc fw=1.2'")
    assert garbled(word, "could not convert string to float: 'warm'")


async def test_a_pattern_reads_its_named_groups() -> None:
    pattern = r"T=(?P<t>-?[\d.]+)C(?: RH=(?P<rh>[\d.]+)%)?"
    with Pty() as pty:
        driver = SerialLine(port=pty.path, format="regex", pattern=pattern)
        assert [c.name for c in driver.channels] == ["t", "rh"]
        async with streaming(driver) as samples:
            pty.write(b"#12 T=-3.5C RH=81% ok\nboot v1.2\nT=4C\n")
            both, no_match, only_t = await take(samples, 3)
    assert both == {"t": -3.5, "rh": 81.0}
    assert garbled(no_match, "nothing to read in 'boot v1.2'")
    # An optional group that did not match is None: it used to reach float() and raise
    # TypeError, which failed the stream and made the agent reopen the port.
    assert only_t == {"t": 4.0}


# --- serial_line: framing --------------------------------------------------------------------


async def test_a_line_split_across_two_writes_is_reassembled() -> None:
    with Pty() as pty:
        async with streaming(SerialLine(port=pty.path, fields=("a", "b"))) as samples:
            first = asyncio.ensure_future(anext(samples))
            pty.write(b"12.5,")
            await asyncio.sleep(0.05)
            assert not first.done(), "half a line became a sample"
            pty.write(b"7\n")
            assert await asyncio.wait_for(first, WAIT) == {"a": 12.5, "b": 7.0}


async def test_a_line_longer_than_max_line_is_one_garbled_and_the_next_line_reads() -> None:
    with Pty() as pty:
        async with streaming(SerialLine(port=pty.path, fields=("a", "b"), max_line=16)) as samples:
            pty.write(b"1,2\n" + b"9" * 40 + b",1\n3,4\n")
            assert await take(samples, 3) == [
                {"a": 1.0, "b": 2.0},
                Garbled("a line longer than 16 bytes"),
                {"a": 3.0, "b": 4.0},
            ]


async def test_a_line_that_never_ends_is_given_up_on_before_it_ends() -> None:
    """The driver reports the line while it is still arriving: it keeps at most `max_line`
    bytes, not the whole line. The end of that line is not a line of its own."""
    with Pty() as pty:
        async with streaming(SerialLine(port=pty.path, fields=("a", "b"), max_line=16)) as samples:
            for _ in range(25):  # 100 kB without a line ending
                pty.write(b"x" * 4000)
                await asyncio.sleep(0.002)
            assert await take(samples) == [Garbled("a line longer than 16 bytes")]
            # The tail of the dropped line looks like a line; it used to be read as one.
            await write_apart(pty, [b"x" * 20, b"7,8\n5,6\n"])
            assert await take(samples) == [{"a": 5.0, "b": 6.0}]


async def test_bytes_that_are_not_utf8_are_garbled() -> None:
    with Pty() as pty:
        async with streaming(SerialLine(port=pty.path, fields=("a", "b"))) as samples:
            pty.write(b"\xff\xfe,1\n1,2\n")
            bad, good = await take(samples, 2)
    assert garbled(bad, "'utf-8' codec can't decode byte 0xff")
    assert good == {"a": 1.0, "b": 2.0}


async def test_another_encoding_decodes_its_bytes() -> None:
    with Pty() as pty:
        driver = SerialLine(
            port=pty.path, format="regex", pattern=r"(?P<t>[\d.]+)°C", encoding="latin-1"
        )
        async with streaming(driver) as samples:
            pty.write(b"21.5\xb0C\n")
            assert await take(samples) == [{"t": 21.5}]


@pytest.mark.parametrize(
    ("ending", "chunks"),
    [
        pytest.param("crlf", [b"1,2\r\n3,", b"4\r", b"\n\r\n"], id="crlf-split-between-cr-and-lf"),
        pytest.param("cr", [b"1,2\r3,", b"4\r"], id="cr"),
        pytest.param("lf", [b"1,2\r\n3,4\r\n"], id="crlf-device-read-as-lf"),
    ],
)
async def test_line_endings(ending: Any, chunks: list[bytes]) -> None:
    with Pty() as pty:
        async with streaming(
            SerialLine(port=pty.path, fields=("a", "b"), line_ending=ending)
        ) as samples:
            await write_apart(pty, chunks)
            assert await take(samples, 2) == [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]


# --- serial_line: configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({}, "expected field names, one per channel; got none", id="no-fields"),
        pytest.param({"fields": ("", "")}, "expected field names", id="only-skipped-columns"),
        pytest.param(
            {"format": "regex", "pattern": r"T=([\d.]+)"},
            "expected named groups",
            id="no-named-group",
        ),
        pytest.param(
            {"fields": ("t",), "units": {"temp": "°C"}},
            r"expected channels among \['t'\], got \['temp'\]",
            id="unit-of-an-unknown-channel",
        ),
        pytest.param(
            {"fields": ("t", "", "rh"), "device_classes": {"": "humidity"}},
            r"expected channels among \['t', 'rh'\], got \[''\]",
            id="device-class-of-a-skipped-column",
        ),
        pytest.param(
            {"fields": ("t",), "encoding": "utf-9"},
            'codec such as "utf-8", got "utf-9"',
            id="encoding",
        ),
        pytest.param(
            {"format": "regex", "pattern": r"(?P<t>\d+)", "port": "simulated"},
            "the twin cannot guess lines for a pattern",
            id="regex-twin",
        ),
        pytest.param(
            {"format": "regex", "pattern": "(?P<t>"},
            'expected a regular expression, got "\\(\\?P<t>": missing \\)',
            id="bad-regex",
        ),
        pytest.param(
            {"fields": ("t",), "delimiter": ""}, "expected a character", id="no-delimiter"
        ),
    ],
)
def test_configuration_errors_are_value_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SerialLine(**{"port": "/dev/ttyUSB0", **params})


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        pytest.param(
            'fields = ["t"]\nencoding = "utf-9"',
            'sensors[0].encoding: expected a codec such as "utf-8", got "utf-9"',
            id="encoding",
        ),
        # re.error is no ValueError: it used to escape the check as a traceback (exit 1).
        pytest.param(
            'format = "regex"\npattern = "(?P<t>"',
            'sensors[0].pattern: expected a regular expression, got "(?P<t>": '
            "missing ), unterminated subpattern at position 0",
            id="bad-regex",
        ),
    ],
)
def test_check_reports_a_driver_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: str, problem: str
) -> None:
    path = tmp_path / "agent.toml"
    sensor = '[[sensors]]\nname = "meter"\ndriver = "serial_line"\nport = "/dev/ttyUSB0"\n'
    path.write_text(f'[agent]\ndevice_id = "d"\n{sensor}{keys}\n', encoding="utf-8")
    assert main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr() == ("", f"{path}: {problem}\n")


# --- nmea ------------------------------------------------------------------------------------

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n"
MUNICH = {"latitude": 48.1173, "longitude": 11.516667}
RMC_VALUES = {
    **MUNICH,
    "speed": 41.4848,  # 22.4 kn
    "course": 84.4,
    "time": datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC).timestamp(),
}


def sentence(body: str) -> bytes:
    """`body` framed as the receiver sends it, with its checksum."""
    return f"${body}*{reduce(operator.xor, body.encode(), 0):02X}\r\n".encode()


async def test_the_classic_gga_and_rmc_examples() -> None:
    with Pty() as pty:
        async with streaming(NMEA(port=pty.path)) as samples:
            pty.write(GGA + RMC)
            gga, rmc = await take(samples, 2)
    assert gga == pytest.approx(
        {**MUNICH, "altitude": 545.4, "fix_quality": 1, "satellites": 8}, abs=1e-6
    )
    assert rmc == pytest.approx(RMC_VALUES, abs=1e-6)


async def test_south_and_west_are_negative() -> None:
    with Pty() as pty:
        async with streaming(NMEA(port=pty.path)) as samples:
            pty.write(
                sentence("GPGGA,123519,3352.128,S,15112.558,W,2,11,0.9,45.0,M,,M,,")
                + sentence("GNRMC,235959.50,A,3352.128,S,15112.558,W,0.0,,311299,,,A")
            )
            gga, rmc = await take(samples, 2)
    where = {"latitude": -(33 + 52.128 / 60), "longitude": -(151 + 12.558 / 60)}
    assert gga == pytest.approx({**where, "altitude": 45.0, "fix_quality": 2, "satellites": 11})
    end_of_1999 = datetime(1999, 12, 31, 23, 59, 59, 500000, tzinfo=UTC).timestamp()
    assert rmc == pytest.approx({**where, "speed": 0.0, "course": 0.0, "time": end_of_1999})


@pytest.mark.parametrize(
    ("damaged", "why"),
    [
        pytest.param(GGA.replace(b"*47", b"*48"), "bad or missing checksum", id="bad-checksum"),
        pytest.param(GGA.replace(b"*47", b""), "bad or missing checksum", id="missing-checksum"),
        pytest.param(GGA[:30] + b"\r\n", "bad or missing checksum", id="cut-mid-way"),
        # The port opened (or bytes were lost) in the middle: the sentence type is gone too.
        # Such a line used to be skipped as "not GGA or RMC" without a word.
        pytest.param(GGA[24:], "a partial sentence", id="starts-mid-way"),
        pytest.param(
            b"$GPGGA," + b"1," * 70 + b"*00\r\n", "longer than NMEA allows", id="too-long"
        ),
    ],
)
async def test_a_damaged_sentence_is_garbled_and_the_next_one_reads(
    damaged: bytes, why: str
) -> None:
    with Pty() as pty:
        async with streaming(NMEA(port=pty.path)) as samples:
            pty.write(damaged + RMC)
            bad, good = await take(samples, 2)
    assert garbled(bad, why)
    assert good == pytest.approx(RMC_VALUES, abs=1e-6)


async def test_other_sentences_and_blank_lines_give_no_sample_at_all() -> None:
    with Pty() as pty:
        async with streaming(NMEA(port=pty.path)) as samples:
            pty.write(
                b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75\r\n"
                b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39\r\n"
                b"\r\n" + GGA
            )
            [first] = await take(samples)
    assert first == pytest.approx({**MUNICH, "altitude": 545.4, "fix_quality": 1, "satellites": 8})


async def test_no_fix_reports_only_what_it_knows() -> None:
    with Pty() as pty:
        async with streaming(NMEA(port=pty.path)) as samples:
            pty.write(
                b"$GPRMC,123519,V,,,,,,,230394,,,N*51\r\n"  # status V: void
                b"$GPGGA,123519,,,,,0,00,99.99,,,,,,*45\r\n"  # fix quality 0
            )
            assert await take(samples, 2) == [None, {"fix_quality": 0.0, "satellites": 0.0}]


# --- pms5003 ---------------------------------------------------------------------------------

# Datasheet layout: 0x42 0x4D, frame length 2×13+2 = 28, thirteen 16-bit big-endian data words
# (PM1.0/2.5/10 CF=1, PM1.0/2.5/10 atmospheric, particles beyond 0.3/0.5/1.0/2.5/5.0/10 µm in
# 0.1 L, reserved), then the sum of all the bytes before it.
FRAME = bytes.fromhex(
    "424d 001c 0001 0002 0003 0004 0005 0006 02bc 0320 005a 000a 0002 0001 0000 0208"
)
FRAME_VALUES = {
    "pm1_0": 1.0,
    "pm2_5": 2.0,
    "pm10": 3.0,
    "pm1_0_atm": 4.0,
    "pm2_5_atm": 5.0,
    "pm10_atm": 6.0,
    "n0_3": 700.0,
    "n0_5": 800.0,
    "n1_0": 90.0,
    "n2_5": 10.0,
    "n5_0": 2.0,
    "n10": 1.0,
}


def pms_frame(values: Sequence[int]) -> bytes:
    body = b"BM" + struct.pack(">H13H", 28, *values, 0)
    return body + struct.pack(">H", sum(body))


OTHER = pms_frame([10, 20, 30, 11, 21, 31, 2000, 1500, 400, 30, 5, 2])
OTHER_VALUES = {"pm1_0": 10.0, "pm2_5": 20.0, "pm10": 30.0, "n0_3": 2000.0, "n10": 2.0}


def has(sample: Sample, values: dict[str, float]) -> bool:
    return isinstance(sample, dict) and values.items() <= sample.items()


def test_the_layout_of_the_test_frame() -> None:
    assert pms_frame([1, 2, 3, 4, 5, 6, 700, 800, 90, 10, 2, 1]) == FRAME
    assert sum(FRAME[:-2]) == 0x0208


async def test_a_frame_parses_to_its_twelve_fields() -> None:
    with Pty() as pty:
        driver = PMS5003(port=pty.path)
        assert [c.name for c in driver.channels] == list(FRAME_VALUES)
        async with streaming(driver) as samples:
            pty.write(FRAME + OTHER)
            first, second = await take(samples, 2)
    assert first == FRAME_VALUES
    assert has(second, OTHER_VALUES)


async def test_garbage_before_a_frame_is_garbled_then_the_frame_reads() -> None:
    with Pty() as pty:
        async with streaming(PMS5003(port=pty.path)) as samples:
            pty.write(b"\x00\xffnoise\x4d" + FRAME)
            assert await take(samples, 2) == [Garbled("8 bytes out of frame"), FRAME_VALUES]


async def test_a_frame_with_a_wrong_checksum_is_garbled_and_the_next_frame_reads() -> None:
    broken = FRAME[:20] + bytes([FRAME[20] ^ 0x01]) + FRAME[21:]  # one bit flipped on the line
    with Pty() as pty:
        async with streaming(PMS5003(port=pty.path)) as samples:
            pty.write(broken + OTHER)
            got = await take_until_values(samples)
    assert garbled(got[0], "checksum 0x0208 does not match 0x0209")
    # One broken frame is one garbled sample: the bytes skipped after it are part of it.
    assert len(got) == 2
    assert has(got[-1], OTHER_VALUES)


async def test_a_cut_frame_is_resynchronised_inside_its_own_32_bytes() -> None:
    """A frame cut after 12 bytes, then a whole one: the first 32 bytes hold the next frame's
    start, and skipping all 32 would lose it."""
    with Pty() as pty:
        async with streaming(PMS5003(port=pty.path)) as samples:
            pty.write(FRAME[:12] + OTHER + FRAME)
            got = await take_until_values(samples)
            assert isinstance(got[0], Garbled)
            assert has(got[-1], OTHER_VALUES)
            assert await take(samples) == [FRAME_VALUES]


async def test_a_frame_arriving_byte_by_byte_reads_whole() -> None:
    with Pty() as pty:
        async with streaming(PMS5003(port=pty.path)) as samples:
            first = asyncio.ensure_future(anext(samples))
            for byte in FRAME:
                pty.write(bytes([byte]))
                await asyncio.sleep(0.002)
            assert await asyncio.wait_for(first, WAIT) == FRAME_VALUES


async def test_a_trailing_start_byte_is_kept_as_a_possible_frame_start() -> None:
    with Pty() as pty:
        async with streaming(PMS5003(port=pty.path)) as samples:
            pty.write(b"xyz" + FRAME[:1])
            assert await take(samples) == [Garbled("3 bytes out of frame")]
            pty.write(FRAME[1:])
            assert await take(samples) == [FRAME_VALUES]


# --- through the agent -----------------------------------------------------------------------


def config(sensors: list[dict[str, Any]]) -> Config:
    # A breaker that probes again within 0.2 s, so a replugged port is back quickly.
    breaker = {"failures": 2, "cooldown": 0.1, "max_cooldown": 0.2}
    document = {"agent": {"device_id": "t", "breaker": breaker}, "sensors": sensors}
    return parse(document, Path("serial.toml"))


def runner(agent: Agent, name: str) -> SensorRunner:
    return next(r for r in agent.runners if r.sensor.name == name)


def values(sink: Collect, sensor: str) -> list[float]:
    return [r.value for r in sink.readings(sensor)]


def consecutive(numbers: list[float]) -> bool:
    return numbers == [numbers[0] + i for i in range(len(numbers))] if numbers else False


async def until(
    condition: Callable[[], object],
    what: str,
    *,
    timeout: float = WAIT,
    tick: Callable[[], None] | None = None,
) -> None:
    """Poll `condition` every 20 ms, calling `tick` each time (a device talking), or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        if tick is not None:
            tick()
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.run())
    try:
        yield
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_an_unplugged_adapter_is_reopened_when_it_is_plugged_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A USB serial adapter's stable name: the tty behind it changes when it is replugged.
    link = tmp_path / "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
    cfg = config(
        [
            {
                "name": "meter",
                "driver": "serial_line",
                "port": str(link),
                "format": "kv",
                "fields": ["v"],
                "interval": 0.05,
            },
            {"name": "ticks", "driver": "counter", "interval": 0.05},
        ]
    )
    sink = Collect()
    agent = Agent(cfg, sinks=[sink])
    meter = runner(agent, "meter")
    first, later = itertools.count(1), itertools.count(1000)
    with Pty() as before, Pty() as after, caplog.at_level("INFO", logger="agent"):
        link.symlink_to(before.path)
        async with running(agent):
            # pyserial empties the input when it opens the port: talk until someone listens.
            await until(
                lambda: len(sink.readings("meter")) >= 3,
                "readings before the unplug",
                tick=lambda: before.write(b"v=%d\n" % next(first)),
            )
            before.close()
            link.unlink()
            ticks_at_unplug = len(sink.readings("ticks"))
            # The stream fails, then reopening fails: two failures open the breaker.
            await until(lambda: meter.breaker.opened >= 1, "the breaker opening")
            await asyncio.sleep(0.3)
            before_replug = values(sink, "meter")
            ticks_while_unplugged = len(sink.readings("ticks")) - ticks_at_unplug
            link.symlink_to(after.path)
            await until(
                lambda: values(sink, "meter")[-1] >= 1000,
                "readings after the replug",
                tick=lambda: after.write(b"v=%d\n" % next(later)),
            )
    got = values(sink, "meter")
    replugged = got[len(before_replug) :]
    assert len(before_replug) >= 3
    assert consecutive(before_replug)
    assert before_replug[-1] < 1000 <= replugged[0]
    assert consecutive(replugged)
    assert meter.stats.errors >= 2
    assert str(link) in meter.last_error  # the last failure: opening a port that was not there
    events = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    [failed] = [f for e, f in events if e == "read_failed"]  # once for the whole outage
    assert failed["error"].startswith("SerialException: device reports readiness to read")
    assert [f["failures"] for e, f in events if e == "sensor_recovered"] == [meter.stats.errors]
    assert ticks_while_unplugged >= 5
    assert consecutive(values(sink, "ticks"))


async def test_a_silent_port_and_a_flooding_one_cost_a_polled_sensor_nothing() -> None:
    window = {"seconds": 1, "stats": ["count", "first", "last"], "grace": 0.1}
    garbage = bytes(range(32, 127)) * 40  # printable, and never a line ending
    with Pty() as silent, Pty() as flood:
        cfg = config(
            [
                {"name": "silent", "driver": "serial_line", "port": silent.path, "fields": ["v"]},
                {"name": "flood", "driver": "serial_line", "port": flood.path, "fields": ["v"]},
                {"name": "ticks", "driver": "counter", "interval": 0.05, "window": window},
            ]
        )
        sink = Collect()
        agent = Agent(cfg, sinks=[sink])
        async with running(agent):
            await until(
                lambda: any(not a.partial for a in sink.aggregates("ticks")),
                "a complete window",
                timeout=3.0,
                tick=lambda: flood.write(garbage),
            )
            stopping = time.monotonic()
        stopped_in = time.monotonic() - stopping
    complete = [a for a in sink.aggregates("ticks") if not a.partial]
    assert complete
    assert [a.count for a in complete] == [20] * len(complete)
    assert all(a.stats["last"] - a.stats["first"] == 19 for a in complete)  # no tick lost
    flooded = runner(agent, "flood").stats
    assert flooded.garbled >= 1
    assert (flooded.readings, flooded.errors) == (0, 0)
    quiet = runner(agent, "silent").stats
    assert (quiet.readings, quiet.garbled, quiet.errors) == (0, 0, 0)
    assert stopped_in < 1.0


async def test_garbled_lines_are_counted_and_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Pty() as pty:
        cfg = config(
            [{"name": "meter", "driver": "serial_line", "port": pty.path, "fields": ["v"]}]
        )
        sink = Collect()
        agent = Agent(cfg, sinks=[sink])
        with caplog.at_level("INFO", logger="agent"):
            async with running(agent):
                await until(
                    lambda: sink.readings("meter"),
                    "a first reading",
                    tick=lambda: pty.write(b"1\n"),
                )
                pty.write(b"x\ny\nz\n2\n\xff\n3\n")
                await until(lambda: 3.0 in values(sink, "meter"), "the last reading")
    assert runner(agent, "meter").stats.garbled == 4
    events = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert [e for e, _ in events if e == "garbled_input"] == ["garbled_input"] * 2
    assert [f["garbled"] for e, f in events if e == "input_clean_again"] == [3, 1]


async def test_the_three_twins_run_in_one_agent() -> None:
    cfg = config(
        [
            {"name": "gps", "driver": "nmea", "port": "simulated"},
            {"name": "air", "driver": "pms5003", "port": "simulated"},
            {
                "name": "room",
                "driver": "serial_line",
                "port": "simulated",
                "format": "kv",
                "fields": ["temperature", "humidity"],
            },
        ]
    )
    sink = Collect()
    agent = Agent(cfg, sinks=[sink])
    wanted = [
        "gps.latitude",
        "gps.speed",
        "gps.time",
        "air.pm2_5",
        "air.n0_3",
        "room.temperature",
        "room.humidity",
    ]
    started = time.monotonic()
    async with running(agent):
        # Each twin writes once a second, the first time a second after its port opened.
        await until(lambda: all(sink.readings(n) for n in wanted), "a reading of each", timeout=2.5)
    assert time.monotonic() - started < 2.0
    assert values(sink, "gps.latitude")[0] == pytest.approx(52.2, abs=0.002)
    assert values(sink, "gps.speed")[0] == pytest.approx(2.6 * 1.852)
    assert values(sink, "gps.time")[0] == pytest.approx(time.time(), abs=3)
    assert {r.unit for r in sink.readings("air.pm2_5")} == {"µg/m³"}
    assert 6 <= values(sink, "air.pm2_5")[0] <= 18
    assert 15 <= values(sink, "room.temperature")[0] <= 25
    for r in agent.runners:
        assert (r.stats.garbled, r.stats.errors, r.stats.crashes) == (0, 0, 0), r.sensor.name
    # Closing a driver stops its twin.
    await until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("twin-")],
        "the twins stopping",
        timeout=1.0,
    )


async def test_a_twin_is_heard_from_its_first_byte_and_stops_with_its_port() -> None:
    """The twin starts once the port is open (pyserial discards what came before), and
    close() waits for it before closing the pseudo-terminal it writes to."""

    class Chatty(SerialLine, name="test_chatty_line"):
        def simulate(self, write: Callable[[bytes], None], stop: threading.Event) -> None:
            write(b"1\n")  # at once, before any pause
            stop.wait()

    driver = Chatty(port="simulated", fields=("v",))
    async with streaming(driver) as samples:
        assert await asyncio.wait_for(anext(samples), 0.5) == {"v": 1.0}
        twin = driver._twin
    assert twin is not None
    assert not twin.is_alive()


async def test_a_failed_open_leaves_no_pty_or_twin_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import serial_asyncio

    async def refuse(**settings: Any) -> None:
        raise OSError("could not configure the port")

    monkeypatch.setattr(serial_asyncio, "open_serial_connection", refuse)
    driver = PMS5003(port="simulated")
    fds = set(os.listdir("/proc/self/fd"))
    for _ in range(3):  # the agent retries a failed open
        with pytest.raises(OSError, match="could not configure"):
            await driver.open()
    assert set(os.listdir("/proc/self/fd")) == fds
    assert not any(t.name == "twin-pms5003" for t in threading.enumerate())
