"""Drivers: the base classes to subclass (`Driver`; `I2CDevice`, `SerialDevice`, `GPIODevice`
for hardware) and the built-in drivers.

Importing this package registers the built-in drivers; a third-party package
registers its own through the `edge_agent.drivers` entry point group.
"""

from drivers import (
    ads1115,
    bh1750,
    bme280,
    counter,
    digital_input,
    hcsr04,
    mcp3008,
    motion,
    nmea,
    pms5003,
    pulse_counter,
    random_walk,
    replay,
    serial_line,
    sht31,
    sine,
)
from drivers.base import Channel, Driver, Garbled, Sample
from drivers.gpio import GPIODevice
from drivers.i2c import I2CDevice, SimulatedBus
from drivers.serial_port import Pty, SerialDevice
from drivers.simulated import InjectedFault, Signal, Simulated

__all__ = [
    "Channel",
    "Driver",
    "GPIODevice",
    "Garbled",
    "I2CDevice",
    "InjectedFault",
    "Pty",
    "Sample",
    "SerialDevice",
    "Signal",
    "Simulated",
    "SimulatedBus",
    "ads1115",
    "bh1750",
    "bme280",
    "counter",
    "digital_input",
    "hcsr04",
    "mcp3008",
    "motion",
    "nmea",
    "pms5003",
    "pulse_counter",
    "random_walk",
    "replay",
    "serial_line",
    "sht31",
    "sine",
]
