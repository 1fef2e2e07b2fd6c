"""Bosch BME280 on I2C: temperature, humidity and pressure, compensated with the chip's own
calibration (datasheet section 4.2.3, floating-point formulas)."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Annotated, Literal

from drivers.base import Channel, Sample
from drivers.i2c import I2CDevice

OVERSAMPLING = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # times -> the register's 3-bit code


class BME280(I2CDevice, name="bme280"):
    """Bosch BME280 temperature, humidity and pressure sensor on I2C."""

    channels = (
        Channel("temperature", "°C", "temperature"),
        Channel("humidity", "%", "humidity"),
        Channel("pressure", "hPa", "pressure"),
    )

    def __init__(
        self,
        *,
        address: Literal[0x76, 0x77] = 0x76,
        mode: Annotated[Literal["forced", "normal"], "forced: measure on each read"] = "forced",
        oversampling: Literal[1, 2, 4, 8, 16] = 1,
        **bus: int | Path,
    ) -> None:
        super().__init__(**bus)
        self.address, self.measuring = address, mode
        code = OVERSAMPLING[oversampling]
        self.ctrl_meas = code << 5 | code << 2 | (0b01 if mode == "forced" else 0b11)
        self.ctrl_hum = code
        # Datasheet 9.1, the longest measurement: 1.25 ms + 2.3 ms an oversample of each of T,
        # P and H, + 0.575 ms for each of P and H.
        self.measure_time = (1.25 + 3 * 2.3 * oversampling + 2 * 0.575) / 1000
        self.calibration: tuple[float, ...] = ()

    def read_blocking(self) -> Sample:
        bus, address = self.bus, self.address
        if not self.calibration:
            chip = bus.read_i2c_block_data(address, 0xD0, 1)[0]
            if chip != 0x60:
                raise OSError(f"no BME280 at 0x{address:02x}: chip id 0x{chip:02x}")
            coefficients = calibration(
                bytes(bus.read_i2c_block_data(address, 0x88, 26)),
                bytes(bus.read_i2c_block_data(address, 0xE1, 7)),
            )
            bus.write_byte_data(address, 0xF2, self.ctrl_hum)  # applies at the next ctrl_meas
            if self.measuring == "normal":
                bus.write_byte_data(address, 0xF4, self.ctrl_meas)
                time.sleep(self.measure_time)  # till then the data registers hold reset values
            self.calibration = coefficients  # set up only once all of it went through
        if self.measuring == "forced":
            bus.write_byte_data(address, 0xF4, self.ctrl_meas)
            for _ in range(50):  # at most ~115 ms at 16x oversampling
                if not bus.read_i2c_block_data(address, 0xF3, 1)[0] & 0x08:
                    break
                time.sleep(0.005)
            else:  # the last results would pass for this read's
                raise OSError(f"BME280 at 0x{address:02x}: the measurement never finished")
        d = bus.read_i2c_block_data(address, 0xF7, 8)
        raw_p, raw_t = d[0] << 12 | d[1] << 4 | d[2] >> 4, d[3] << 12 | d[4] << 4 | d[5] >> 4
        temperature, pressure, humidity = compensate(
            self.calibration, raw_t, raw_p, d[6] << 8 | d[7]
        )
        return {"temperature": temperature, "humidity": humidity, "pressure": pressure / 100}


def calibration(block_88: bytes, block_e1: bytes) -> tuple[float, ...]:
    """dig_T1..T3, dig_P1..P9, dig_H1..H6 from registers 0x88-0xA1 and 0xE1-0xE7."""
    t_p = struct.unpack("<HhhHhhhhhhhh", block_88[:24])
    h1 = block_88[25]
    h2, h3, e4, e5, e6, h6 = struct.unpack("<hBBBBb", block_e1)
    h4 = _signed12(e4 << 4 | e5 & 0x0F)
    h5 = _signed12(e6 << 4 | e5 >> 4)
    return (*t_p, h1, h2, h3, h4, h5, h6)


def _signed12(value: int) -> int:
    return value - 4096 if value & 0x800 else value


def compensate(c: tuple[float, ...], raw_t: int, raw_p: int, raw_h: int) -> tuple[float, ...]:
    """(°C, Pa, %RH) from raw ADC values, by the datasheet's double-precision formulas."""
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = c
    var1 = (raw_t / 16384 - t1 / 1024) * t2
    var2 = (raw_t / 131072 - t1 / 8192) ** 2 * t3
    t_fine = var1 + var2
    var1 = t_fine / 2 - 64000
    var2 = var1 * var1 * p6 / 32768 + var1 * p5 * 2
    var2 = var2 / 4 + p4 * 65536
    var1 = (p3 * var1 * var1 / 524288 + p2 * var1) / 524288
    var1 = (1 + var1 / 32768) * p1
    pressure = 0.0
    if var1:
        p = (1048576 - raw_p - var2 / 4096) * 6250 / var1
        pressure = p + (p9 * p * p / 2147483648 + p * p8 / 32768 + p7) / 16
    h = t_fine - 76800
    h = (raw_h - (h4 * 64 + h5 / 16384 * h)) * (
        h2 / 65536 * (1 + h6 / 67108864 * h * (1 + h3 / 67108864 * h))
    )
    humidity = min(100.0, max(0.0, h * (1 - h1 * h / 524288)))
    return t_fine / 5120, pressure, humidity
